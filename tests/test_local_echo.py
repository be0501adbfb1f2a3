"""The presenter mode on a laptop: the microphone hears the speaker. The echo canceller (WebRTC AEC3) on its own,
then the whole presenter front-end on real devices with an echo path (PulseAudio loops the speaker back into the
microphone at full level): under the default settings the assistant never interrupts itself, even when its answer
says "stop omni" after a pause; without the echo canceller the same echo does interrupt it (so the echo path is
real). How often the user's own "stop omni" over that echo is heard is a figure of scripts/local_latency.py."""

import io
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
from local_fixtures import PulseServer, VoiceModel

from webui.echo import FRAME, EchoCanceller, erle_db
from webui.engine import Engine, EngineConfig
from webui.interrupt import make_transcriber
from webui.local_app import Devices, PresenterApp
from webui.local_view import LineView
from webui.simulate import silence, speech, timeline

# an answer that says the stop phrase itself, after a pause long enough to end the turn detector's utterance
ANSWER = timeline(speech("Here is what I see on the table in front of me.", 24000), silence(1.0, 24000),
                  speech("stop omni", 24000), silence(1.0, 24000), speech("That is all for now.", 24000))
# its text leaves the phrase out: the engine's own guard (a stop phrase the assistant's text just said is echo)
# must not be what saves it here; the acoustic path alone has to
ANSWER_TEXT = "Here is what I see on the table in front of me. That is all for now."
QUESTION = "What do you see on the table?"


def cancel(far: np.ndarray, near: np.ndarray) -> np.ndarray:
    aec = EchoCanceller()
    out = []
    for i in range(0, len(far) - FRAME + 1, FRAME):
        aec.far((far[i:i + FRAME] * 32767).astype(np.int16))
        out.append(aec.near((np.clip(near[i:i + FRAME], -1, 1) * 32767).astype(np.int16)))
    return np.concatenate(out).astype(np.float32) / 32767


def test_the_echo_canceller_removes_the_speaker_and_keeps_the_user():
    far = np.tile(speech("The capital of France is Paris, a city famous for its museums and its food."), 4) * 0.8
    echo = np.concatenate([np.zeros(960, np.float32), far])[:len(far)] * 0.3  # 60 ms later, 10 dB down
    user = np.zeros_like(far)
    stop = speech("stop omni") * 0.5
    at = len(far) - 3 * 16000  # once the canceller has heard a few seconds of the speaker
    user[at:at + len(stop)] = stop
    out = cancel(far, echo + user)
    n = len(out)
    tail = slice(n // 2, at)  # echo only, after adaptation
    assert erle_db(echo[tail], out[tail]) > 20
    kept = out[at:at + len(stop)]
    assert 10 * np.log10(np.mean(kept ** 2) / np.mean((echo + user)[at:at + len(stop)] ** 2)) > -10


@pytest.fixture(scope="module")
def laptop():
    """One private server for the module (PortAudio reads its ALSA configuration once per process)."""
    server = PulseServer().start()
    mp = pytest.MonkeyPatch()
    for k in ("PULSE_SERVER", "ALSA_CONFIG_PATH"):
        mp.setenv(k, server.env()[k])
    yield server
    mp.undo()
    server.stop()


@pytest.fixture(scope="module")
def transcriber():
    return make_transcriber("auto")


def presenter(tmp_path, transcriber, aec: str):
    args = SimpleNamespace(mic=None, speaker=None, audio_rate=None, camera="none", preview=False, aec=aec,
                           events=None)
    model = VoiceModel((ANSWER * 0.8 * 32767).astype(np.int16), ANSWER_TEXT)
    engine = Engine(model, EngineConfig(), transcriber=transcriber, recordings_dir=str(tmp_path))
    engine.asr_pool.submit(lambda: None).result(timeout=30)
    app = PresenterApp(engine, engine.new_session(), Devices(args), args)
    thread = threading.Thread(target=app.run, kwargs={"view": LineView(io.StringIO())}, daemon=True)
    thread.start()
    return app, thread


def ask(laptop, app, n_before: int, timeout: float = 40.0):
    """Ask a question and wait for its answer to end; returns the turn."""
    proc, _ = laptop.say(timeline(silence(0.3), speech(QUESTION), silence(0.8)), 16000)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        turns = app.session.snapshot()["turns"]
        if len(turns) > n_before and turns[-1].status in ("done", "interrupted", "error"):
            return turns[-1]
        time.sleep(0.1)
    raise AssertionError("no answer")


def stop(app, thread):
    app.quit.set()
    thread.join(10)
    app.close()


def test_with_an_echo_path_the_assistant_never_interrupts_itself(laptop, transcriber, tmp_path):
    laptop.echo_path(True)
    app, thread = presenter(tmp_path, transcriber, "webrtc")
    try:
        turns = [ask(laptop, app, i) for i in range(3)]
        assert [t.status for t in turns] == ["done"] * 3, [(t.status, t.interrupted_by) for t in turns]
        assert not [e for e in app.session.events if e["ev"] == "interrupted"]
    finally:
        stop(app, thread)
        laptop.echo_path(False)


def test_without_the_echo_canceller_the_echo_interrupts_it(laptop, transcriber, tmp_path):
    laptop.echo_path(True)
    app, thread = presenter(tmp_path, transcriber, "off")
    try:
        turn = ask(laptop, app, 0)
        assert turn.status == "interrupted" and "command" in turn.interrupted_by, turn.status
    finally:
        stop(app, thread)
        laptop.echo_path(False)
