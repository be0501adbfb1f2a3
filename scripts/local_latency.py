"""Benchmark: the presenter mode (`--ui local`) on real audio devices, measured at the speaker.

A private PulseAudio server (virtual microphone fed by paplay, virtual speaker listened to on its monitor) and a
y4m FIFO at camera pace, as the tests use (webui/virtual_devices.py). Prints:
  1. end of speech -> first audio at the speaker, and barge-in onset ("stop omni") -> silence at the speaker,
     both from the speaker's monitor and as the app measured them, over `--questions` spoken questions with the
     camera on (`python app.py --ui local` as a child process, the real model on `--checkpoint`);
  2. echo-path false interrupts out of `--answers` answers under the default settings: the speaker looped back
     into the microphone, answers that are speech and say "stop omni" after a pause (the presenter front-end in
     this process on a model that speaks a recording), the echo canceller's reduction of that echo, and how many
     of `--user-stops` "stop omni"s said by the user over that echo stopped the answer.
Example:
    .venv/bin/python scripts/local_latency.py                       # tiny checkpoint whose answers run long
    .venv/bin/python scripts/local_latency.py --checkpoint checkpoints --quantize int8
"""

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from webui.simulate import silence, speech, timeline  # noqa: E402
from webui.vad import TurnDetector, TurnEnded  # noqa: E402
from webui.virtual_devices import CameraFifo, PulseServer, SpeakerMonitor, VoiceModel  # noqa: E402

QUESTIONS = ["what do you see in this picture", "what colour is the thing in front of me",
             "can you describe what is on the screen", "how many shapes can you see"]


def speech_span(audio: np.ndarray) -> tuple[float, float]:
    det = TurnDetector()
    ended = [e for e in det.push(16000, audio) + det.flush() if isinstance(e, TurnEnded)]
    return ended[0].t_start, ended[-1].t_end


def say(server, words: str, lead: float = 0.3) -> tuple[float, float]:
    audio = timeline(silence(lead), speech(words), silence(0.8))
    start, end = speech_span(audio)
    _, t = server.say(audio, 16000)
    return t + start, t + end


def wait(cond, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.05)
    return False


def app_turns(log: Path) -> list[dict]:
    return [json.loads(line[7:]) for line in log.read_text().splitlines() if line.startswith("[turn] ")]


def latency(a, server, folder: Path) -> list[dict]:
    """Part 1: questions with the camera on, each stopped with "stop omni" once it has played `--stop-after` s."""
    cam = CameraFifo(folder)
    monitor = SpeakerMonitor(server)
    log = folder / "app.log"
    cmd = [sys.executable, str(ROOT / "app.py"), "--ui", "local", "--checkpoint", a.checkpoint, "--camera",
           str(cam.path), "--max-new-tokens", "500"] + (["--quantize", a.quantize] if a.quantize else [])
    app = subprocess.Popen(cmd, env=server.env(), cwd=ROOT, stdin=subprocess.PIPE, stdout=open(log, "w"),
                           stderr=subprocess.STDOUT, text=True)
    rows = []
    try:
        if not wait(lambda: "[state] listening" in log.read_text(), 600):
            raise SystemExit(f"the app did not come up:\n{log.read_text()[-2000:]}")
        for i in range(a.questions):
            _, end = say(server, QUESTIONS[i % len(QUESTIONS)])
            if not wait(lambda: monitor.loud(since=end), 60):
                rows.append({"question": i + 1, "error": "no answer heard"})
                continue
            first = monitor.loud(since=end)[0]
            time.sleep(a.stop_after)
            onset, _ = say(server, "stop omni", lead=0.2)
            wait(lambda: len(app_turns(log)) > i, 20)
            time.sleep(2.0)
            after = monitor.loud(since=onset)
            turn = (app_turns(log) + [{}] * (i + 1))[i]
            rows.append({"question": i + 1, "status": turn.get("status"), "frame": turn.get("frame"),
                         "end_of_speech_to_first_audio_at_speaker_s": round(first - end, 3),
                         "app_measured_s": turn.get("speech_end_to_first_audio_at_speaker_s"),
                         "onset_to_silence_at_speaker_s": round(after[-1] - onset, 3) if after else 0.0,
                         "app_measured_onset_to_silence_s": turn.get("onset_to_silence_at_speaker_s"),
                         "steps_per_s": turn.get("steps_per_s")})
            time.sleep(1.0)
        app.stdin.write("q")
        app.stdin.flush()
        app.wait(30)
    finally:
        if app.poll() is None:
            app.kill()
        monitor.stop()
        cam.stop()
    return rows


def echo_path(a, server, folder: Path) -> dict:
    """Part 2: answers that say "stop omni", looped back into the microphone; the default settings."""
    from webui.engine import Engine, EngineConfig
    from webui.interrupt import make_transcriber
    from webui.local_app import Devices, PresenterApp
    from webui.local_view import LineView

    os.environ["PULSE_SERVER"], os.environ["ALSA_CONFIG_PATH"] = (server.env()[k] for k in
                                                                  ("PULSE_SERVER", "ALSA_CONFIG_PATH"))
    answer = timeline(speech("Here is what I see on the table in front of me.", 24000), silence(1.0, 24000),
                      speech("stop omni", 24000), silence(1.0, 24000), speech("That is all for now.", 24000))
    model = VoiceModel((answer * 0.8 * 32767).astype(np.int16), "Here is what I see. That is all for now.")
    args = SimpleNamespace(mic=None, speaker=None, audio_rate=None, camera="none", preview=False, aec="webrtc",
                           events=None)
    engine = Engine(model, EngineConfig(), transcriber=make_transcriber("auto"), recordings_dir=str(folder / "rec"))
    app = PresenterApp(engine, engine.new_session(), Devices(args), args)
    server.echo_path(True, volume=a.echo_volume)
    t = threading.Thread(target=app.run, kwargs={"view": LineView(io.StringIO())}, daemon=True)
    t.start()
    try:
        for i in range(a.answers):
            say(server, QUESTIONS[i % len(QUESTIONS)])
            wait(lambda: len(app.session.history) > i and app.session.history[i].status in
                 ("done", "interrupted", "error"), 60)
            time.sleep(0.5)
        turns = list(app.session.history)
        erle = app.link.echo_reduction_db()
        heard = 0
        for i in range(a.user_stops):  # the user's own "stop omni" 1 s into an answer, over its echo
            n = len(app.session.history)
            say(server, QUESTIONS[i % len(QUESTIONS)])
            wait(lambda: len(app.session.history) > n and app.session.current is not None
                 and app.session.current.status == "speaking", 60)
            time.sleep(1.0)
            say(server, "stop omni", lead=0.1)
            heard += wait(lambda: app.session.history[-1].status == "interrupted", 8)
            wait(lambda: app.session.current is None, 30)
            time.sleep(0.5)
        return {"answers": len(turns), "false_interrupts": sum(t.status == "interrupted" for t in turns),
                "pauses_for_a_possible_command": sum(t.timings.ducks for t in turns),
                "echo_reduction_db": round(erle, 1) if erle is not None else None,
                "echo_volume": a.echo_volume, "user_stops_heard": f"{heard} of {a.user_stops}"}
    finally:
        app.quit.set()
        t.join(10)
        app.close()
        server.echo_path(False)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=None, help="default: the tiny checkpoint with answers that run to the "
                                                       "token budget (built in a temp folder)")
    ap.add_argument("--quantize", choices=["int8"], default=None)
    ap.add_argument("--questions", type=int, default=3)
    ap.add_argument("--answers", type=int, default=5, help="answers over the echo path (default 5)")
    ap.add_argument("--user-stops", type=int, default=3, help="then answers the user stops with 'stop omni' over "
                    "the echo (default 3)")
    ap.add_argument("--echo-volume", default="100%", help="the echo path's PulseAudio volume (default 100%%; "
                    "70%% is about -9 dB)")
    ap.add_argument("--stop-after", type=float, default=8.0, help="seconds of an answer heard before 'stop omni' "
                    "(default 8: with no echo path the canceller needs a few seconds to learn that)")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        if a.checkpoint is None:
            from omni.random_checkpoint import make_endless_tiny_checkpoint  # answers run to the token budget

            a.checkpoint = str(make_endless_tiny_checkpoint(folder / "endless"))
        server = PulseServer().start()
        try:
            rows = latency(a, server, folder)
            for r in rows:
                print(json.dumps(r))
            for key in ("end_of_speech_to_first_audio_at_speaker_s", "onset_to_silence_at_speaker_s"):
                vals = [r[key] for r in rows if key in r]
                if vals:
                    print(f"{key}: mean {statistics.mean(vals):.3f} s, range {min(vals):.3f}-{max(vals):.3f} s "
                          f"({len(vals)} questions, measured on the speaker's monitor)")
            print("echo path:", json.dumps(echo_path(a, server, folder)))
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
