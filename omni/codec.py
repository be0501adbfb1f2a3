"""SNAC 24 kHz speech codec: loading, and turning delayed token rows into PCM chunks while they are generated."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from .errors import CheckpointError
from .tokens import frames_to_codes

SAMPLES_PER_FRAME = 2048  # one 7-token frame = 4 codebook-2 codes x 512-sample hop = 85.3 ms at 24 kHz


def load_snac(snac_dir: Path):
    from snac import SNAC

    cfg_path, weights = snac_dir / "config.json", snac_dir / "pytorch_model.bin"
    try:
        config = json.loads(cfg_path.read_text())
        model = SNAC(**config)
    except (OSError, json.JSONDecodeError, TypeError) as e:
        raise CheckpointError(f"{cfg_path}: not a SNAC config ({type(e).__name__}: {e})") from None
    try:
        state = torch.load(str(weights), map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{weights}: cannot read SNAC weights ({type(e).__name__}). Download it again.") from None
    try:
        model.load_state_dict(state)  # also accepts the weight_g/weight_v names of older weight_norm
    except RuntimeError as e:
        raise CheckpointError(f"{weights}: SNAC weights do not match {cfg_path}: {str(e).splitlines()[1:3]}") from None
    if config.get("sampling_rate", 24000) != 24000:
        raise CheckpointError(f"{cfg_path}: sampling_rate {config.get('sampling_rate')} (Mini-Omni2 speaks SNAC 24 kHz)")
    return model.eval()


def to_int16(wave: torch.Tensor, official: bool = False) -> np.ndarray:
    x = wave.detach().reshape(-1).double().cpu().numpy()
    if official:  # float64 * 32768 -> int16 by truncation, as the official server does
        return (x * 32768).astype(np.int16)
    return np.clip(np.round(x * 32767.0), -32768, 32767).astype(np.int16)


class SpeechDecoder:
    """Turns complete 7-token frames into PCM jobs as they arrive.

    mode "official": every `stride` frames are decoded on their own (clicks at chunk borders; a tail of up to
    stride-1 frames is never played). mode "smooth" (default): each decode also sees up to `context` earlier
    frames and the last frame is held back until the next chunk, so chunk borders join without a click, and
    `flush()` plays the tail. Frames holding a special id (>= n_codes) are played as silence.
    `add`/`flush` only pick frames (cheap, in order); `render` runs SNAC, so it can run on a worker thread.
    """

    def __init__(self, snac, n_codes: int = 4096, stride: int = 4, mode: str = "smooth", context: int = 4,
                 hold_back: int = 1):
        if mode not in ("smooth", "official"):
            raise ValueError(f"mode must be 'smooth' or 'official', not {mode!r}")
        self.snac, self.n_codes, self.stride, self.mode = snac, n_codes, max(1, stride), mode
        self.context = context if mode == "smooth" else 0
        self.hold_back = hold_back if mode == "smooth" else 0
        self.frames: list[list[int]] = []
        self.emitted = 0  # frames already handed out as jobs

    def add(self, frames: list[list[int]]) -> tuple | None:
        """Add newly completed frames; return a render job if a chunk is due."""
        self.frames.extend(frames)
        ready = len(self.frames) - self.hold_back
        if ready - self.emitted < self.stride:
            return None
        end = self.emitted + (ready - self.emitted) // self.stride * self.stride if self.mode == "official" else ready
        return self._job(self.emitted, end)

    def flush(self) -> tuple | None:
        """A job for the frames not yet played (none in official mode: the official stream drops them)."""
        if self.mode == "official" or self.emitted >= len(self.frames):
            return None
        return self._job(self.emitted, len(self.frames))

    def _job(self, start: int, end: int) -> tuple:
        first = max(0, start - self.context)
        self.emitted = end
        return self.frames[first:end], start - first

    def render(self, job: tuple) -> np.ndarray:
        frames, skip = job
        bad = [i for i, f in enumerate(frames) if any(t >= self.n_codes or t < 0 for t in f)]
        if bad:
            frames = [[0] * 7 if i in bad else f for i, f in enumerate(frames)]
        device = next(self.snac.parameters()).device
        with torch.inference_mode():
            wave = self.snac.decode([c.to(device) for c in frames_to_codes(frames)]).reshape(-1).float()
            for i in bad:
                wave[i * SAMPLES_PER_FRAME:(i + 1) * SAMPLES_PER_FRAME] = 0
        return to_int16(wave[skip * SAMPLES_PER_FRAME:], official=self.mode == "official")


def decode_frames(snac, frames: list[list[int]], n_codes: int = 4096) -> np.ndarray:
    """Whole-utterance decode in one SNAC call (used for --out-wav and replay)."""
    if not frames:
        return np.zeros(0, np.int16)
    dec = SpeechDecoder(snac, n_codes, stride=len(frames), mode="smooth", context=0, hold_back=0)
    return dec.render(dec.add(frames))
