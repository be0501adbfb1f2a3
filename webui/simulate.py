"""A simulated caller, for benchmarks and tests: speech from espeak-ng, and a peer that plays a microphone
timeline into a session at real-time pace while pulling the answer's speech, as a WebRTC connection does."""

from __future__ import annotations

import functools
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from .vad import resample

SR = 16000  # microphone
OUT = 24000  # speech out


@functools.lru_cache(maxsize=32)
def _espeak(text: str, rate: int, wpm: int) -> np.ndarray:
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "s.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", "-s", str(wpm), "-w", str(p), text], check=True)
        a, sr = sf.read(p, dtype="float32")
    return resample(a, sr, rate)


def speech(text: str, rate: int = SR, wpm: int = 150, gain: float = 1.0) -> np.ndarray:
    return _espeak(text, rate, wpm) * gain


def silence(s: float, rate: int = SR) -> np.ndarray:
    return np.zeros(int(s * rate), np.float32)


def timeline(*parts: np.ndarray) -> np.ndarray:
    return np.concatenate(parts).astype(np.float32)


@dataclass
class Played:
    t: float  # wall time the frame was handed out
    rms: float


def run_realtime(session, mic: np.ndarray, extra_s: float = 0.0, echo_gain: float = 0.0, frame_s: float = 0.02,
                 until=None) -> list[Played]:
    """Feed `mic` (16 kHz) at real-time pace while pulling speech frames, like a WebRTC peer.

    With `echo_gain` the assistant's own output leaks back into the mic (a speakerphone without AEC).
    Returns the frames handed out with their times. Stops early when `until()` is true.
    """
    n_in = int(frame_s * SR)
    n_out = int(frame_s * OUT)
    played: list[Played] = []
    session.attach_transport()
    echo = np.zeros(0, np.float32)
    total = len(mic) + int(extra_s * SR)
    t0 = time.monotonic()
    k = 0
    try:
        while k * n_in < total:
            target = t0 + k * frame_s
            now = time.monotonic()
            if target > now:
                time.sleep(target - now)
            chunk = mic[k * n_in : (k + 1) * n_in]
            if len(chunk) < n_in:
                chunk = np.concatenate([chunk, np.zeros(n_in - len(chunk), np.float32)])
            if echo_gain and len(echo):
                e = echo[:n_in]
                echo = echo[n_in:]
                chunk = chunk + np.pad(e, (0, n_in - len(e))) * echo_gain
            session.feed_audio(SR, (np.clip(chunk, -1, 1) * 32767).astype(np.int16))
            while True:
                f = session.next_frame(n_out, timeout=0)
                if f is None:
                    break
                x = f.astype(np.float32) / 32768
                played.append(Played(time.monotonic(), float(np.sqrt(np.mean(x**2)))))
                if echo_gain:
                    echo = np.concatenate([echo, resample(x, OUT, SR)])
            k += 1
            if until is not None and until():
                break
    finally:
        session.detach_transport()
    return played


def load_as_the_app_does(checkpoint: str, quantize: str | None = None, asr: str = "none"):
    """(model, stop-command recogniser or None) for a benchmark, loaded as the app loads them: on a thread that ends,
    with one warm-up request. A long-lived thread that ran torch or CTranslate2 keeps a thread team that slows the
    model worker (a recogniser made on the main thread read 1 s slower). Raises OmniError for a bad checkpoint."""
    import threading

    import omni

    from .interrupt import make_transcriber

    out: dict = {}

    def load():
        try:
            model = omni.load_model(checkpoint, device="cpu", quantize=quantize)
            model.generate("A1A2", audio=(16000, speech("warm up please")),
                           options=omni.DecodingOptions(max_new_tokens=12))
            out["loaded"] = model, make_transcriber(asr, checkpoint, "cpu")
        except Exception as e:  # handed to the caller's thread
            out["error"] = e

    t = threading.Thread(target=load)
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]
    return out["loaded"]
