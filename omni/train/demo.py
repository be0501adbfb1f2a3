"""`python -m omni train --demo OUT`: a tiny random checkpoint, the synthetic set, then stages 1, 2 and 3 in turn,
each starting from the one before; OUT/train_summary.json holds each stage's first and last loss."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from .config import TrainConfig
from .loop import StageRun, write_summary

# steps and peak learning rates for a 64-wide random model (the paper's rates are for the real one)
DEMO_PLAN = (("1", dict(steps=60, lr_adapters=3e-3)),
             ("2", dict(steps=60, lr_llm=3e-3)),
             ("3", dict(steps=80, lr_adapters=3e-3, lr_llm=3e-3)))
DEMO_SIZE = (12, 4)  # spoken questions, pictures


def run_demo(out: Path, base: TrainConfig) -> dict:
    from ..random_checkpoint import make_tiny_checkpoint
    from .synthetic import build_synthetic

    out.mkdir(parents=True, exist_ok=True)
    init = make_tiny_checkpoint(out / "init", seed=base.seed)
    manifest = build_synthetic(out / "data", init, *DEMO_SIZE, seed=base.seed)
    previous = init
    for stage, plan in DEMO_PLAN:
        cfg = replace(base, stage=stage, warmup_steps=5, batch_size=4, **plan)
        stage_dir = out / f"stage{stage}"
        write_summary(out, stage, StageRun(cfg, manifest, previous, stage_dir).run())
        previous = stage_dir
    print(f"demo done: {out / 'train_summary.json'}; the stage 3 model is in {previous}")
    return {"out": out}
