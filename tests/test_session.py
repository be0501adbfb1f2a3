"""Engine behaviour that needs no real-time audio: queueing across sessions, isolation, history, export,
multi-turn context, camera frames, errors. Real Silero VAD; a scripted model (engine logic only)."""

import json
import os
import stat
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from webui_fixtures import Options, ScriptedModel, silence, speech, timeline

from webui.engine import Engine, EngineConfig
from webui.uploads import load_audio, load_image


@pytest.fixture
def engine(tmp_path):
    model = ScriptedModel("Paris is the capital of France.", speed=20.0, first_delay=0.2)
    e = Engine(model, EngineConfig(), transcriber=None, recordings_dir=str(tmp_path), options_cls=Options)
    yield e
    e.close()


def feed(session, audio, sr=16000):
    pcm = (audio * 32767).astype(np.int16)
    for i in range(0, len(pcm), 320):  # 20 ms frames, as fast as possible: the VAD runs on the audio clock
        session.feed_audio(sr, pcm[i : i + 320])


def test_requests_from_two_sessions_share_the_model_in_turns_and_are_isolated(engine):
    a, b = engine.new_session(), engine.new_session()
    ta = a.send_text("hello from a")
    tb = b.send_text("hello from b", speak=False)
    assert a.wait_idle(20) and b.wait_idle(20)
    assert engine.model.max_concurrent == 2  # both answers were started and advanced in turns
    assert engine.model.max_computing == 1  # the model never computed two requests at once
    assert [t.user_text for t in a.history] == ["hello from a"] and [t.user_text for t in b.history] == ["hello from b"]
    assert ta.task == "T1A2" and tb.task == "T1T2" and ta.status == tb.status == "done"
    assert ta.assistant_text == tb.assistant_text == "Paris is the capital of France."
    assert len(ta.audio()) > 0 and len(tb.audio()) == 0
    assert tb.timings.queue_wait_s >= ta.timings.queue_wait_s
    assert a.dir != b.dir and not set(p.name for p in b.dir.iterdir()) & {"turn_001_assistant.wav"}


def test_voice_turn_carries_the_webcam_frame_only_when_the_camera_is_on(engine):
    s = engine.new_session()
    q = speech("what do you see in front of me")
    frame = np.full((240, 320, 3), 120, np.uint8)
    s.set_camera_frame(frame)
    feed(s, timeline(silence(0.5), q, silence(1.0)))
    assert s.wait_idle(20)
    s.set_camera_frame(None)
    feed(s, timeline(q, silence(1.0)))
    assert s.wait_idle(20)
    calls = engine.model.calls
    assert [c.task for c in calls] == ["IMAGE_A1A2", "A1A2"]
    assert calls[0].image is not None and np.array_equal(calls[0].image, frame) and calls[1].image is None
    sr, audio = calls[0].audio
    assert sr == 16000 and abs(len(audio) / sr - len(q) / 16000) < 0.7  # the cut question, not the silence
    assert s.history[0].image_source == "webcam"


def test_stale_camera_frame_is_not_used(engine):
    s = engine.new_session()
    s.update_config(camera_max_age_s=0.1)
    s.set_camera_frame(np.zeros((64, 64, 3), np.uint8))
    time.sleep(0.2)
    feed(s, timeline(speech("hello there how are you"), silence(1.0)))
    assert s.wait_idle(20)
    assert engine.model.calls[0].task == "A1A2"


def test_export_zip_has_transcript_and_every_file(engine, tmp_path):
    s = engine.new_session()
    s.set_camera_frame(np.full((48, 64, 3), 200, np.uint8))
    feed(s, timeline(silence(0.3), speech("what is the capital of france"), silence(1.0)))
    assert s.wait_idle(20)
    with pytest.raises(ValueError, match="spoken"):  # no typed-question-with-picture task: said, not ignored
        s.send_text("and of spain?", image=np.full((32, 32, 3), 10, np.uint8))
    assert len(s.history) == 1
    s.send_text("and of spain?")
    assert s.wait_idle(20)
    path = s.export_zip()
    assert path.parent == s.dir  # written inside the session folder
    with zipfile.ZipFile(path) as z:
        names = set(z.namelist())
        data = json.loads(z.read("transcript.json"))
        md = z.read("transcript.md").decode()
    assert names == {"transcript.json", "transcript.md", "turn_001_user.wav", "turn_001_image.jpg",
                     "turn_001_assistant.wav", "turn_002_assistant.wav"}
    assert [t["task"] for t in data["turns"]] == ["IMAGE_A1A2", "T1A2"]
    assert data["turns"][1]["user_text"] == "and of spain?" and "Paris" in md
    assert data["turns"][0]["files"]["user_audio"] == "turn_001_user.wav"
    assert "first_audio_s" in data["turns"][0]["timings"]


def test_multi_turn_context_is_opt_in(engine):
    s = engine.new_session()
    s.send_text("first question")
    s.wait_idle(20)
    s.send_text("second question")
    s.wait_idle(20)
    assert engine.model.calls[1].text == "second question"  # single-turn by default
    s.update_config(multi_turn=True)
    s.send_text("third question")
    s.wait_idle(20)
    ctx = engine.model.calls[2].text
    assert "User: second question\nAssistant: Paris is the capital of France." in ctx
    assert ctx.endswith("User: third question")


def test_model_failure_is_a_message_and_the_session_goes_on(engine):
    s = engine.new_session()
    engine.model.fail_with = RuntimeError("CUDA out of memory")
    t = s.send_text("hello")
    assert s.wait_idle(20)
    assert t.status == "error" and "CUDA out of memory" in t.error and "can go on" in t.error
    engine.model.fail_with = None
    t2 = s.send_text("hello again")
    assert s.wait_idle(20) and t2.status == "done"


def test_stop_button_cancels_a_queued_or_running_answer(engine):
    engine.model.speed = 0.5  # slow: still generating when we press stop
    s = engine.new_session()
    s.attach_transport()
    t = s.send_text("tell me a long story")
    time.sleep(0.5)
    assert s.interrupt("stop button")
    assert t.status == "interrupted" and not s.assistant_active
    time.sleep(0.5)
    assert engine.model.calls[0].cancel.is_set() and engine.model.cancelled == 1
    assert t.played_s == 0 and "assistant_audio" not in t.files  # nothing was heard: no empty recording


def test_stopping_an_answer_without_a_live_player_keeps_what_was_generated(engine):
    """The Streamlit page (no live audio output): the text was read as it came, so a stop keeps it and the
    speech generated so far (for replay), instead of cutting both to the nothing that was "played"."""
    engine.model.speed = 0.5
    s = engine.new_session()
    t = s.send_text("tell me a long story")
    end = time.monotonic() + 10
    while not (t.assistant_text and t.assistant_audio) and time.monotonic() < end:
        time.sleep(0.02)
    shown = t.assistant_text
    assert shown and s.current is t and s.interrupt()
    assert t.status == "interrupted" and not t.live and s.current is None
    assert t.assistant_text.startswith(shown) and not t.assistant_text.endswith("…")
    assert "assistant_audio" in t.files and t.played_s == 0


def test_bad_inputs_give_clear_messages(engine, tmp_path):
    s = engine.new_session()
    with pytest.raises(ValueError, match="Type a message"):
        s.send_text("   ")
    with pytest.raises(ValueError, match="too long"):
        s.send_text("x" * 5000)
    bad = tmp_path / "notes.wav"
    bad.write_text("this is not audio")
    with pytest.raises(ValueError, match="not audio"):
        load_audio(str(bad))
    with pytest.raises(ValueError, match="silent"):
        load_audio((16000, np.zeros(16000, np.float32)))
    with pytest.raises(ValueError, match="limit"):
        load_audio((16000, np.ones(16000 * 61, np.float32) * 0.1))
    img = tmp_path / "photo.png"
    img.write_bytes(b"\x89PNG not really")
    with pytest.raises(ValueError, match="not an image"):
        load_image(str(img))
    with pytest.raises(ValueError, match="colour picture"):
        load_image(np.zeros((4, 4, 3), np.uint8))
    # a truncated picture, and pictures too large to decode (refused from the header: PIL's own limit is ~179 MP),
    # as a file and as an upload's bytes
    from io import BytesIO

    from PIL import Image

    whole = BytesIO()
    Image.new("RGB", (64, 64), (200, 10, 10)).save(whole, "PNG")
    (tmp_path / "cut.png").write_bytes(whole.getvalue()[:60])
    Image.new("1", (13000, 13000)).save(tmp_path / "big.png")
    Image.new("1", (14000, 14000)).save(tmp_path / "huge.png")
    for name, message in (("cut.png", "not an image"), ("big.png", "too large"), ("huge.png", "too large")):
        with pytest.raises(ValueError, match=message):
            load_image(str(tmp_path / name))
        with pytest.raises(ValueError, match=message):
            load_image(BytesIO((tmp_path / name).read_bytes()))
    assert load_image(BytesIO(whole.getvalue())).shape == (64, 64, 3)
    with pytest.raises(ValueError):
        s.send_upload()
    with pytest.raises(ValueError, match="spoken"):  # a picture alone: the model needs a spoken question with it
        s.send_upload(image=np.full((32, 32, 3), 10, np.uint8))
    assert not s.history  # nothing half-started


def test_bad_settings_are_refused(engine):
    s = engine.new_session()
    with pytest.raises(ValueError):
        s.update_config(policy="sometimes")
    with pytest.raises(ValueError):
        s.update_config(phrases=())
    assert s.config.policy == "command"


def test_closed_session_removes_its_temp_files_but_keeps_a_named_recordings_folder(engine):
    temp = Engine(engine.model, EngineConfig(), recordings_dir=None, options_cls=Options)
    try:
        s = temp.new_session()
        s.send_text("hi")
        s.wait_idle(20)
        assert any(s.dir.iterdir())
        temp.close_session(s.id)
        assert not s.dir.exists() and temp.get(s.id) is None
    finally:
        temp.close()
    # --recordings DIR: a tester's capture survives the tab closing, with its transcript beside the files
    s = engine.new_session()
    s.send_text("hi")
    s.wait_idle(20)
    engine.close_session(s.id)
    assert engine.get(s.id) is None and (s.dir / "turn_001_assistant.wav").exists()
    assert json.loads((s.dir / "transcript.json").read_text())["turns"][0]["user_text"] == "hi"
    assert "hi" in (s.dir / "transcript.md").read_text()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_default_recordings_folder_is_private_unpredictable_and_removed_on_close(engine):
    """Voices and webcam frames: no other local user may read them, or make the folder first (a fixed name in
    /tmp lets them); each engine gets a new folder, which goes when the engine closes."""
    a = Engine(engine.model, EngineConfig(), recordings_dir=None, options_cls=Options)
    b = Engine(engine.model, EngineConfig(), recordings_dir=None, options_cls=Options)
    try:
        assert a.recordings_dir != b.recordings_dir
        for e in (a, b):
            assert mode(e.recordings_dir) == 0o700 and e.recordings_dir.stat().st_uid == os.getuid()
        s = a.new_session()
        s.send_text("hi")
        assert s.wait_idle(20) and (s.dir / "turn_001_assistant.wav").exists()
        assert s.dir.parent == a.recordings_dir and mode(s.dir) == 0o700
    finally:
        a.close()
        b.close()
    assert not a.recordings_dir.exists() and not b.recordings_dir.exists()


def test_a_named_recordings_folder_keeps_each_session_private(engine, tmp_path):
    """--recordings DIR: a new DIR is made 0700; an existing one keeps its owner's mode (not loosened, not
    tightened behind their back); every session folder in it is 0700 either way."""
    new, existing = tmp_path / "new" / "rec", tmp_path / "shared"
    existing.mkdir()
    existing.chmod(0o755)
    for folder, want in ((new, 0o700), (existing, 0o755)):
        e = Engine(engine.model, EngineConfig(), recordings_dir=str(folder), options_cls=Options)
        try:
            s = e.new_session()
            s.send_text("hi")
            assert s.wait_idle(20)
            assert mode(folder) == want and s.dir.parent == folder and mode(s.dir) == 0o700
        finally:
            e.close()
        assert (s.dir / "transcript.json").exists()  # a named folder keeps the conversation


def test_stopping_the_app_ends_its_sessions_so_a_named_recordings_folder_gets_the_transcripts(tmp_path):
    """The app is stopped (Ctrl-C, end of the process) with a conversation open: its transcript is written."""
    import subprocess
    import sys

    code = (
        "import sys; sys.path[:0] = [{root!r}, {tests!r}]\n"
        "from webui_fixtures import Options, ScriptedModel\n"
        "from webui.engine import Engine, EngineConfig\n"
        "e = Engine(ScriptedModel('Paris.', speed=20.0, first_delay=0.0), EngineConfig(), recordings_dir={rec!r},"
        " options_cls=Options)\n"
        "s = e.new_session(); s.send_text('hello there'); assert s.wait_idle(20)\n"
        "print(s.id)\n"
    ).format(root=str(Path(__file__).resolve().parents[1]), tests=str(Path(__file__).resolve().parent),
             rec=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    folder = tmp_path / out.stdout.split()[-1]
    assert json.loads((folder / "transcript.json").read_text())["turns"][0]["user_text"] == "hello there"


def test_exporting_again_replaces_the_previous_zip(engine):
    s = engine.new_session()
    s.send_text("hi")
    s.wait_idle(20)
    first = s.export_zip()
    time.sleep(1.1)  # a name from a later second
    second = s.export_zip()
    assert first != second and not first.exists() and list(s.dir.glob("*.zip")) == [second]


def test_side_work_runs_in_order_one_at_a_time_each_on_a_thread_that_ends():
    """ASR work must not keep an OpenMP team alive next to the model worker's (see FreshThreadExecutor)."""
    from webui.worker import FreshThreadExecutor

    ex = FreshThreadExecutor("test")
    seen, running, overlap = [], [0], []
    lock = threading.Lock()

    def task(i):
        with lock:
            running[0] += 1
            overlap.append(running[0])
        time.sleep(0.02)
        with lock:
            running[0] -= 1
        seen.append((i, threading.current_thread()))
        return i * i

    futures = [ex.submit(task, i) for i in range(4)]
    assert [f.result(timeout=10) for f in futures] == [0, 1, 4, 9]
    assert [i for i, _ in seen] == [0, 1, 2, 3] and max(overlap) == 1  # in order, never two at once
    threads = [t for _, t in seen]
    for t in threads:  # the result is set just before its thread returns
        t.join(timeout=5)
    assert len({id(t) for t in threads}) == 4 and not any(t.is_alive() for t in threads)
    boom = ex.submit(lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        boom.result(timeout=10)
    gate = threading.Event()
    blocker = ex.submit(gate.wait, 10)
    queued = ex.submit(task, 9)
    time.sleep(0.05)
    ex.shutdown(wait=False, cancel_futures=True)
    gate.set()
    assert blocker.result(timeout=10) is True and queued.cancelled()
    with pytest.raises(RuntimeError):
        ex.submit(task, 1)


def test_an_answer_waiting_for_playback_lets_another_session_be_served(tmp_path):
    """Session a's answer is generated 10x faster than it plays, so it spends most of its playback waiting to
    stay at most max_ahead_s ahead. Session b's question, asked meanwhile, is answered in that time instead of
    after a's whole answer, and a's speech plays on without a gap."""
    from webui_fixtures import SR, run_realtime

    model = ScriptedModel(speed=10.0, first_delay=0.1)  # ~10 s of speech
    engine = Engine(model, EngineConfig(policy="off", max_ahead_s=2.0), transcriber=None,
                    recordings_dir=str(tmp_path), options_cls=Options)
    try:
        a, b = engine.new_session(), engine.new_session()
        ta = a.send_text("tell me about paris")
        a_status_when_b_done = []

        def ask_b():
            time.sleep(2.0)  # a is playing, well ahead
            tb = b.send_text("and the capital of spain?", speak=False)
            assert b.wait_idle(20)
            a_status_when_b_done.append((tb, ta.status))

        asker = threading.Thread(target=ask_b)
        asker.start()
        played = run_realtime(a, silence(7.0, SR), until=lambda: ta.status == "done")
        asker.join()
        tb, a_status = a_status_when_b_done[0]
        assert tb.status == "done" and tb.assistant_text == model.answer
        assert a_status == "speaking"  # b was answered while a was still being heard
        assert tb.timings.queue_wait_s < 0.5, tb.timings  # not queued behind a's playback
        loud = [p.t for p in played if p.rms > 0.02]
        assert loud and max(np.diff(loud)) < 0.35  # a played on (the scripted speech has short pauses only)
        assert ta.timings.throttled_s > 2.0  # a's answer did wait for its playback
    finally:
        engine.close()


def test_sessions_past_the_limit_are_refused_with_a_message(tmp_path):
    from webui.engine import EngineBusy

    engine = Engine(ScriptedModel("Yes."), EngineConfig(max_sessions=2), transcriber=None,
                    recordings_dir=str(tmp_path), options_cls=Options)
    try:
        a, _ = engine.new_session(), engine.new_session()
        with pytest.raises(EngineBusy, match="busy.*2 conversations.*Try again"):
            engine.new_session()
        engine.close_session(a.id)
        assert engine.new_session() is not None and engine.sessions == 2
    finally:
        engine.close()


def test_fifty_turns_with_pictures_keep_memory_bounded(tmp_path):
    """Each turn sends an 8-megapixel picture (24 MB decoded) and a spoken question: once a turn has ended its
    picture and audio live in its files, not in memory (50 turns held would be 1.2 GB)."""
    import gc

    import psutil

    from omni.device import release_freed_memory

    model = ScriptedModel("Yes.", speed=50.0, first_delay=0.0, keep_inputs=False)
    engine = Engine(model, EngineConfig(), transcriber=None, recordings_dir=str(tmp_path), options_cls=Options)
    proc = psutil.Process()

    def held_mb() -> float:  # resident memory once freed blocks are handed back: what is really held
        gc.collect()
        release_freed_memory()
        return proc.memory_info().rss / 2**20

    question = (16000, speech("what is this"))
    rng = np.random.default_rng(0)
    try:
        s = engine.new_session()
        rss = []
        for i in range(50):
            picture = rng.integers(0, 255, (2448, 3264, 3), dtype=np.uint8)
            t = s.send_upload(audio=question, image=picture)
            del picture
            assert s.wait_idle(20) and t.status == "done"
            if i in (4, 49):
                rss.append(held_mb())
        assert len(s.history) == 50
        assert rss[1] - rss[0] < 200, rss  # 45 turns held in memory would add ~1.1 GB
        last = s.history[-1]
        assert last.image is None and last.user_audio is not None  # read back from its file
        assert abs(last.user_audio_s - len(question[1]) / 16000) < 0.01
        assert len(last.audio()) == int(round(last.generated_s() * 24000)) > 0
    finally:
        engine.close()


def test_uploads_go_through_the_model_loaders_with_one_picture_limit(tmp_path):
    """The app reads pictures and audio files with omni's loaders: one size limit (omni.vision.MAX_IMAGE_PIXELS)
    for the CLI, the API and the page, and the same decoder for files."""
    from PIL import Image

    import omni
    from omni.errors import OmniInputError
    from omni.vision import MAX_IMAGE_PIXELS, ImageTooLarge, open_image

    side = int(MAX_IMAGE_PIXELS ** 0.5)
    Image.new("1", (side, side)).save(tmp_path / "at_limit.png")
    Image.new("1", (side + 1, side + 1)).save(tmp_path / "over.png")
    assert load_image(str(tmp_path / "at_limit.png")).shape == (side, side, 3)
    with pytest.raises(ValueError, match="too large"):
        load_image(str(tmp_path / "over.png"))
    with pytest.raises(ImageTooLarge):  # the model's own loader draws the same line
        open_image(str(tmp_path / "over.png"))
    assert open_image(str(tmp_path / "at_limit.png")).size == (side, side)
    (tmp_path / "notes.wav").write_text("not audio at all")
    with pytest.raises(OmniInputError):
        omni.audio.load_audio(str(tmp_path / "notes.wav"))
    with pytest.raises(ValueError, match="not audio I can read"):
        load_audio(str(tmp_path / "notes.wav"))
    with pytest.raises(ValueError, match="not found"):
        load_audio(str(tmp_path / "missing.wav"))
