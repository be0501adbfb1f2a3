"""`python -m omni train ...` and `python -m omni train-data ...`: the parsers and what they run."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from ..errors import OmniInputError
from .config import TrainConfig, load_config_file

STAGE_CHOICES = ("1", "2", "3", "irq")


def add_parsers(sub) -> None:
    t = sub.add_parser("train", help="train a stage (1, 2, 3) from a checkpoint on a JSONL manifest; --demo: all "
                       "stages on a built-in synthetic set", description="See docs/training.md.")
    t.add_argument("--stage", choices=STAGE_CHOICES, help="1: adapters; 2: LLM, text answers; 3: adapters + LLM, "
                   "text + speech answers; irq: the \"stop omni\" interruption from listening streams")
    t.add_argument("--data", help="JSONL manifest (docs/training.md)")
    t.add_argument("--init", help="checkpoint to start from (official layout)")
    t.add_argument("--snac", help="SNAC directory of --init (default: <init>/snac_24khz)")
    t.add_argument("--out", required=True, help="output directory: the trained checkpoint in the official layout, "
                   "loss logs and plots, train_state.pt")
    t.add_argument("--eval-data", help="irq stage: held-out stream manifest to measure the interruption on")
    t.add_argument("--config", help="YAML file with any of the options below (flags given here win)")
    t.add_argument("--resume", action="store_true", help="continue the stage from OUT/train_state.pt")
    t.add_argument("--demo", action="store_true", help="build a tiny checkpoint and synthetic set in OUT and train "
                   "every stage on it (CPU, minutes); writes OUT/train_summary.json")
    for f in fields(TrainConfig):
        if f.name == "stage":
            continue
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            t.add_argument(flag, action="store_true", default=None)
        else:
            kind = {"int": int, "float": float, "int | None": int, "float | None": float}.get(str(f.type), str)
            t.add_argument(flag, type=kind, default=None)

    d = sub.add_parser("train-data", help="write the synthetic training set (espeak-ng speech, SNAC codes, pictures)")
    d.add_argument("dir")
    d.add_argument("--checkpoint", required=True, help="its SNAC encodes the spoken answers")
    d.add_argument("--questions", type=int, default=24)
    d.add_argument("--images", type=int, default=8)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--streams", type=int, default=0, help="also write N listening streams for the irq stage "
                   "(DIR/streams.jsonl)")


def config_from_args(a) -> TrainConfig:
    values = load_config_file(a.config) if a.config else {}
    for f in fields(TrainConfig):
        given = getattr(a, f.name, None)
        if given is not None:
            values[f.name] = given
    return TrainConfig(**values)


def cmd_train(a) -> int:
    if a.demo:
        from .demo import run_demo

        run_demo(Path(a.out), config_from_args(a))
        return 0
    needed = (("--stage", a.stage), ("--data", a.data)) + (() if a.resume else (("--init", a.init),))
    missing = [flag for flag, v in needed if v is None]
    if missing:
        raise OmniInputError(f"train needs {', '.join(missing)} (or --demo)")
    from .loop import StageRun, write_summary

    cfg = config_from_args(a)
    run = StageRun(cfg, Path(a.data), Path(a.init) if a.init else None, Path(a.out), a.resume,
                   Path(a.snac) if a.snac else None, eval_manifest=Path(a.eval_data) if a.eval_data else None)
    write_summary(Path(a.out), cfg.stage, run.run())
    print(f"checkpoint written to {a.out} (loss log {run.log_path.name})")
    return 0


def cmd_train_data(a) -> int:
    from .synthetic import build_synthetic

    build_synthetic(a.dir, a.checkpoint, a.questions, a.images, a.seed)
    if a.streams:
        from .interrupt_data import build_interrupt_set

        build_interrupt_set(a.dir, a.streams, seed=a.seed)
    return 0

