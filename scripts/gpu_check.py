"""The GPU check of issue 5, prepared for a session that is lent a GPU (the `device` tool); no GPU has run it yet.

On the device machine (its python3 has torch; the wheels it lacks come from `bash scripts/gpu_wheels.sh` here,
carried as `.whl`):

  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/*.whl && export PYTHONPATH=/tmp/site && python3 scripts/gpu_check.py --out $OUT [--steps 200]

1. writes a full-size random checkpoint (`python -m omni tiny --full-size`);
2. decodes A1A2 (batch 2) and T1T2 (batch 1) on CUDA three ways: the eager loop, the static-shape step run
   uncaptured, and its captured CUDA graph. The graph must give exactly the static step's tokens (same kernels);
   the eager loop's agreement is reported (its attention reads only the filled prefix, other kernels); two
   requests of each task interleaved must give their solo tokens (each holds a captured graph of its own);
3. runs `python -m omni bench` in bf16 with and without the graphs, and fp16 with them (JSON files in --out).

`--device cpu` rehearses the script where there is no GPU (no graphs: the "graph" run is the eager loop), so
that a session with a GPU does not spend device time on a script that breaks. `scripts/gpu_wheels.sh` makes the
wheels to carry.
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import omni  # noqa: E402
from omni.bench import spoken_question  # noqa: E402
from omni.graphs import static_steppers  # noqa: E402


def tokens(model, task, max_new_tokens, **kw):
    r = model.generate(task, options=omni.DecodingOptions(max_new_tokens=max_new_tokens, ignore_stop=True), **kw)
    return [r.text_ids, r.audio_ids]


def interleaved_equals_solo(model, cases, max_new_tokens) -> bool:
    """Two requests per task advanced in turns, as the app's worker does: each on a captured graph of its own must
    give its solo tokens (one shared graph's cache would mix them)."""
    opts = omni.DecodingOptions(max_new_tokens=max_new_tokens, ignore_stop=True)
    reqs = [(t, kw) for t, kw in cases.items() for _ in range(2)]
    streams = [model.stream(t, options=opts, **kw) for t, kw in reqs]
    got = [None] * len(streams)
    while None in got:
        for i, st in enumerate(streams):
            if got[i] is None and isinstance(ev := next(st), omni.Finished):
                got[i] = [ev.result.text_ids, ev.result.audio_ids]
    return got == [tokens(model, t, max_new_tokens, **kw) for t, kw in reqs]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--checkpoint", default="/tmp/full")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"),
                    help="cuda, or cpu to rehearse the script without a GPU")
    ap.add_argument("--max-new-tokens", type=int, default=64, help="answer length of the token comparison (>= 8)")
    a = ap.parse_args()
    if a.max_new_tokens < 8:  # speech tokens start after the 7-step delay: fewer would compare no audio
        ap.error("--max-new-tokens must be at least 8")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rehearsal = a.device == "cpu"
    if not rehearsal and not torch.cuda.is_available():
        print("no CUDA GPU visible to torch")
        return 2
    if not (Path(a.checkpoint) / "lit_model.pth").exists():
        subprocess.run([sys.executable, "-m", "omni", "tiny", a.checkpoint, "--full-size"], check=True)
    report = {"gpu": "none (CPU rehearsal)" if rehearsal else torch.cuda.get_device_name(0),
              "torch": torch.__version__}
    question = spoken_question(3.5)
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 in the token comparison
    for dtype in ("float32", "bfloat16"):
        m = omni.load_model(a.checkpoint, device=a.device, dtype=dtype)
        lm, graphs = m.lm, m.lm.static_steps
        cases = {"A1A2": {"audio": question}, "T1T2": {"text": "Tell me a story about the sea"}}
        row = {"decode_path": m.decode_path}
        for task, kw in cases.items():
            graph = tokens(m, task, a.max_new_tokens, **kw)
            lm.static_steps = static_steppers(lm, slots=1)
            static = tokens(m, task, a.max_new_tokens, **kw)
            lm.static_steps = None
            eager = tokens(m, task, a.max_new_tokens, **kw)
            lm.static_steps = graphs
            flat = lambda t: [t[0]] + t[1]  # noqa: E731
            same = sum(x == y for g, e in zip(flat(graph), flat(eager)) for x, y in zip(g, e))
            total = sum(len(g) for g in flat(graph))
            row[task] = {"graph_equals_static": graph == static, "graph_vs_eager_agreement": same / max(total, 1)}
        row["interleaved_equals_solo"] = interleaved_equals_solo(m, cases, a.max_new_tokens)
        report[dtype] = row
        del m, lm, graphs
        if not rehearsal:
            torch.cuda.empty_cache()
    print(json.dumps(report, indent=1))
    (out / "graph_check.json").write_text(json.dumps(report, indent=1))
    runs = [("bench_bf16_graph.json", ["--dtype", "bfloat16"]),
            ("bench_bf16_eager.json", ["--dtype", "bfloat16", "--no-cuda-graphs"]),
            ("bench_fp16_graph.json", ["--dtype", "float16"])]
    for name, extra in runs:
        cmd = [sys.executable, "-m", "omni", "bench", "--checkpoint", a.checkpoint, "--device", a.device,
               "--steps", str(a.steps), "--json", str(out / name), *extra]
        if rehearsal:  # the CPU only checks that the runs work: short answers, one timed request
            cmd += ["--stream-steps", "16", "--ttfa-runs", "1"]
        print("$", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=False)
    ok = all(report[d][t]["graph_equals_static"] for d in ("float32", "bfloat16") for t in ("A1A2", "T1T2")) \
        and all(report[d]["interleaved_equals_solo"] for d in ("float32", "bfloat16"))
    if rehearsal:  # no graph was captured: "graph" was the eager loop, whose bf16 kernels differ from the static step's
        print("CPU rehearsal done (eager == static step:", ok, "- not the GPU check's criterion)")
        return 0
    print("graph == static step:", ok)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
