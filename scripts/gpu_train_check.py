"""The training check for a session that is lent a GPU (issue 22's "real size"); no GPU has run it yet.

Runs every stage (1, 2, 3, irq) for a few steps on the full-size random checkpoint with bf16 autocast and gradient
checkpointing, stage 3 also in fp32 without checkpointing (what the two savers save), and prints s/step and peak GPU
memory per run; then loads the stage-3 output for a short answer on the same device. Needs no espeak-ng and no
network: the data are made here (speech-like tones, a picture, random SNAC codes). On the device machine, with the
wheels of `bash scripts/gpu_wheels.sh` carried as in scripts/gpu_check.py:

  python3 scripts/gpu_train_check.py --out $OUT [--steps 4 --batch-size 4]

`--device cpu` rehearses it (on the tiny checkpoint unless --checkpoint says otherwise), so that a session with a
GPU does not spend device time on a script that breaks. Writes OUT/train_check.json; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SUMMARY = re.compile(r"stage (\S+): (\d+) steps, ([\d.]+) s/step, (.+)")


def make_data(folder: Path, n: int = 8, seed: int = 0) -> tuple[Path, Path]:
    """A manifest of every kind of line (ASR, spoken and typed questions with speech answers, a picture) and one of
    listening streams, from generated signals."""
    import soundfile as sf
    from PIL import Image

    from omni.bench import spoken_question

    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    lines, streams = [], []
    for i in range(n):
        sr, q = spoken_question(1.5 + 0.25 * (i % 4))
        sf.write(folder / f"q{i}.wav", q, sr, subtype="PCM_16")
        codes = [[rng.randrange(4096) for _ in range(7)] for _ in range(12 + i)]
        lines += [{"audio": f"q{i}.wav", "task": "ASR", "target_text": f"question number {i}"},
                  {"audio": f"q{i}.wav", "target_text": f"answer number {i}", "target_codes": codes},
                  {"text": f"question number {i}", "target_text": f"answer number {i}", "target_codes": codes}]
        Image.fromarray(np.full((224, 224, 3), (40 * i) % 256, np.uint8)).save(folder / f"p{i}.png")
        lines.append({"audio": f"q{i}.wav", "image": f"p{i}.png", "target_text": f"picture number {i}"})
        _, s = spoken_question(3.0, 24000)
        sf.write(folder / f"s{i}.wav", 0.5 * s, 24000, subtype="PCM_16")
        streams.append({"stream": f"s{i}.wav", "command_end": 2.0 if i % 2 else None, "background": "tones"})
    (folder / "manifest.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    (folder / "streams.jsonl").write_text("".join(json.dumps(x) + "\n" for x in streams))
    return folder / "manifest.jsonl", folder / "streams.jsonl"


def train(stage: str, data: Path, init: Path, out: Path, a, savers: bool) -> dict:
    cmd = [sys.executable, "-m", "omni", "train", "--stage", stage, "--data", str(data), "--init", str(init),
           "--out", str(out), "--steps", str(a.steps), "--batch-size", str(a.batch_size), "--warmup-steps", "1",
           "--device", a.device] + (["--bf16", "--grad-checkpointing"] if savers else [])
    print("$", " ".join(cmd), flush=True)
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    found = [m.groups() for m in map(SUMMARY.search, p.stdout.splitlines() + p.stderr.splitlines()) if m]
    row = {"stage": stage, "bf16_and_checkpointing": savers, "rc": p.returncode}
    if found:
        _, steps, s_per_step, memory = found[-1]
        row.update(steps=int(steps), s_per_step=float(s_per_step), memory=memory)
    if p.returncode:
        row["error"] = (p.stderr or p.stdout)[-2000:]
    print(json.dumps(row), flush=True)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--checkpoint", default=None, help="default: /tmp/full (official size) on CUDA, tiny on CPU")
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=4)
    a = ap.parse_args()
    out = Path(a.out)
    ckpt = Path(a.checkpoint or ("/tmp/full" if a.device == "cuda" else out / "tiny"))
    if not (ckpt / "lit_model.pth").exists():
        size = ["--full-size"] if a.device == "cuda" and a.checkpoint is None or "full" in ckpt.name else []
        subprocess.run([sys.executable, "-m", "omni", "tiny", str(ckpt), *size], check=True, cwd=ROOT)
    manifest, streams = make_data(out / "data")
    report = {"device": a.device, "checkpoint": str(ckpt), "runs": []}
    if a.device == "cuda":
        import torch

        report["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none visible"
    for stage in ("1", "2", "3", "irq"):
        report["runs"].append(train(stage, streams if stage == "irq" else manifest, ckpt, out / f"stage{stage}",
                                    a, savers=True))
    report["runs"].append(train("3", manifest, ckpt, out / "stage3-fp32", a, savers=False))
    gen = subprocess.run([sys.executable, "-m", "omni", "generate", "--checkpoint", str(out / "stage3"),
                          "--device", a.device, "--task", "T1A2", "--text", "question number 1",
                          "--max-new-tokens", "16", "--tokens-json", str(out / "stage3_tokens.json")],
                         capture_output=True, text=True, cwd=ROOT)
    report["stage3_output_generates"] = gen.returncode == 0
    if gen.returncode:
        report["generate_error"] = gen.stderr[-2000:]
    (out / "train_check.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    return 0 if all(r["rc"] == 0 for r in report["runs"]) and report["stage3_output_generates"] else 1


if __name__ == "__main__":
    sys.exit(main())
