"""The training configuration: command-line flags, or a YAML file with the same names (flags win)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

import yaml

from ..errors import OmniInputError


@dataclass
class TrainConfig:
    stage: str = "1"
    steps: int = 100
    batch_size: int = 4  # sequences per micro-batch
    grad_accum: int = 1  # micro-batches per optimiser step
    warmup_steps: int = 10
    lr_adapters: float | None = None  # peak; None: the stage's default (omni/train/stages.py, spec §13)
    lr_llm: float | None = None
    end_lr_ratio: float | None = None  # end of the cosine as a fraction of the peak; None: the stage's default
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    seed: int = 0
    save_every: int = 0  # steps between checkpoints (0: only at the end)
    device: str = "auto"
    bf16: bool = False  # bf16 autocast (CUDA)
    grad_checkpointing: bool = False
    threads: int | None = None  # torch CPU threads

    def validate(self) -> None:
        for name in ("steps", "batch_size", "grad_accum"):
            if getattr(self, name) < 1:
                raise OmniInputError(f"--{name.replace('_', '-')} must be >= 1 (got {getattr(self, name)})")
        if self.warmup_steps < 0 or self.save_every < 0:
            raise OmniInputError("--warmup-steps and --save-every must be >= 0")
        for name in ("lr_adapters", "lr_llm"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise OmniInputError(f"--{name.replace('_', '-')} must be > 0")

    def to_dict(self) -> dict:
        return asdict(self)


def load_config_file(path: str | Path) -> dict:
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise OmniInputError(f"cannot read config {path}: {e}") from None
    names = {f.name for f in fields(TrainConfig)}
    if not isinstance(raw, dict) or set(raw) - names:
        bad = sorted(set(raw) - names) if isinstance(raw, dict) else raw
        raise OmniInputError(f"config {path}: unknown keys {bad}; allowed: {', '.join(sorted(names))}")
    return raw
