"""Figures for docs/scale-out.md: Ray's start-up and memory, first-audio time through Ray Serve's proxy vs the
single-process app, and first audio as conversations share one replica. Prints numbers; asserts nothing.

    python scripts/serve_figures.py                       # the tiny checkpoint, on this machine's CPU
    python scripts/serve_figures.py --checkpoint checkpoints --device cuda
    python scripts/serve_figures.py --checkpoint /tmp/full --quantize int8   # official size (random), CPU
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree_rss_mb(pid: int) -> float:
    import psutil

    p = psutil.Process(pid)
    procs = [p, *p.children(recursive=True)]
    return sum(q.memory_info().rss for q in procs if q.is_running()) / 2**20


async def first_audio(url: str) -> float:
    """Seconds from response.create to the first speech of a typed question's answer."""
    from openai import AsyncOpenAI

    client = AsyncOpenAI(api_key="none", websocket_base_url=url)
    async with client.realtime.connect(model="mini-omni2", websocket_connection_options={"proxy": None},
                                       max_retries=0) as conn:
        await conn.send({"type": "conversation.item.create", "item": {"type": "message", "role": "user",
                         "content": [{"type": "input_text", "text": "what is the capital of france"}]}})
        t0 = time.monotonic()
        await conn.send({"type": "response.create"})
        first = None
        async for ev in conn:
            if ev.type == "response.output_audio.delta" and first is None:
                first = time.monotonic() - t0
            if ev.type == "response.done":
                return first if first is not None else float("nan")
            if ev.type == "error" and ev.error.type != "warning":
                raise RuntimeError(ev.error.message)
    return float("nan")


def median_first_audio(url: str, concurrent: int, rounds: int) -> float:
    async def one_round():
        return await asyncio.gather(*(first_audio(url) for _ in range(concurrent)))

    times = [t for _ in range(rounds) for t in asyncio.run(one_round())]
    return statistics.median(times)


def wait_port(port: int, timeout: float = 300) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise SystemExit(f"nothing listens on {port} after {timeout} s")


def single_process(model_args: list[str], rounds: int) -> dict:
    port = free_port()
    cmd = [sys.executable, str(ROOT / "app.py"), "--ui", "none", "--api", "--port", str(port), *model_args]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        url = f"ws://127.0.0.1:{port}/v1"
        median_first_audio(url, 1, 1)  # the app loads in the background: the first answer waits for it
        return {"first_audio_s": median_first_audio(url, 1, rounds), "rss_mb": tree_rss_mb(proc.pid)}
    finally:
        proc.terminate()
        proc.wait(30)


def on_ray(model_args: list[str], rounds: int, max_sessions: int) -> dict:
    import ray

    from webui.serve_options import ServePlan
    from webui.serve_page import replica_rows
    from webui.serve_ray import deploy, shutdown, start_ray

    out = {}
    t0 = time.monotonic()
    start_ray(None)
    out["ray_init_s"] = time.monotonic() - t0
    time.sleep(2)
    out["ray_rss_mb"] = tree_rss_mb(os.getpid())
    port = free_port()
    try:
        t0 = time.monotonic()
        deploy(ServePlan(1, 1, 1, max_sessions, 0), model_args, "127.0.0.1", port)
        while not replica_rows():
            time.sleep(0.2)
        out["deploy_s"] = time.monotonic() - t0
        url = f"ws://127.0.0.1:{port}/v1"
        median_first_audio(url, 1, 1)
        out["rss_mb"] = tree_rss_mb(os.getpid())
        out["first_audio_s"] = median_first_audio(url, 1, rounds)
        out["by_sessions"] = {k: median_first_audio(url, k, max(1, rounds // k)) for k in range(1, max_sessions + 1)}
        out["gpus"] = ray.cluster_resources().get("GPU", 0)
    finally:
        shutdown()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default="tiny")
    p.add_argument("--device", default="auto")
    p.add_argument("--max-new-tokens", type=int, default=60)
    p.add_argument("--quantize", default=None, help="passed to the app (int8: the CPU speed mode)")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--max-sessions", type=int, default=4, help="concurrent conversations on one replica, 1..N")
    a = p.parse_args()
    if a.checkpoint == "tiny":  # random tiny weights stop at random points: the tests' variant runs to the budget
        import tempfile

        from omni.random_checkpoint import make_endless_tiny_checkpoint

        a.checkpoint = str(make_endless_tiny_checkpoint(Path(tempfile.mkdtemp(prefix="serve-figures-")) / "tiny"))
    model_args = ["--checkpoint", a.checkpoint, "--device", a.device, "--asr", "none",
                  "--max-new-tokens", str(a.max_new_tokens)] + (["--quantize", a.quantize] if a.quantize else [])
    single = single_process(model_args, a.rounds)
    print(f"single-process app: first audio {single['first_audio_s']:.3f} s (median of {a.rounds}), "
          f"RSS {single['rss_mb']:.0f} MB")
    r = on_ray(model_args, a.rounds, a.max_sessions)
    print(f"Ray: ray.init {r['ray_init_s']:.1f} s, Ray alone {r['ray_rss_mb']:.0f} MB RSS; deploy (1 model replica "
          f"+ page) {r['deploy_s']:.1f} s; all of it {r['rss_mb']:.0f} MB RSS; GPUs seen {r['gpus']:.0f}")
    print(f"through Ray Serve's proxy: first audio {r['first_audio_s']:.3f} s (median of {a.rounds})")
    for k, t in r["by_sessions"].items():
        print(f"  {k} concurrent conversation(s) on one replica: first audio {t:.3f} s (median)")


if __name__ == "__main__":
    main()
