"""The decode step as one replayed CUDA graph (GPU speed mode): ~500 kernel launches a step become one.

A 0.5B model decoding 2 rows is launch-bound on a GPU: each of its ~20 ops per layer is a few microseconds of
work behind a few microseconds of launch. `StaticStepper` runs the step with static shapes — a zeroed KV cache of
the whole context, the position as a device tensor, attention over every slot under a mask — so that
`GraphStepper` can capture it once and replay it for every position. The prefill stays eager and writes into the
same cache. `StaticStepper` also runs on a CPU, where the tests check that it decodes the same tokens as the eager
loop.

A captured graph has its cache baked in, so a request holds its stepper from prefill to its last step: requests
decoding at once (the app interleaves up to 4) each take their own from a `StepperPool`, and one that finds the
pool empty decodes eagerly with a cache of its own.
"""

from __future__ import annotations

import threading

import torch

from .model import OmniLM

DECODE_SLOTS = 4  # steppers per batch size: as many requests as the app's model worker keeps started at once


class StaticStepper:
    """Decode steps with static shapes over a KV cache of the whole context (`block_size` positions). Used as a
    context manager by a decode loop; leaving it gives the stepper back to its pool."""

    def __init__(self, lm: OmniLM, batch: int):
        p = lm.transformer.ln_f.weight
        self.lm = lm
        self.batch = batch
        self.pool: StepperPool | None = None
        self.cache = lm.new_cache(batch, lm.cfg.block_size, zeroed=True)
        self.ids = torch.zeros(batch, 8, dtype=torch.long, device=p.device)
        self.pos = torch.zeros(1, dtype=torch.long, device=p.device)
        self.slots = torch.arange(self.cache.capacity, device=p.device)
        self.visible = torch.zeros(1, 1, 1, self.cache.capacity, dtype=torch.bool, device=p.device)

    def __enter__(self) -> "StaticStepper":
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.give(self)

    def _forward(self) -> torch.Tensor:
        torch.le(self.slots, self.pos, out=self.visible.view(-1))  # slots 0..pos: the prompt and the answer so far
        return self.lm.forward_static(self.lm.embed_step(self.ids), self.cache, self.pos, self.visible)[:, -1]

    def step(self, ids: torch.Tensor, pos: int) -> torch.Tensor:
        """ids [B, 8] fed at position pos -> final hidden state [B, D]."""
        if pos >= self.cache.capacity:
            raise ValueError(f"position {pos} is past the KV cache ({self.cache.capacity})")
        self.ids.copy_(ids)
        self.pos.fill_(pos)
        return self._run()

    def _run(self) -> torch.Tensor:
        return self._forward()


class GraphStepper(StaticStepper):
    """`StaticStepper` captured as a CUDA graph once (at load), replayed for each step; the returned hidden state
    is the graph's output buffer, valid until the next step."""

    def __init__(self, lm: OmniLM, batch: int, warmup: int = 3):
        super().__init__(lm, batch)
        side = torch.cuda.Stream(self.ids.device)
        side.wait_stream(torch.cuda.current_stream(self.ids.device))
        with torch.inference_mode(), torch.cuda.stream(side):  # the recipe: first runs off the capture stream
            for _ in range(warmup):
                self._forward()
        torch.cuda.current_stream(self.ids.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(self.graph):
            self.hidden = self._forward()
        for k, v in zip(self.cache.k, self.cache.v):  # the warm-up wrote slot 0: back to the zeroed state
            k.zero_()
            v.zero_()

    def _run(self) -> torch.Tensor:
        self.graph.replay()
        return self.hidden


class StepperPool:
    """Static steppers by batch size, each lent to one request at a time (thread-safe)."""

    def __init__(self, steppers: list[StaticStepper]):
        self._free: dict[int, list[StaticStepper]] = {}
        self._lock = threading.Lock()
        for s in steppers:
            s.pool = self
            self._free.setdefault(s.batch, []).append(s)

    def take(self, batch: int) -> StaticStepper | None:
        """A free stepper for `batch` rows, or None (none of that size, or all lent)."""
        with self._lock:
            free = self._free.get(batch)
            return free.pop() if free else None

    def give(self, stepper: StaticStepper) -> None:
        with self._lock:
            self._free[stepper.batch].append(stepper)

    def free(self, batch: int) -> int:
        with self._lock:
            return len(self._free.get(batch, ()))


def static_steppers(lm: OmniLM, batches=(1, 2), slots: int = DECODE_SLOTS, captured: bool = False) -> StepperPool:
    """`slots` steppers per batch size the decode loops use (2: A1A2/IMAGE_A1A2; 1: the other tasks), captured as
    CUDA graphs with `captured`."""
    make = GraphStepper if captured else StaticStepper
    return StepperPool([make(lm, b) for b in batches for _ in range(slots)])


def capture_decode_graphs(lm: OmniLM, batches=(1, 2), slots: int = DECODE_SLOTS) -> StepperPool:
    return static_steppers(lm, batches, slots, captured=True)
