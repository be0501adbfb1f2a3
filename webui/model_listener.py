"""Barge-in policy `model`: a checkpoint's own interruption listener (omni/listen.py) run beside one answer, on a
thread of its own. Each 85 ms frame costs an LM step and a SNAC encode; on the microphone's thread, under the session's
lock, that held up playback and turn detection for as long."""

from __future__ import annotations

import queue
import threading
from typing import Callable

import numpy as np

IRQ_THRESHOLD = 0.5  # P(irq) of a frame above which the answer is stopped
IDLE_CHECK_S = 0.5  # how often a listener with no audio checks whether its answer has ended


class AnswerListener:
    """One answer's listening: microphone audio in (any rate, any chunk size); `on_irq()` is called once, from this
    thread, when a frame says irq. The thread ends then, on `stop()`, or once `answer_over()` is true."""

    def __init__(self, listener, sample_rate: int, on_irq: Callable[[], None], answer_over: Callable[[], bool]):
        import soxr

        self.listener = listener
        self.resample = soxr.ResampleStream(sample_rate, 24000, 1, dtype="float32")
        self.on_irq, self.answer_over = on_irq, answer_over
        self.audio: queue.SimpleQueue = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name="irq-listener", daemon=True)
        self.thread.start()

    def add(self, pcm: np.ndarray) -> None:
        self.audio.put(pcm)

    def stop(self) -> None:
        self.audio.put(None)

    def _pending(self, first: np.ndarray) -> list[np.ndarray] | None:
        """`first` and whatever else has arrived meanwhile (a slow machine lags behind, it does not queue up work);
        None once stopped."""
        chunks = [first]
        while True:
            try:
                pcm = self.audio.get_nowait()
            except queue.Empty:
                return chunks
            if pcm is None:
                return None
            chunks.append(pcm)

    def _run(self) -> None:
        from omni.audio import to_mono_float32

        while True:
            try:
                pcm = self.audio.get(timeout=IDLE_CHECK_S)
            except queue.Empty:
                if self.answer_over():
                    return
                continue
            chunks = None if pcm is None else self._pending(pcm)
            if chunks is None:
                return
            samples = np.concatenate([self.resample.resample_chunk(to_mono_float32(c)) for c in chunks])
            if any(p > IRQ_THRESHOLD for p in self.listener.add(samples)):
                self.on_irq()
                return
