"""Helpers for the presenter mode's tests (`--ui local`): the private PulseAudio server with its virtual microphone
and speaker (webui/virtual_devices.py), the camera stand-in, the app as a child process driven through its pipe or
tmux (the model that speaks a recording, for the echo-path test, is webui/virtual_devices.py's)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from webui.vad import TurnDetector, TurnEnded  # noqa: E402
from webui.virtual_devices import CameraFifo, PulseServer, SpeakerMonitor, VoiceModel  # noqa: E402

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
    from omni.random_checkpoint import make_endless_tiny_checkpoint

    return make_endless_tiny_checkpoint(tmp_path_factory.mktemp("endless"))


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


__all__ = ["App", "CameraFifo", "PulseServer", "SpeakerMonitor", "VoiceModel", "app_cmd", "speech_span"]
