"""`python -m omni train --demo OUT`: a tiny random checkpoint, the synthetic set, then stages 1, 2 and 3 in turn,
then the irq stage on listening streams, each starting from the one before; OUT/train_summary.json holds each stage's
first and last loss, and the interruption's measures on held-out streams."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from .config import TrainConfig
from .loop import StageRun, write_summary

# steps and peak learning rates for a 64-wide random model (the paper's rates are for the real one)
DEMO_PLAN = (("1", {"steps": 60, "lr_adapters": 3e-3}),
             ("2", {"steps": 60, "lr_llm": 3e-3}),
             ("3", {"steps": 80, "lr_adapters": 3e-3, "lr_llm": 3e-3}),
             ("irq", {"steps": 60, "lr_llm": 3e-3, "batch_size": 8}))
DEMO_SIZE = (12, 4, 24, 12)  # spoken questions, pictures, listening streams to train on, held-out streams


def run_demo(out: Path, base: TrainConfig) -> dict:
    from ..random_checkpoint import make_tiny_checkpoint
    from .interrupt_data import build_interrupt_set
    from .synthetic import build_synthetic

    out.mkdir(parents=True, exist_ok=True)
    n_questions, n_images, n_streams, n_held_out = DEMO_SIZE
    init = make_tiny_checkpoint(out / "init", seed=base.seed)
    manifest = build_synthetic(out / "data", init, n_questions, n_images, seed=base.seed)
    streams = build_interrupt_set(out / "streams", n_streams, seed=base.seed)
    held_out = build_interrupt_set(out / "streams_held_out", n_held_out, seed=base.seed + 1)
    previous = init
    for stage, plan in DEMO_PLAN:
        cfg = replace(base, stage=stage, warmup_steps=5, **{"batch_size": 4, **plan})
        stage_dir = out / f"stage{stage}"
        data, evaluation = (streams, held_out) if stage == "irq" else (manifest, None)
        write_summary(out, stage, StageRun(cfg, data, previous, stage_dir, eval_manifest=evaluation).run())
        previous = stage_dir
    print(f"demo done: {out / 'train_summary.json'}; the last model (stage irq) is in {previous}")
    return {"out": out}
