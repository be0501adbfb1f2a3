"""Speech out: the decode loop's delayed audio rows -> 7-token SNAC frames -> int16 PCM, chunk by chunk.

Entry k holds audio layer j of frame k - j - 1 (the delay pattern), so frame f is complete once entry f + 7 is in.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Iterator

import numpy as np
import torch

from .config import N_AUDIO_LAYERS

SAMPLES_PER_FRAME = 2048  # one 7-token frame = 4 codebook-2 codes x 512-sample hop = 85.3 ms at 24 kHz

# SNAC frame order: audio layer j of frame t -> (codebook, index within that codebook)
# depth first: coarse, mid-a, fine-a, fine-b, mid-b, fine-c, fine-d
FRAME_ORDER = ((0, 1, 0), (1, 2, 0), (2, 4, 0), (2, 4, 1), (1, 2, 1), (2, 4, 2), (2, 4, 3))  # (codebook, stride, offset)


def frames_from_delayed(audio_rows: list[list[int]], n_frames: int | None = None, start: int = 0) -> list[list[int]]:
    """Undo the delay pattern: frame f, layer j is the token generated at step f + j + 1.

    Returns frames [start, start + n_frames) as lists of 7 local ids. By default all complete frames.
    """
    n_complete = min(len(r) - j - 1 for j, r in enumerate(audio_rows))
    end = n_complete if n_frames is None else min(n_complete, start + n_frames)
    return [[audio_rows[j][f + j + 1] for j in range(N_AUDIO_LAYERS)] for f in range(start, max(start, end))]


def frames_to_codes(frames: list[list[int]]) -> list[torch.Tensor]:
    """7-token frames -> the three SNAC code tensors [1, F], [1, 2F], [1, 4F]."""
    n = len(frames)
    codes = [torch.zeros(1, n * s, dtype=torch.long) for s in (1, 2, 4)]
    for t, frame in enumerate(frames):
        for j, (book, stride, offset) in enumerate(FRAME_ORDER):
            codes[book][0, stride * t + offset] = frame[j]
    return codes


def to_int16(wave: torch.Tensor, official: bool = False) -> np.ndarray:
    x = wave.detach().reshape(-1).cpu().double().numpy()  # on the CPU first: MPS has no float64
    if official:  # float64 * 32768 -> int16 by truncation, as the official server does
        return (x * 32768).astype(np.int16)
    return np.clip(np.round(x * 32767.0), -32768, 32767).astype(np.int16)


class SpeechDecoder:
    """Turns complete 7-token frames into PCM jobs as they arrive.

    mode "official": every `stride` frames are decoded on their own (clicks at chunk borders; a tail of up to
    stride-1 frames is never played), as the official server does.
    mode "smooth" (default): chunks start at `first` frames and double every second chunk up to `stride`, so
    the first sound comes early, the player's buffer grows, and later chunks cost less SNAC time per frame
    (on 2 CPU cores, int8: sizes 2,2,4,4,... start as early as 1,1,2,2,... once gaps are counted). Each chunk is
    decoded with `context` frames before it and `lookahead` frames after it (waiting for those), so its samples
    match a whole-utterance decode and chunk borders join without a click; `flush()` plays the tail. Frames
    holding a special id (>= n_codes) play as silence. `add`/`flush` only pick frames (cheap, in order); `render`
    runs SNAC, so it can run on a worker thread. `stride` defaults to 16 frames (smooth) or 4 (official).
    """

    def __init__(self, snac, n_codes: int = 4096, stride: int | None = None, mode: str = "smooth",
                 context: int = 2, lookahead: int = 2, first: int = 2):
        if mode not in ("smooth", "official"):
            raise ValueError(f"mode must be 'smooth' or 'official', not {mode!r}")
        if stride is None:
            stride = 16 if mode == "smooth" else 4
        self.snac, self.n_codes, self.stride, self.mode = snac, n_codes, max(1, stride), mode
        smooth = mode == "smooth"
        self.context, self.lookahead = (context, lookahead) if smooth else (0, 0)
        self.chunk = min(max(1, first), self.stride) if smooth else self.stride  # size of the next chunk
        self.frames: list[list[int]] = []
        self.emitted = 0  # frames already handed out as jobs
        self.n_chunks = 0

    def add(self, frames: list[list[int]]) -> tuple | None:
        """Add newly completed frames; return a render job if a chunk is due."""
        self.frames.extend(frames)
        ready = len(self.frames) - self.lookahead
        if ready - self.emitted < self.chunk:
            return None
        if self.mode == "official":
            end = self.emitted + (ready - self.emitted) // self.stride * self.stride
        else:
            end = ready
            self.n_chunks += 1
            if self.n_chunks % 2 == 0:  # sizes 2, 2, 4, 4, 8, 8, ...: the buffer grows before the chunks do
                self.chunk = min(self.chunk * 2, self.stride)
        return self._job(self.emitted, end)

    def flush(self) -> tuple | None:
        """A job for the frames not yet played (none in official mode: the official stream drops them)."""
        if self.mode == "official" or self.emitted >= len(self.frames):
            return None
        return self._job(self.emitted, len(self.frames))

    def _job(self, start: int, end: int) -> tuple:
        first, last = max(0, start - self.context), min(len(self.frames), end + self.lookahead)
        self.emitted = end
        return self.frames[first:last], start - first, end - start

    def render(self, job: tuple) -> np.ndarray:
        """job (frames, skip, count) -> int16 PCM of `count` frames starting `skip` frames into `frames`."""
        frames, skip, count = job
        bad = [i for i, f in enumerate(frames) if any(t >= self.n_codes or t < 0 for t in f)]
        if bad:
            frames = [[0] * 7 if i in bad else f for i, f in enumerate(frames)]
        device = next(self.snac.parameters()).device
        with torch.inference_mode():
            wave = self.snac.decode([c.to(device) for c in frames_to_codes(frames)]).reshape(-1).float()
            for i in bad:
                wave[i * SAMPLES_PER_FRAME:(i + 1) * SAMPLES_PER_FRAME] = 0
        wave = wave[skip * SAMPLES_PER_FRAME:(skip + count) * SAMPLES_PER_FRAME]
        return to_int16(wave, official=self.mode == "official")


def decode_frames(snac, frames: list[list[int]], n_codes: int = 4096) -> np.ndarray:
    """Whole-utterance decode in one SNAC call (used for --out-wav and replay)."""
    if not frames:
        return np.zeros(0, np.int16)
    dec = SpeechDecoder(snac, n_codes, stride=len(frames), mode="smooth", context=0, lookahead=0, first=len(frames))
    return dec.render(dec.add(frames))


class SpeechStream:
    """Decode entries in, finished PCM chunks out, for one answer.

    `add` keeps an entry's 7 audio ids (`rows`, in the delayed layout); once entry k is in, frame k - 7 is
    complete and goes to a SpeechDecoder, and a chunk that is due is rendered by SNAC: at once, or with `overlap`
    on one worker thread while the caller decodes the next tokens (chunks still come out in order). `finish`
    renders the tail (`flush`) and waits for every chunk; `close` stops the worker.
    """

    def __init__(self, snac, n_codes: int = 4096, stride: int | None = None, mode: str = "smooth",
                 overlap: bool = False):
        self.decoder = SpeechDecoder(snac, n_codes, stride, mode)
        self.rows: list[list[int]] = [[] for _ in range(N_AUDIO_LAYERS)]
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="snac") if overlap else None
        self._pending: deque[Future] = deque()

    def add(self, audio_ids: list[int]) -> Iterator[np.ndarray]:
        """Keep one entry's audio ids; returns the chunks finished by now."""
        for row, token in zip(self.rows, audio_ids):
            row.append(token)
        k = len(self.rows[0]) - 1
        if k >= N_AUDIO_LAYERS:
            self._render(self.decoder.add(frames_from_delayed(self.rows, n_frames=1, start=k - N_AUDIO_LAYERS)))
        return self._finished(wait=False)

    def finish(self, flush: bool = True) -> Iterator[np.ndarray]:
        """The rest of the chunks, waited for; with `flush` the frames not yet played too."""
        if flush:
            self._render(self.decoder.flush())
        return self._finished(wait=True)

    def close(self) -> None:
        if self._worker is not None:
            self._worker.shutdown(wait=True, cancel_futures=True)

    def _render(self, job: tuple | None) -> None:
        if job is None:
            return
        if self._worker is None:
            done = Future()
            done.set_result(self.decoder.render(job))
            self._pending.append(done)
        else:
            self._pending.append(self._worker.submit(self.decoder.render, job))

    def _finished(self, wait: bool) -> Iterator[np.ndarray]:
        while self._pending and (wait or self._pending[0].done()):
            yield self._pending.popleft().result()
