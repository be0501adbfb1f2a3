"""Shared fixtures: a tiny random checkpoint in the official layout, the model loaded once, test media."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    from omni.random_checkpoint import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "ckpt", seed=0)


@pytest.fixture(scope="session")
def tiny_model(tiny_ckpt):
    import omni

    return omni.load_model(tiny_ckpt, device="cpu")


@pytest.fixture(scope="session")
def media(tmp_path_factory) -> dict[str, Path]:
    """espeak-ng speech (16 kHz mono 16-bit, and 22.05 kHz stereo), an image, and bad files."""
    d = tmp_path_factory.mktemp("media")
    raw = d / "raw.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(raw), "what is in the picture"], check=True)
    data, sr = sf.read(raw, dtype="int16")
    out = {}
    # -D: no dither. sox dithers randomly by default, so the audio (and the tokens) would change per run
    subprocess.run(["sox", "-D", str(raw), "-r", "16000", "-c", "1", "-b", "16", str(d / "q16k.wav")], check=True)
    out["speech16k"] = d / "q16k.wav"
    stereo = np.stack([data, data // 2], axis=1)
    sf.write(d / "stereo22k.wav", stereo, sr, subtype="PCM_16")
    out["stereo"] = d / "stereo22k.wav"
    sf.write(d / "speech.flac", data, sr)
    out["flac"] = d / "speech.flac"
    from PIL import Image

    rng = np.random.RandomState(0)
    Image.fromarray((rng.rand(240, 320, 3) * 255).astype(np.uint8)).save(d / "img.png")
    out["image"] = d / "img.png"
    (d / "empty.wav").write_bytes(b"")
    out["empty"] = d / "empty.wav"
    (d / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt garbage" + bytes(rng.randint(0, 255, 300, dtype=np.uint8)))
    out["corrupt"] = d / "corrupt.wav"
    sf.write(d / "silence_short.wav", np.zeros(400, np.int16), 16000)
    out["too_short"] = d / "silence_short.wav"
    sf.write(d / "long.wav", (rng.randn(16000 * 33) * 1000).astype(np.int16), 16000)
    out["long"] = d / "long.wav"
    (d / "notimage.png").write_text("this is not an image")
    out["not_image"] = d / "notimage.png"
    shutil.copy(out["speech16k"], d / "speech_as.png")
    out["wav_as_png"] = d / "speech_as.png"
    return out


@pytest.fixture
def run_cli(capsys):
    """`python -m omni ARGS` in this process -> (exit code, stdout, stderr)."""
    from omni.cli import main

    def run(*args):
        rc = main([str(a) for a in args])
        out = capsys.readouterr()
        return rc, out.out, out.err
    return run


class VirtualClock:
    """Time for the load-time choices' tests: each candidate advances it by a set cost, and `best_ms` (patched
    over omni.linear.best_ms where a module imported it) reads how far one call moved it. The choice then does
    not hang on this machine's noise."""

    def __init__(self):
        self.now = 0.0

    def advance(self, cost: float) -> None:
        self.now += cost

    def best_ms(self, fn, reps: int) -> float:
        start = self.now
        fn()
        return self.now - start


@pytest.fixture
def virtual_clock() -> VirtualClock:
    return VirtualClock()
