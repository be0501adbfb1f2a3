"""Streaming turn detection with Silero VAD (the weights ship inside the `silero-vad` wheel).

Audio of any sample rate goes in, 16 kHz frames of 512 samples (32 ms) are scored, and a small state
machine turns the scores into three decisions that real assistants keep apart:
speech onset (fast: used for barge-in), end of turn (slower: silence after speech), and the cut
utterance itself (with pre-roll so the first syllable is not lost).
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

import numpy as np

from omni.audio import to_mono_float32

SAMPLE_RATE = 16000
FRAME = 512  # Silero's window at 16 kHz
FRAME_S = FRAME / SAMPLE_RATE

_model_lock = threading.Lock()


@dataclass
class VADConfig:
    threshold: float = 0.5  # speech probability that counts as speech
    neg_threshold: float | None = None  # below this counts as silence; default threshold - 0.15
    onset_s: float = 0.096  # speech needed before an onset is declared (3 frames)
    end_silence_s: float = 0.6  # silence after speech that ends the user's turn
    pre_roll_s: float = 0.3  # audio kept from before the onset
    tail_s: float = 0.1  # silence kept after the last speech frame
    min_turn_s: float = 0.25  # utterances with less speech than this are dropped (clicks, coughs)
    max_turn_s: float = 30.0  # a monologue is cut here so it still gets an answer

    def validate(self) -> "VADConfig":
        if not 0.05 <= self.threshold <= 0.95:
            raise ValueError("VAD threshold must be between 0.05 and 0.95")
        for name in ("onset_s", "end_silence_s", "pre_roll_s", "tail_s", "min_turn_s"):
            if not 0.0 <= getattr(self, name) <= 5.0:
                raise ValueError(f"{name} must be between 0 and 5 seconds")
        if not 1.0 <= self.max_turn_s <= 120.0:
            raise ValueError("max_turn_s must be between 1 and 120 seconds")
        return self

    @property
    def off_threshold(self) -> float:
        return self.neg_threshold if self.neg_threshold is not None else max(0.01, self.threshold - 0.15)


@dataclass
class SpeechStarted:
    t: float  # audio-clock time of the first speech frame (s since the detector started)


@dataclass
class TurnEnded:
    t_start: float  # first speech frame
    t_end: float  # last speech frame end
    audio: np.ndarray  # float32 16 kHz mono: pre-roll + speech + tail
    speech_s: float  # frames scored as speech


@dataclass
class SpeechDropped:
    t_start: float
    t_end: float
    speech_s: float


def load_silero():
    """A fresh Silero model (each detector needs its own: the model keeps RNN state between calls).

    The ONNX build runs on one onnxruntime thread of its own, so the VAD keeps real time while the model
    worker saturates torch's thread pool; the TorchScript build is the fallback.
    """
    import torch

    with _model_lock:
        # importing silero_vad runs torch.set_num_threads(1) for the whole process: the assistant's model would
        # then decode on one core (2-core CPU, fp32: 90 -> 155 ms per step, measured); keep what was set
        threads = torch.get_num_threads()
        try:
            from silero_vad import load_silero_vad

            try:
                import onnxruntime  # noqa: F401

                return load_silero_vad(onnx=True)
            except ImportError:
                return load_silero_vad()
        finally:
            torch.set_num_threads(threads)


to_float32 = to_mono_float32  # one conversion for files, uploads and WebRTC frames


class Resampler:
    """Streaming resampler to 16 kHz (keeps filter state across chunks, so no clicks at edges)."""

    def __init__(self, rate_in: int):
        import soxr

        self.rate_in = rate_in
        self._stream = None if rate_in == SAMPLE_RATE else soxr.ResampleStream(rate_in, SAMPLE_RATE, 1, dtype="float32")

    def __call__(self, a: np.ndarray) -> np.ndarray:
        if self._stream is None:
            return a
        return self._stream.resample_chunk(a)


def resample(a: np.ndarray, rate_in: int, rate_out: int = SAMPLE_RATE) -> np.ndarray:
    if rate_in == rate_out:
        return a.astype(np.float32, copy=False)
    import soxr

    return soxr.resample(a.astype(np.float32, copy=False), rate_in, rate_out).astype(np.float32)


class TurnDetector:
    """Feed audio with `push`; get `SpeechStarted`, `TurnEnded` and `SpeechDropped` events back.

    Times are on the audio clock (seconds of audio consumed), so tests on synthetic timelines are exact
    and do not depend on how fast the machine is.
    """

    def __init__(self, config: VADConfig | None = None, model=None):
        self.config = (config or VADConfig()).validate()
        self.model = model if model is not None else load_silero()
        self.reset()

    def reset(self) -> None:
        self.model.reset_states()
        self._resampler: Resampler | None = None
        self._pending = np.zeros(0, np.float32)
        self._frames = 0  # frames scored so far
        pre = max(1, int(round(self.config.pre_roll_s / FRAME_S)))
        self._pre_roll: deque[np.ndarray] = deque(maxlen=pre)
        self._run = 0  # consecutive speech frames while not yet in speech
        self._run_start = 0.0
        self._candidate: list[np.ndarray] = []
        self._pre_frames = 0
        self.in_speech = False
        self.speech_start = 0.0
        self.last_speech_end = 0.0
        self.speech_s = 0.0
        self._utterance: list[np.ndarray] = []
        self._silence_frames = 0
        self.last_prob = 0.0

    @property
    def time(self) -> float:
        return self._frames * FRAME_S

    @property
    def trailing_silence_s(self) -> float:
        return self._silence_frames * FRAME_S if self.in_speech else 0.0

    def current_audio(self) -> np.ndarray:
        """The utterance so far (pre-roll included) while in speech; empty otherwise."""
        if not self.in_speech or not self._utterance:
            return np.zeros(0, np.float32)
        return np.concatenate(self._utterance)

    def push(self, sample_rate: int, pcm: np.ndarray) -> list:
        a = to_float32(pcm).reshape(-1)
        if self._resampler is None or self._resampler.rate_in != sample_rate:
            self._resampler = Resampler(sample_rate)
        a = self._resampler(a)
        buf = np.concatenate([self._pending, a]) if len(self._pending) else a
        events: list = []
        n = len(buf) // FRAME
        for i in range(n):
            events.extend(self._step(buf[i * FRAME : (i + 1) * FRAME]))
        self._pending = buf[n * FRAME :].copy()
        return events

    def flush(self) -> list:
        """End of input: close an utterance that is still open."""
        if self.in_speech:
            return self._close()
        return []

    def _step(self, frame: np.ndarray) -> list:
        import torch

        cfg = self.config
        with torch.inference_mode():
            out = self.model(torch.from_numpy(np.ascontiguousarray(frame)), SAMPLE_RATE)
        p = float(np.asarray(out).reshape(-1)[0]) if not isinstance(out, torch.Tensor) else float(out.reshape(-1)[0])
        self.last_prob = p
        t = self.time
        self._frames += 1
        events: list = []
        if not self.in_speech:
            if p >= cfg.threshold:
                if self._run == 0:
                    self._run_start = t
                    self._candidate = list(self._pre_roll)
                    self._pre_frames = len(self._candidate)
                self._run += 1
                self._candidate.append(frame)
                if self._run * FRAME_S >= cfg.onset_s - 1e-9:
                    self.in_speech = True
                    self.speech_start = self._run_start
                    self.last_speech_end = self.time
                    self.speech_s = self._run * FRAME_S
                    self._utterance = self._candidate
                    self._candidate = []
                    self._silence_frames = 0
                    events.append(SpeechStarted(self.speech_start))
            else:
                self._run = 0
                self._candidate = []
            self._pre_roll.append(frame)
            return events

        self._utterance.append(frame)
        if p >= cfg.off_threshold:
            self._silence_frames = 0
            self.last_speech_end = self.time
            if p >= cfg.threshold:
                self.speech_s += FRAME_S
        else:
            self._silence_frames += 1
        if self._silence_frames * FRAME_S >= cfg.end_silence_s - 1e-9:
            events.extend(self._close())
        elif self.time - self.speech_start >= cfg.max_turn_s:
            events.extend(self._close())
        return events

    def turn_audio(self) -> np.ndarray:
        """The audio the turn would have if it ended now: pre-roll + speech + a short tail, without the rest of
        the end-of-turn silence. Once `trailing_silence_s` >= tail_s it only changes if speech resumes."""
        audio = np.concatenate(self._utterance) if self._utterance else np.zeros(0, np.float32)
        keep_s = self._pre_frames * FRAME_S + (self.last_speech_end - self.speech_start) + self.config.tail_s
        return audio[: int(keep_s * SAMPLE_RATE)]

    def _close(self) -> list:
        cfg = self.config
        audio = self.turn_audio()
        start, end, speech_s = self.speech_start, self.last_speech_end, self.speech_s
        self.in_speech = False
        self._utterance = []
        self._silence_frames = 0
        self._run = 0
        self._pre_roll.clear()
        if speech_s < cfg.min_turn_s:
            return [SpeechDropped(start, end, speech_s)]
        return [TurnEnded(start, end, audio, speech_s)]
