"""Synthetic listening streams for the irq stage: "stop omni" (espeak-ng, several voices, speeds and levels) put at a
random time into noise, music or other speech, or no command at all; 24 kHz WAVs and a stream manifest."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import soundfile as sf

from ..listen import SNAC_RATE
from .interrupt import read_stream
from .synthetic import QUESTION_VOICES, SPEEDS, speak

COMMAND = "stop omni"
OTHER_SPEECH = ("the weather is nice today", "please open the window", "i like music and books",
                "turn left at the next street", "stop at the station", "omnibus tickets are cheap",
                "what time is it now", "tell me a story about a cat")
BACKGROUNDS = ("noise", "music", "speech")


def trimmed(wave: np.ndarray, floor: float = 0.01) -> np.ndarray:
    """Without espeak's leading and trailing silence (the command's end must be where the speech ends)."""
    loud = np.flatnonzero(np.abs(wave) > floor)
    return wave[loud[0]:loud[-1] + 1] if len(loud) else wave


def spoken(text: str, tmp: Path, rng: random.Random) -> np.ndarray:
    return trimmed(read_stream(speak(text, tmp, rng.choice(QUESTION_VOICES), rng.choice(SPEEDS))))


def music(n: int, rng: np.random.Generator) -> np.ndarray:
    """Notes of a pentatonic scale with two harmonics and a decay, one every 0.2-0.5 s."""
    out, t = np.zeros(n, np.float32), 0
    while t < n:
        length = int(rng.uniform(0.2, 0.5) * SNAC_RATE)
        f = 220.0 * 2 ** (rng.choice([0, 3, 5, 7, 10, 12]) / 12)
        x = np.arange(min(length, n - t)) / SNAC_RATE
        note = (np.sin(2 * np.pi * f * x) + 0.4 * np.sin(4 * np.pi * f * x)) * np.exp(-3 * x)
        out[t:t + len(x)] = note
        t += length
    return out / max(np.abs(out).max(), 1e-6)


def background(kind: str, n: int, tmp: Path, rng: random.Random, nrng: np.random.Generator) -> np.ndarray:
    if kind == "noise":
        wave = nrng.normal(0, 1, n).astype(np.float32)
        wave /= np.abs(wave).max()
    elif kind == "music":
        wave = music(n, nrng)
    else:
        wave = np.zeros(n, np.float32)
        t = int(rng.uniform(0, 0.5) * SNAC_RATE)
        while t < n:
            s = spoken(rng.choice(OTHER_SPEECH), tmp, rng)[: n - t]
            wave[t:t + len(s)] = s / max(np.abs(s).max(), 1e-6)
            t += len(s) + int(rng.uniform(0.1, 0.6) * SNAC_RATE)
    return wave * rng.uniform(0.05, 0.35)


def build_interrupt_set(out_dir: str | Path, n_streams: int = 24, seconds: float = 3.0, seed: int = 0,
                        say=print) -> Path:
    """out_dir/streams.jsonl; half the streams hold the command. Returns the manifest path."""
    out, rng = Path(out_dir), random.Random(seed)
    nrng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    tmp, n = out / "espeak.wav", int(seconds * SNAC_RATE)
    lines = []
    for i in range(n_streams):
        kind = BACKGROUNDS[i % len(BACKGROUNDS)]
        wave = background(kind, n, tmp, rng, nrng)
        end = None
        if (i // len(BACKGROUNDS)) % 2 == 0:
            cmd = spoken(COMMAND, tmp, rng)[: n // 2]
            cmd = cmd / max(np.abs(cmd).max(), 1e-6) * rng.uniform(0.4, 0.9)
            start = rng.randrange(int(0.2 * SNAC_RATE), n - len(cmd) - int(0.3 * SNAC_RATE))
            wave[start:start + len(cmd)] += cmd
            end = round((start + len(cmd)) / SNAC_RATE, 3)
        name = f"stream_{i:03d}.wav"
        sf.write(out / name, np.clip(wave, -1, 1), SNAC_RATE, subtype="PCM_16")
        lines.append({"id": f"stream{i}", "stream": name, "command_end": end, "background": kind})
    tmp.unlink(missing_ok=True)
    manifest = out / "streams.jsonl"
    manifest.write_text("".join(json.dumps(x) + "\n" for x in lines))
    say(f"wrote {n_streams} listening streams to {manifest} ({sum(x['command_end'] is not None for x in lines)} "
        f"with \"{COMMAND}\")")
    return manifest
