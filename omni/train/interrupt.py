"""The irq stage's data and measures: listening streams -> frame-labelled examples (n-irq before "stop omni" has
been said, irq from then on), the status tokens declared in model_config.yaml, and how well a model separates the
command from other sound on held-out streams (accuracy, false interrupts per background, detection delay)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import yaml

from .. import audio as audio_io
from ..config import Vocab
from ..listen import SNAC_RATE, StreamEncoder, interrupt_tokens
from ..prompt import listen_layout
from ..speech import SAMPLES_PER_FRAME
from .forward import embed, hidden_states
from .manifest import Sample
from .sequence import IGNORE, Example

IRQ_OFFSET, N_IRQ_OFFSET = 5, 6  # eot + 5, + 6: the first text specials no released layout uses (151941, 151942)


def with_status_tokens(cfg):
    """The config with the two status tokens (as it is where it has them already)."""
    if interrupt_tokens(cfg) is not None:
        return cfg
    v = Vocab.of(cfg)
    return replace(cfg, irq_token=v.eot + IRQ_OFFSET, n_irq_token=v.eot + N_IRQ_OFFSET)


def declare_tokens(parts) -> None:
    """Give the checkpoint's config the two status tokens (kept where it has them already)."""
    parts.cfg = with_status_tokens(parts.cfg)
    parts.lm.cfg = parts.cfg


def write_token_declaration(out_dir: Path, cfg) -> None:
    """model_config.yaml says the checkpoint has the tokens (the loader's ModelConfig reads them). The official
    code's LitGPT Config rejects unknown keys, so it cannot load such a checkpoint; stage 1-3 outputs keep its file."""
    path = Path(out_dir) / "model_config.yaml"
    raw = yaml.safe_load(path.read_text())
    raw["irq_token"], raw["n_irq_token"] = cfg.irq_token, cfg.n_irq_token
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(raw, sort_keys=False))
    tmp.replace(path)


def read_stream(path: Path) -> np.ndarray:
    data, rate = audio_io.read_audio_file(path)
    wave = audio_io.to_mono_float32(data)
    if rate != SNAC_RATE:
        import soxr

        wave = soxr.resample(wave, rate, SNAC_RATE, quality="HQ").astype(np.float32)
    return wave


def command_frame(command_end: float) -> int:
    """The first frame by whose end the command has been heard."""
    return int(command_end * SNAC_RATE) // SAMPLES_PER_FRAME


def listen_example(parts, sample: Sample) -> Example:
    frames = StreamEncoder(parts.snac).add(read_stream(sample.stream))
    end = None if sample.command_end is None else command_frame(sample.command_end)
    return frames_example(parts.cfg, frames, end, sample.background)


def frames_example(cfg, frames: list[list[int]], end: int | None, background: str = "") -> Example:
    """The listening row over these SNAC frames, labelled n-irq before frame `end` (None: never) and irq from it."""
    irq, n_irq = interrupt_tokens(cfg)
    ids = torch.tensor(listen_layout(Vocab.of(cfg), frames))[None]  # [1, 8, F + 1]
    text = torch.full((1, ids.shape[-1]), IGNORE, dtype=torch.long)
    stop = len(frames) if end is None else end
    text[0, 1:] = torch.tensor([n_irq if f < stop else irq for f in range(len(frames))])  # position f+1 saw frame f
    ex = Example("LISTEN", ids, text, torch.full((1, 7, ids.shape[-1]), IGNORE, dtype=torch.long))
    ex.meta = {"command_frame": end, "background": background}
    return ex


@torch.no_grad()
def irq_probabilities(lm, ex: Example) -> list[float]:
    """P(irq) after each frame, between the two status tokens, as `omni.listen.InterruptListener` computes it."""
    h = hidden_states(lm, embed(lm, ex))[0, 1:]
    w = lm.lm_head.weight[list(interrupt_tokens(lm.cfg))]
    return torch.softmax(h.float() @ w.float().T, dim=-1)[:, 0].tolist()


def evaluate(lm, examples: list[Example], threshold: float = 0.5) -> dict:
    """Frame accuracy; false interrupts (an irq before the command, or in a stream without one) per background;
    detection delay in frames after the command's end (mean over the streams where it was detected) and misses."""
    right = total = missed = 0
    delays, false = [], {}
    for ex in examples:
        fired = [p > threshold for p in irq_probabilities(lm, ex)]
        end = ex.meta["command_frame"]
        truth = [end is not None and f >= end for f in range(len(fired))]
        right += sum(a == b for a, b in zip(fired, truth))
        total += len(fired)
        bg = ex.meta["background"] or "other"
        k, n = false.get(bg, (0, 0))
        early = any(fired[: len(fired) if end is None else end])
        false[bg] = (k + early, n + 1)
        if end is not None:
            hits = [f for f in range(end, len(fired)) if fired[f]]
            if hits:
                delays.append(hits[0] - end)
            else:
                missed += 1
    return {"accuracy": right / max(total, 1),
            "false_interrupts": {bg: f"{k}/{n}" for bg, (k, n) in sorted(false.items())},
            "false_interrupt_streams": sum(k for k, _ in false.values()),
            "detection_delay_frames": float(np.mean(delays)) if delays else None,
            "missed_commands": missed, "streams": len(examples)}
