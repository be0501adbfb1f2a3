"""One training stage: load, freeze, encode the data, AdamW with a per-part warm-up + cosine schedule, gradient
accumulation, a JSONL loss log and PNG plot, checkpoints every N steps, and `--resume` to the same losses."""

from __future__ import annotations

import json
import math
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from ..checkpoint import check_files
from ..device import peak_rss_mb, resolve_device
from ..errors import OmniInputError
from ..listen import interrupt_tokens
from ..loading import read_parts
from .config import TrainConfig
from .data import Encoder, stage_examples
from .forward import batch_loss
from .interrupt import declare_tokens, evaluate, write_token_declaration
from .manifest import read_manifest
from .output import copy_frozen_files, load_state, save_state, save_weights
from .plot import plot_losses
from .stages import STAGES, Stage, describe, select_trainable


def lr_factor(step: int, cfg: TrainConfig, end_ratio: float) -> float:
    """Linear warm-up to 1, then cosine down to end_ratio at the last step."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    span = max(cfg.steps - cfg.warmup_steps - 1, 1)
    progress = min((step - cfg.warmup_steps) / span, 1.0)
    return end_ratio + (1 - end_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def peak_lrs(stage: Stage, cfg: TrainConfig) -> dict[str, tuple[float, float]]:
    """part -> (peak, end ratio), the stage's defaults unless the config says otherwise."""
    out = {}
    for part, (peak, end) in stage.lr.items():
        given = cfg.lr_adapters if part == "adapters" else cfg.lr_llm
        out[part] = (given or peak, cfg.end_lr_ratio if cfg.end_lr_ratio is not None else end / peak)
    return out


def example_index(i: int, n: int, seed: int) -> int:
    """The i-th example drawn: epochs of seeded permutations, so any step's batch is known without replaying."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100003 + i // n))
    return int(perm[i % n])


class StageRun:
    def __init__(self, cfg: TrainConfig, manifest: Path, init: Path, out: Path, resume: bool = False,
                 snac_dir: Path | None = None, say=print, eval_manifest: Path | None = None):
        cfg.validate()
        self.cfg, self.out, self.say, self.stage = cfg, Path(out), say, STAGES[cfg.stage]
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        self.samples = read_manifest(manifest)  # checked before anything heavy loads
        self.state = load_state(self.out) if resume else None
        if self.state is not None and self.state["stage"] != cfg.stage:
            raise OmniInputError(f"--resume: {self.out} holds stage {self.state['stage']}, not stage {cfg.stage}")
        source = self.out if resume else Path(init)
        check_files(source, snac_dir if not resume else None)
        self.device = resolve_device(cfg.device)
        say(f"stage {self.stage.name} — {self.stage.what}")
        parts = read_parts(source, snac_dir if (snac_dir and not resume) else source / "snac_24khz", lambda m: None)
        if not resume:
            copy_frozen_files(Path(init), self.out, snac_dir)
        self.status_tokens = None
        if self.stage.answers == "status":
            declare_tokens(parts)  # before the examples: their labels are these tokens
            self.status_tokens = interrupt_tokens(parts.cfg)
        self.lm = parts.lm.to(self.device)
        for frozen in (parts.whisper, parts.clip, parts.snac):  # the encoders run once per sample, there too
            frozen.to(self.device)
        self.groups = select_trainable(self.lm, self.stage)
        for line in describe(self.lm, self.groups):
            say(line)
        encoder = Encoder(parts)
        self.examples = stage_examples(encoder, self.samples, self.stage, say)
        self.eval_examples = stage_examples(encoder, read_manifest(eval_manifest), self.stage, say) \
            if eval_manifest else None
        self.lrs = peak_lrs(self.stage, cfg)
        self.optimizer, self.start = self._optimizer()

    def _optimizer(self) -> tuple[torch.optim.Optimizer, int]:
        """AdamW with one group per trained part, and the step to start at (the saved state's with --resume)."""
        optimizer = torch.optim.AdamW(
            [{"params": ps, "lr": self.lrs[part][0], "part": part} for part, ps in self.groups.items()],
            weight_decay=self.cfg.weight_decay)
        if self.state is None:
            return optimizer, 0
        optimizer.load_state_dict(self.state["optimizer"])
        torch.set_rng_state(self.state["torch_rng"])
        self.say(f"resuming at step {self.state['step']}")
        return optimizer, self.state["step"]

    @property
    def log_path(self) -> Path:
        return self.out / f"loss_stage{self.stage.name}.jsonl"

    def step(self, step: int) -> dict:
        cfg = self.cfg
        for g in self.optimizer.param_groups:
            peak, end = self.lrs[g["part"]]
            g["lr"] = peak * lr_factor(step, cfg, end)
        self.optimizer.zero_grad(set_to_none=True)
        total, parts = 0.0, {}
        per_step = cfg.batch_size * cfg.grad_accum
        autocast = torch.autocast(self.device.type, torch.bfloat16) if cfg.bf16 else nullcontext()
        for micro in range(cfg.grad_accum):
            first = step * per_step + micro * cfg.batch_size
            batch = [self.examples[example_index(first + b, len(self.examples), cfg.seed)]
                     for b in range(cfg.batch_size)]
            with autocast:
                loss, pieces = batch_loss(self.lm, [to_device(ex, self.device) for ex in batch],
                                          cfg.grad_checkpointing, self.status_tokens)
            (loss / cfg.grad_accum).backward()
            total += float(loss.detach()) / cfg.grad_accum
            for k, v in pieces.items():
                parts[k] = parts.get(k, 0.0) + v / cfg.grad_accum
        params = [p for ps in self.groups.values() for p in ps]
        norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip) if cfg.grad_clip > 0 else None
        self.optimizer.step()
        return {"step": step + 1, "loss": total, **parts,
                **{f"lr_{g['part']}": g["lr"] for g in self.optimizer.param_groups},
                **({"grad_norm": float(norm)} if norm is not None else {})}

    def run(self) -> dict:
        from tqdm import tqdm

        cfg = self.cfg
        records = self._kept_log()
        t0 = time.perf_counter()
        bar = tqdm(range(self.start, cfg.steps), desc=f"stage {self.stage.name}", unit="step", dynamic_ncols=True)
        with open(self.log_path, "a") as log:
            for step in bar:
                rec = self.step(step)
                records.append(rec)
                log.write(json.dumps(rec) + "\n")
                log.flush()
                bar.set_postfix(loss=f"{rec['loss']:.4f}")
                if (cfg.save_every and rec["step"] % cfg.save_every == 0) or rec["step"] == cfg.steps:
                    self.save(rec["step"])
        ran = cfg.steps - self.start
        s_per_step = (time.perf_counter() - t0) / ran if ran else 0.0
        plot_losses([r["step"] for r in records], [r["loss"] for r in records],
                    self.out / f"loss_stage{self.stage.name}.png", f"stage {self.stage.name} training loss")
        memory = memory_figure(self.device)
        self.say(f"stage {self.stage.name}: {ran} steps, {s_per_step:.3f} s/step, {memory}")
        summary = {"first_loss": records[0]["loss"] if records else None,
                   "last_loss": records[-1]["loss"] if records else None, "steps": len(records),
                   "s_per_step": round(s_per_step, 4), "memory": memory}
        if self.stage.answers == "status":
            measured = evaluate(self.lm, self.eval_examples or self.examples)
            measured["held_out"] = self.eval_examples is not None
            self.say(f"interruption on {'held-out' if measured['held_out'] else 'training'} streams: {measured}")
            summary.update(measured)
        return summary

    def _kept_log(self) -> list[dict]:
        """The log's records up to the resumed step (later ones were never checkpointed); the file is rewritten."""
        records = []
        if self.start and self.log_path.is_file():
            records = [json.loads(line) for line in self.log_path.read_text().splitlines() if line.strip()]
            records = [r for r in records if r["step"] <= self.start]
        self.log_path.write_text("".join(json.dumps(r) + "\n" for r in records))
        return records

    def save(self, step: int) -> None:
        save_weights(self.lm, self.out)
        if self.stage.answers == "status":
            write_token_declaration(self.out, self.lm.cfg)
        save_state(self.out, step, self.optimizer, self.cfg.to_dict(), self.stage.name)


def to_device(ex, device):
    if device.type == "cpu":
        return ex
    from dataclasses import replace

    move = lambda t: None if t is None else t.to(device)
    return replace(ex, ids=move(ex.ids), text_targets=move(ex.text_targets), audio_targets=move(ex.audio_targets),
                   audio_features=move(ex.audio_features), image_features=move(ex.image_features))


def memory_figure(device) -> str:
    if device.type == "cuda":
        return f"peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB"
    return f"peak RSS {peak_rss_mb():.0f} MiB"


def write_summary(out: Path, stage: str, entry: dict) -> None:
    """DIR/train_summary.json: {"stages": {stage: {...}}}, merged with what earlier stages wrote."""
    path = Path(out) / "train_summary.json"
    summary = json.loads(path.read_text()) if path.is_file() else {"stages": {}}
    summary["stages"][stage] = entry
    path.write_text(json.dumps(summary, indent=2))
