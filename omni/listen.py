"""The semantic interruption at inference (spec §11): the listening row. The incoming audio is SNAC-encoded frame by
frame (`StreamEncoder`), each frame fed to the model as one position of a row of its own (`omni.prompt.listen_layout`,
beside the rows that speak), and the text head says after each frame whether "stop omni" was said (`irq`) or not
(`n-irq`). Only checkpoints trained with `omni train --stage irq` have the two tokens (model_config.yaml)."""

from __future__ import annotations

import numpy as np
import torch

from .config import ModelConfig, Vocab
from .errors import OmniInputError
from .prompt import listen_layout
from .speech import FRAME_ORDER, SAMPLES_PER_FRAME

SNAC_RATE = 24000
CONTEXT_FRAMES = 4  # past audio each frame is encoded with (SNAC's convolutions reach back ~this far)


def codes_to_frames(codes: list[torch.Tensor]) -> list[list[int]]:
    """SNAC's three code rows [1, F], [1, 2F], [1, 4F] -> F frames of 7 in the model's order (spec §9.2)."""
    n = codes[0].shape[-1]
    return [[int(codes[book][0, stride * t + offset]) for book, stride, offset in FRAME_ORDER] for t in range(n)]


class StreamEncoder:
    """24 kHz audio in pieces of any length -> complete SNAC frames, each encoded from itself and the CONTEXT_FRAMES
    before it only (what a live stream allows: no audio after it). Training encodes its streams with this too, so the
    model sees the codes it will see live."""

    def __init__(self, snac):
        self.snac, self.buffer, self.done = snac, np.zeros(0, np.float32), 0

    @torch.no_grad()
    def add(self, samples: np.ndarray) -> list[list[int]]:
        self.buffer = np.concatenate([self.buffer, np.asarray(samples, np.float32)])
        frames, p = [], next(self.snac.parameters())
        while (self.done + 1) * SAMPLES_PER_FRAME <= len(self.buffer):
            start = max(0, self.done - CONTEXT_FRAMES) * SAMPLES_PER_FRAME
            window = torch.from_numpy(self.buffer[start:(self.done + 1) * SAMPLES_PER_FRAME])
            frames.append(codes_to_frames(self.snac.encode(window[None, None].to(p.device, p.dtype)))[-1])
            self.done += 1
        keep = max(0, self.done - CONTEXT_FRAMES) * SAMPLES_PER_FRAME  # drop audio no later frame reads
        self.buffer, self.done = self.buffer[keep:], self.done - keep // SAMPLES_PER_FRAME
        return frames


def interrupt_tokens(cfg: ModelConfig) -> tuple[int, int] | None:
    """(irq, n_irq) where the checkpoint declares them, else None."""
    if cfg.irq_token is None or cfg.n_irq_token is None:
        return None
    return cfg.irq_token, cfg.n_irq_token


class InterruptListener:
    """Per-frame interrupt signal: feed the user's audio (24 kHz) while the model speaks; `add` returns one
    probability of irq per new frame. One request's listening: make a new one for each answer."""

    def __init__(self, lm, snac, capacity: int | None = None):
        tokens = interrupt_tokens(lm.cfg)
        if tokens is None:
            raise OmniInputError("this checkpoint has no interruption tokens (irq/n-irq in model_config.yaml); train "
                                 "them with `python -m omni train --stage irq`")
        self.lm, self.tokens, self.vocab = lm, tokens, Vocab.of(lm.cfg)
        self.encoder = StreamEncoder(snac)
        self.cache = lm.new_cache(1, capacity or lm.cfg.block_size)
        self.pos = 0
        start = torch.tensor(listen_layout(self.vocab, []), device=self._device())[None]  # [1, 8, 1]
        self._step(start[:, :, 0])

    def _device(self):
        return self.lm.transformer.ln_f.weight.device

    @torch.inference_mode()
    def _step(self, ids: torch.Tensor) -> float:
        h = self.lm(self.lm.embed_step(ids), self.cache, self.pos)[:, -1]
        self.pos += 1
        w = self.lm.lm_head.weight[list(self.tokens)]  # only the two status rows of the head
        return float(torch.softmax(h.float() @ w.float().T, dim=-1)[0, 0])

    def add(self, samples24k: np.ndarray) -> list[float]:
        out = []
        for frame in self.encoder.add(samples24k):
            if self.pos >= self.cache.capacity:
                break  # the row is full (block_size frames, ~170 s): no more signal for this answer
            ids = torch.tensor(listen_layout(self.vocab, [frame]), device=self._device())[None, :, 1]
            out.append(self._step(ids))
        return out
