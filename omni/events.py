"""What `Omni.stream` yields: text deltas, PCM chunks and one final event with statistics."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SAMPLE_RATE = 24000  # SNAC 24 kHz output


@dataclass
class TextDelta:
    """New answer text since the previous TextDelta."""

    text: str


@dataclass
class AudioChunk:
    """Mono int16 PCM at `sample_rate` (24 kHz), ready to play."""

    pcm: np.ndarray
    sample_rate: int = SAMPLE_RATE

    @property
    def seconds(self) -> float:
        return len(self.pcm) / self.sample_rate


@dataclass
class Stats:
    task: str
    prompt_length: int
    steps: int = 0  # forward passes after the prefill's sampled token (decode steps)
    prefill_s: float = 0.0  # encoders + prompt forward
    decode_s: float = 0.0
    time_to_first_audio_s: float | None = None  # from the call to the first AudioChunk
    time_to_first_text_s: float | None = None
    audio_seconds: float = 0.0
    total_s: float = 0.0
    cancelled: bool = False
    stop_reason: str = ""  # "eoa", "eot", "budget", "cancelled"
    peak_rss_mb: float | None = None  # the process's peak resident memory so far (MiB)
    gpu_peak_mem_mb: float | None = None  # peak CUDA memory allocated by PyTorch (MiB), on a GPU

    @property
    def steps_per_s(self) -> float:
        return self.steps / self.decode_s if self.decode_s > 0 else 0.0

    @property
    def real_time_factor(self) -> float | None:
        """Wall time spent generating per second of speech produced (< 1 means faster than real time)."""
        return self.total_s / self.audio_seconds if self.audio_seconds > 0 else None

    @property
    def decode_ms_per_step(self) -> float | None:
        return 1000 * self.decode_s / self.steps if self.steps else None

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d["steps_per_s"] = self.steps_per_s
        d["decode_ms_per_step"] = self.decode_ms_per_step
        d["real_time_factor"] = self.real_time_factor
        return d


@dataclass
class Result:
    """Everything one request produced (also the payload of the final `Finished` event)."""

    task: str
    prompt_length: int
    text_ids: list[int]  # see omni.decoding for the exact CLI contract
    audio_ids: list[list[int]]  # 7 lists of local ids, [] for text-only tasks
    text: str
    audio: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int16))  # int16 24 kHz, whole answer
    stats: Stats | None = None


@dataclass
class Finished:
    result: Result

    @property
    def stats(self) -> Stats:
        return self.result.stats
