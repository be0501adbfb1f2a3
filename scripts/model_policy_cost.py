"""What barge-in policy `model` costs: the checkpoint's interruption listener (omni/listen.py) hears the user while
an answer is decoded, in the same process, as in the app (webui/model_listener.py: a thread of its own). Prints the
decode speed of a spoken answer alone and with the listener fed speech at real-time pace, the listener's cost per
85 ms frame, and how far it falls behind. Asserts nothing.

    python scripts/model_policy_cost.py                                     # tiny random checkpoint
    python scripts/model_policy_cost.py --checkpoint /tmp/full --quantize int8   # official size (random)

A checkpoint without the irq tokens is given them in a temporary copy of its model_config.yaml (the weights are
untouched: a random or untrained head costs the same as a trained one).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FRAME = 2048  # samples of one SNAC frame at 24 kHz (85.3 ms)


def with_irq_tokens(ckpt: Path) -> Path:
    """`ckpt` itself if it declares irq/n-irq, else a temporary copy (links) whose model_config.yaml does, as
    `omni train --stage irq` declares them."""
    from omni.config import ModelConfig
    from omni.listen import interrupt_tokens
    from omni.train.interrupt import with_status_tokens, write_token_declaration

    cfg = ModelConfig.from_file(ckpt / "model_config.yaml")
    if interrupt_tokens(cfg) is not None:
        return ckpt
    out = Path(tempfile.mkdtemp(prefix="irq-cost-")) / "ckpt"
    out.mkdir()
    for f in ckpt.iterdir():
        if f.name != "model_config.yaml":
            (out / f.name).symlink_to(f.resolve())
    shutil.copy(ckpt / "model_config.yaml", out / "model_config.yaml")
    write_token_declaration(out, with_status_tokens(cfg))
    return out


def answer(model, tokens: int) -> dict:
    """A typed question answered in speech (T1A2) for exactly `tokens` steps: steps/s and first audio."""
    from dataclasses import replace

    from omni.bench import TIMING
    from omni.events import Finished

    opts = replace(TIMING, max_new_tokens=tokens)
    for ev in model.stream("T1A2", text="Tell me a long story about the sea.", options=opts):
        if isinstance(ev, Finished):
            st = ev.result.stats
            return {"steps_per_s": st.steps / st.decode_s, "first_audio_s": st.time_to_first_audio_s,
                    "rtf": st.audio_seconds / st.total_s}
    raise RuntimeError("no Finished event")


class RealTimeUser:
    """Feeds a listener speech-like audio at real-time pace, 85 ms at a time, on its own thread (as the app's
    AnswerListener is fed from the microphone); keeps each call's duration."""

    def __init__(self, listener, audio: np.ndarray):
        self.listener, self.audio = listener, audio
        self.calls: list[float] = []
        self.frames = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self.t0 = t0 = time.monotonic()
        k = 0
        while not self.stop.is_set():
            due = t0 + k * FRAME / 24000
            self.stop.wait(max(0.0, due - time.monotonic()))
            chunk = self.audio[(k * FRAME) % len(self.audio):][:FRAME]
            if len(chunk) < FRAME:
                chunk = np.pad(chunk, (0, FRAME - len(chunk)))
            t = time.monotonic()
            self.frames += len(self.listener.add(chunk))
            self.calls.append(time.monotonic() - t)
            k += 1
        self.lag = max(0.0, time.monotonic() - t0 - self.frames * FRAME / 24000)

    def lag_s(self) -> float:
        """Audio said but not yet heard at the end (what a stop command waits for, beyond the model's own delay):
        a listener slower than real time falls further behind the longer the answer."""
        return self.lag


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default="tiny")
    p.add_argument("--quantize", default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--tokens", type=int, default=120, help="decode steps per answer")
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()

    from omni.bench import spoken_question
    from omni.inference import load_model
    from omni.random_checkpoint import make_endless_tiny_checkpoint

    ckpt = Path(a.checkpoint) if a.checkpoint != "tiny" else \
        make_endless_tiny_checkpoint(Path(tempfile.mkdtemp(prefix="irq-cost-")) / "tiny")
    model = load_model(with_irq_tokens(ckpt), device=a.device, quantize=a.quantize)
    _, speech = spoken_question(4.0, 24000)
    answer(model, 8)  # warm-up

    # the listener alone: SNAC encode + one LM step per frame (after a warm-up listener: first calls build kernels)
    model.interrupt_listener().add(speech[:FRAME * 24])
    lis = model.interrupt_listener()
    lis.add(speech[:FRAME * 6])
    t, n = time.monotonic(), 0
    for k in range(6, 36):
        n += len(lis.add(speech[FRAME * k:FRAME * (k + 1)]))
    per_frame = (time.monotonic() - t) / n

    alone = [answer(model, a.tokens) for _ in range(a.rounds)]
    beside, lags, calls = [], [], []
    for _ in range(a.rounds):
        user = RealTimeUser(model.interrupt_listener(), speech)
        user.thread.start()
        beside.append(answer(model, a.tokens))
        user.stop.set()
        user.thread.join()
        lags.append(user.lag_s())
        calls += user.calls

    def med(rows, key):
        return statistics.median(r[key] for r in rows)

    print(f"checkpoint {a.checkpoint} ({a.quantize or 'fp32'}, {a.device}), {a.tokens} steps, median of {a.rounds}")
    print(f"listener alone: {per_frame * 1000:.1f} ms per 85 ms frame ({per_frame / (FRAME / 24000):.2f} x real time)")
    for name, rows in (("answer alone", alone), ("answer + listener", beside)):
        print(f"{name}: {med(rows, 'steps_per_s'):.1f} steps/s, first audio {med(rows, 'first_audio_s'):.2f} s, "
              f"speech {med(rows, 'rtf'):.2f} x real time")
    print(f"listener beside the answer: {statistics.median(calls) * 1000:.1f} ms per frame (median), "
          f"behind by {statistics.median(lags):.2f} s at the answer's end (median)")


if __name__ == "__main__":
    main()
