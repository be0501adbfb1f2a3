"""Decoding options, the sampler and the two official decode loops (speech answer, text answer).

A loop yields one *entry* per forward pass: entry 0 comes from the prefill, entry k from decode step k.
For speech tasks an entry is the 8 ids fed back next (7 local audio ids, then the global text id after the
eot->pad rule); for text tasks it is the text id alone. This is also the `--tokens-json` contract.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Iterator

import torch

from .config import N_AUDIO_LAYERS, Vocab
from .errors import OmniError, OmniInputError
from .model import OmniLM


@dataclass(frozen=True)
class DecodingOptions:
    max_new_tokens: int | None = None  # entries to produce at most; None: as many as block_size allows
    temperature: float = 0.0  # 0: greedy (the official behaviour: top_k=1)
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    # benchmarks: run the whole budget even past the end of the answer (as vLLM's ignore_eos), so that random
    # test weights, which may end an answer after a few steps, still time a long one
    ignore_stop: bool = False

    def validate(self) -> None:
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise OmniInputError(f"max_new_tokens must be >= 1 (got {self.max_new_tokens})")
        if self.temperature < 0:
            raise OmniInputError(f"temperature must be >= 0 (got {self.temperature})")
        if self.top_k is not None and self.top_k < 1:
            raise OmniInputError(f"top_k must be >= 1 (got {self.top_k})")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise OmniInputError(f"top_p must be in (0, 1] (got {self.top_p})")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1


class Sampler:
    """Official order: top-k, divide by temperature, top-p, softmax, multinomial. Greedy is argmax."""

    def __init__(self, opts: DecodingOptions, device):
        self.opts = opts
        self.gen = None
        if not opts.greedy:
            self.gen = torch.Generator(device=device)
            if opts.seed is not None:
                self.gen.manual_seed(opts.seed)
            else:
                self.gen.seed()

    def text(self, lm: OmniLM, h: torch.Tensor) -> int:
        """The text id for hidden state h [1, D] (greedy: the model's argmax, which may skip most of the head)."""
        return int(lm.text_argmax(h)[0] if self.opts.greedy else self(lm.text_logits(h))[0])

    def audio(self, lm: OmniLM, h: torch.Tensor) -> list[int]:
        """The 7 audio-layer ids for hidden state h [1, D]."""
        return (lm.audio_argmax(h) if self.opts.greedy else self(lm.audio_logits(h)))[0].tolist()

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """logits [..., V] -> ids [...]"""
        if self.opts.greedy:
            return logits.argmax(dim=-1)
        o = self.opts
        logits = logits.float()
        if o.top_k is not None and o.top_k < logits.shape[-1]:
            kth = torch.topk(logits, o.top_k, dim=-1).values[..., -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        logits = logits / o.temperature
        if o.top_p is not None and o.top_p < 1.0:
            sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
            cum = sorted_logits.softmax(-1).cumsum(-1)
            drop = cum - sorted_logits.softmax(-1) > o.top_p  # keep the smallest prefix reaching top_p
            logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
        probs = logits.softmax(-1)
        # NaN/inf logits (float16 overflow) would make multinomial fail, on a GPU as a device-side assert that
        # breaks every later request of the process: stop this one with a message instead
        if not bool(torch.isfinite(probs).all()):
            raise OmniError("the model produced NaN/inf scores (float16 overflows with these weights?); use "
                            "--dtype bfloat16 or float32")
        flat = probs.reshape(-1, probs.shape[-1])
        return torch.multinomial(flat, 1, generator=self.gen).view(probs.shape[:-1])


@torch.inference_mode()
def speech_entries(lm: OmniLM, vocab: Vocab, x: torch.Tensor, n_entries: int, opts: DecodingOptions,
                   cancel: threading.Event | None = None, info: dict | None = None) -> Iterator[list[int]]:
    """Speech answer (A1A2/IMAGE_A1A2 with a batch of 2, T1A2 with one row).

    x: prefill embeddings [B, L, D]. Batch of 2: audio from row 0, text from row 1, and that text is fed to
    both rows; row 1 always gets pad_a on its audio layers. Stops before the step whose layer-6 token is eoa.
    `info["stop"]` tells why it ended: "eoa", "budget" or "cancelled".
    """
    info = info if info is not None else {}
    B, L, _ = x.shape
    text_row = B - 1
    sample = Sampler(opts, x.device)
    with lm.stepper(B, L + n_entries) as stepper:  # held to the end: its KV cache is this request's
        h = lm.prefill(x, stepper.cache)
        audio = sample.audio(lm, h[:1])
        text = sample.text(lm, h[text_row:text_row + 1])
        info["stop"] = "budget"
        yield audio + [text]  # entry 0: an eot here does not start pad forcing, an eoa here does not stop
        text_done = False
        shift = torch.arange(N_AUDIO_LAYERS, device=x.device) * vocab.audio_vocab_size + vocab.text_vocab_size
        ids = torch.empty(B, 8, dtype=torch.long, device=x.device)
        if B == 2:
            ids[1, :7] = shift + vocab.pad_a
        for step in range(1, n_entries):
            if cancel is not None and cancel.is_set():
                info["stop"] = "cancelled"
                return
            ids[0, :7] = shift + torch.tensor(audio, device=x.device)
            ids[:, 7] = text
            h = stepper.step(ids, L + step - 1)
            audio = sample.audio(lm, h[:1])
            if text_done and opts.greedy:
                text = vocab.pad_t  # forced below anyway: skip the text head (a fifth of a CPU step)
            else:  # sampling draws the discarded text token too, as the official loop, to keep the random stream
                text = sample.text(lm, h[text_row:text_row + 1])
            if audio[6] == vocab.eoa and not opts.ignore_stop:
                info["stop"] = "eoa"
                return
            if text_done:
                text = vocab.pad_t
            elif text == vocab.eot:
                text_done = True  # fed back once, then every text token is forced to pad_t
            yield audio + [text]


@torch.inference_mode()
def text_entries(lm: OmniLM, vocab: Vocab, x: torch.Tensor, n_entries: int, opts: DecodingOptions,
                 cancel: threading.Event | None = None, info: dict | None = None) -> Iterator[int]:
    """Text answer (A1T2, ASR, T1T2): one row; the audio layers get pad_a each step; stops at eot (not yielded).

    As the official loops, an eot sampled from the prefill (entry 0) is kept and does not end the answer.
    """
    info = info if info is not None else {}
    B, L, _ = x.shape
    sample = Sampler(opts, x.device)
    with lm.stepper(B, L + n_entries) as stepper:
        h = lm.prefill(x, stepper.cache)
        text = sample.text(lm, h[:1])
        info["stop"] = "budget"
        yield text
        ids = torch.tensor([[vocab.layershift(vocab.pad_a, i) for i in range(N_AUDIO_LAYERS)] + [0]], device=x.device)
        for step in range(1, n_entries):
            if cancel is not None and cancel.is_set():
                info["stop"] = "cancelled"
                return
            ids[0, 7] = text
            h = stepper.step(ids, L + step - 1)
            text = sample.text(lm, h[:1])
            if text == vocab.eot and not opts.ignore_stop:
                info["stop"] = "eot"
                return
            yield text
