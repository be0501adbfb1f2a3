"""Helpers for the presenter mode's tests (`--ui local`): the private PulseAudio server with its virtual microphone
and speaker (webui/virtual_devices.py), the camera stand-in, the app as a child process driven through its pipe or
tmux, and a model that speaks a given recording (for the echo-path test, whose answers must be speech)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from omni.events import AudioChunk, Finished, Result, Stats, TextDelta  # noqa: E402
from webui.vad import TurnDetector, TurnEnded  # noqa: E402
from webui.virtual_devices import CameraFifo, PulseServer, SpeakerMonitor  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def pulse():
    server = PulseServer().start()
    yield server
    server.stop()


@pytest.fixture
def camera(tmp_path):
    cam = CameraFifo(tmp_path)
    yield cam
    cam.stop()


@pytest.fixture(scope="session")
def endless_ckpt(tmp_path_factory) -> Path:
    """The tiny checkpoint whose answers run to the token budget (one is playing when the user says stop)."""
    from test_browser_e2e import endless_tiny_checkpoint

    return endless_tiny_checkpoint(tmp_path_factory.mktemp("endless"))


def app_cmd(*args: str) -> list[str]:
    return [sys.executable, str(ROOT / "app.py"), "--ui", "local", *args]


class App:
    """`python app.py --ui local ARGS` with its keys on a pipe and its lines in a file."""

    def __init__(self, args: list[str], env: dict, log: Path):
        self.log = log
        self.proc = subprocess.Popen(app_cmd(*args), env=env, cwd=ROOT, stdin=subprocess.PIPE,
                                     stdout=open(log, "w"), stderr=subprocess.STDOUT, text=True)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, needle: str, timeout: float = 120.0) -> str:
        end = time.monotonic() + timeout
        while needle not in self.text():
            assert self.proc.poll() is None, f"the app ended ({self.proc.returncode}):\n{self.text()[-3000:]}"
            assert time.monotonic() < end, f"no {needle!r} in {timeout} s:\n{self.text()[-3000:]}"
            time.sleep(0.1)
        return self.text()

    def key(self, k: str) -> None:
        self.proc.stdin.write(k)
        self.proc.stdin.flush()

    def turns(self) -> list[dict]:
        return [json.loads(line[len("[turn] "):]) for line in self.text().splitlines() if line.startswith("[turn] ")]

    def wait_turns(self, n: int, timeout: float = 60.0) -> list[dict]:
        end = time.monotonic() + timeout
        while len(self.turns()) < n:
            assert self.proc.poll() is None, f"the app ended ({self.proc.returncode}):\n{self.text()[-3000:]}"
            assert time.monotonic() < end, f"fewer than {n} turns in {timeout} s:\n{self.text()[-3000:]}"
            time.sleep(0.1)
        return self.turns()

    def end(self, timeout: float = 30.0) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()


def speech_span(audio: np.ndarray, rate: int = 16000) -> tuple[float, float]:
    """Where the speech in a recording starts and ends, by the VAD (espeak pads its output with silence)."""
    det = TurnDetector()
    ended = [e for e in det.push(rate, audio) + det.flush() if isinstance(e, TurnEnded)]
    return ended[0].t_start, ended[-1].t_end


class VoiceModel:
    """Answers every question with the same recording (int16, 24 kHz), in 0.34 s chunks `speed` x faster than
    real time; honours cancel. Stands in for the model where the answer must be real speech (an echo test)."""

    def __init__(self, pcm: np.ndarray, text: str, speed: float = 2.0):
        self.pcm, self.text, self.speed = pcm, text, speed
        self.calls = 0

    def stream(self, task, audio=None, image=None, text=None, options=None, stride=4, mode="smooth", cancel=None):
        cancel = cancel or threading.Event()
        self.calls += 1
        t0 = time.monotonic()
        stats = Stats(task=task, prompt_length=10)
        time.sleep(0.2)
        yield TextDelta(self.text)
        chunk = int(0.34 * 24000)
        for i in range(0, len(self.pcm), chunk):
            if cancel.is_set():
                break
            piece = self.pcm[i:i + chunk]
            stats.audio_seconds += len(piece) / 24000
            stats.steps += 4
            if stats.time_to_first_audio_s is None:
                stats.time_to_first_audio_s = time.monotonic() - t0
            yield AudioChunk(piece)
            time.sleep(len(piece) / 24000 / self.speed)
        stats.cancelled = cancel.is_set()
        stats.stop_reason = "cancelled" if stats.cancelled else "eoa"
        stats.total_s = stats.decode_s = time.monotonic() - t0
        yield Finished(Result(task, 10, [], [], self.text, self.pcm, stats))


__all__ = ["App", "CameraFifo", "PulseServer", "SpeakerMonitor", "VoiceModel", "app_cmd", "speech_span"]
