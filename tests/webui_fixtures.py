"""Helpers for the webui tests: noise and music for timelines, a scripted model, loudness of what was played. The
speech and the real-time peer come from webui/simulate.py (the benchmark scripts use them too).

The scripted model (`ScriptedModel`) stands in for the real one only in engine-logic tests (turn-taking,
barge-in timing, queueing); the browser test runs the real model on the tiny checkpoint.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import sys

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, however pytest was started

from omni.events import AudioChunk, Finished, Result, Stats, TextDelta
# the simulated caller (speech, real-time peer) is the package's, shared with the benchmark scripts
from webui.simulate import OUT, SR, Played, run_realtime, silence, speech, timeline  # noqa: F401


def noise(s: float, level: float = 0.05, rate: int = SR, seed: int = 0) -> np.ndarray:
    """Pink-ish noise (fan, street)."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(int(s * rate)).astype(np.float32)
    b = np.convolve(w, np.ones(8) / 8, mode="same")
    return (b / (np.abs(b).max() + 1e-9) * level).astype(np.float32)


def music(s: float, level: float = 0.2, rate: int = SR) -> np.ndarray:
    """Chords with a beat: harmonic, rhythmic, not speech."""
    t = np.arange(int(s * rate)) / rate
    out = np.zeros_like(t)
    chords = [(261.6, 329.6, 392.0), (220.0, 261.6, 329.6), (174.6, 220.0, 261.6), (196.0, 246.9, 293.7)]
    for i, chord in enumerate(chords * int(s // 2 + 1)):
        seg = (t >= i * 0.5) & (t < (i + 1) * 0.5)
        env = np.exp(-3 * (t[seg] - i * 0.5))
        for f in chord:
            out[seg] += env * (np.sin(2 * np.pi * f * t[seg]) + 0.3 * np.sin(4 * np.pi * f * t[seg]))
    kick = (np.sin(2 * np.pi * 60 * t) * np.exp(-20 * (t % 0.5))) * 0.8
    out = out + kick
    return (out / np.abs(out).max() * level).astype(np.float32)


# ------------------------------------------------------------------ scripted model


@dataclass
class Call:
    task: str
    audio: object
    image: object
    text: object
    cancel: threading.Event


class ScriptedModel:
    """Speaks `answer` (espeak at 24 kHz) in 0.34 s chunks, `speed` x faster than real time; honours cancel."""

    def __init__(self, answer: str = "The capital of France is Paris, a city famous for its museums, its food, "
                 "its long history and the tall iron tower that stands beside the river.", speed: float = 2.0,
                 first_delay: float = 0.3, fail_with: Exception | None = None, text_delay: float = 0.0,
                 keep_inputs: bool = True):
        self.answer = answer
        self.speed = speed
        self.first_delay = first_delay
        self.fail_with = fail_with
        self.text_delay = text_delay  # model time per text piece of a text answer (a long answer takes a while)
        self.keep_inputs = keep_inputs  # False: calls record no audio or image (memory tests)
        self.calls: list[Call] = []
        self.cancelled = 0
        self._lock = threading.Lock()
        self.concurrent = 0  # streams started and not ended (the worker interleaves them)
        self.max_concurrent = 0
        self.computing = 0  # streams inside a step right now: never more than one
        self.max_computing = 0

    def stream(self, task, audio=None, image=None, text=None, options=None, stride=4, mode="smooth", cancel=None):
        cancel = cancel or threading.Event()
        if not self.keep_inputs:
            audio = image = None
        self.calls.append(Call(task, audio, image, text, cancel))
        with self._lock:
            self.concurrent += 1
            self.max_concurrent = max(self.max_concurrent, self.concurrent)
        try:
            steps = self._stream(task, cancel)
            while True:
                with self._lock:
                    self.computing += 1
                    self.max_computing = max(self.max_computing, self.computing)
                try:
                    ev = next(steps)
                except StopIteration:
                    return
                finally:
                    with self._lock:
                        self.computing -= 1
                yield ev
        finally:
            with self._lock:
                self.concurrent -= 1

    def _stream(self, task, cancel):
        t0 = time.monotonic()
        if self.fail_with is not None:
            raise self.fail_with
        words = self.answer.split()
        speak = task.endswith("A2")
        pcm = (speech(self.answer, OUT) * 32767 * 0.8).astype(np.int16) if speak else np.zeros(0, np.int16)
        chunk = int(0.341 * OUT)
        n_chunks = max(1, -(-len(pcm) // chunk)) if speak else len(words)
        per_word = max(1, -(-len(words) // n_chunks))
        stats = Stats(task=task, prompt_length=10)
        time.sleep(self.first_delay)
        text = ""
        for i in range(n_chunks):
            if cancel.is_set():
                break
            delta = " ".join(words[i * per_word : (i + 1) * per_word])
            if delta:
                delta = (" " if text else "") + delta
                text += delta
                yield TextDelta(delta)
            if speak:
                piece = pcm[i * chunk : (i + 1) * chunk]
                if stats.time_to_first_audio_s is None:
                    stats.time_to_first_audio_s = time.monotonic() - t0
                stats.audio_seconds += len(piece) / OUT
                yield AudioChunk(piece)
                time.sleep(len(piece) / OUT / self.speed)
            elif self.text_delay:
                time.sleep(self.text_delay)
            stats.steps += 4
        stats.cancelled = cancel.is_set()
        if stats.cancelled:
            self.cancelled += 1
        stats.stop_reason = "cancelled" if stats.cancelled else "eoa"
        stats.total_s = stats.decode_s = time.monotonic() - t0
        yield Finished(Result(task, 10, [], [], text, pcm, stats))


@dataclass
class Options:
    max_new_tokens: int = 512
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None


# ------------------------------------------------------------------ real-time transport harness


def first_loud_after(played: list[Played], t: float, level: float = 0.01) -> float | None:
    for p in played:
        if p.t >= t and p.rms > level:
            return p.t
    return None


def last_loud(played: list[Played], level: float = 0.01) -> float | None:
    loud = [p.t for p in played if p.rms > level]
    return loud[-1] if loud else None
