"""One exchange of a conversation: what was asked, what was answered, how long it took, and where its files are."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np

from .config import OUT_RATE
from .vad import SAMPLE_RATE as VAD_RATE


@dataclass
class Timings:
    """When a turn's events happened and how long its parts took, in seconds; `model` holds the model's own
    figures (omni's Stats, rates without the time the answer waited; see model_timings)."""
    submitted: float | None = None  # monotonic clock: when the question went to the worker
    speech_end_wall: float | None = None  # monotonic clock: when the spoken question ended
    queue_wait_s: float | None = None  # until the worker took the question up
    first_text_s: float | None = None  # from submitted
    first_audio_s: float | None = None  # from submitted
    speech_end_to_first_audio_s: float | None = None  # what a speaker waits (the end-of-turn silence included)
    throttled_s: float | None = None  # started but not computing: ahead of playback, or others' turns
    steps_per_s: float | None = None
    real_time_factor: float | None = None
    rebuffers: int = 0  # times playback ran dry while the answer was being generated
    ducks: int = 0  # times playback paused for a possible stop command
    duck_onset_to_silence_s: float | None = None
    interrupt_reason: str | None = None
    onset_to_silence_s: float | None = None  # barge-in onset -> quiet output
    decision_to_silence_s: float | None = None
    command_check_s: float | None = None  # the recogniser's time on the stop command
    command_transcript: str | None = None
    command_end_to_decision_s: float | None = None
    model: dict | None = None

    def exported(self) -> dict:
        """What the transcript keeps: the figures that were measured, not the clock readings."""
        skip = ("submitted", "speech_end_wall")
        return {k: v for k, v in asdict(self).items() if k not in skip and v is not None and v != 0}


@dataclass
class Turn:
    index: int
    kind: str  # "voice" (live or recorded), "text", "upload"
    task: str
    user_text: str = ""
    image: np.ndarray | None = None  # HxWx3 uint8 (the frame or upload used) until the turn ends; then the file
    image_source: str = ""  # "webcam" or "upload"
    assistant_text: str = ""
    assistant_audio: list[np.ndarray] = field(default_factory=list)  # int16 24 kHz chunks, until the turn ends
    text_marks: list[tuple[float, int]] = field(default_factory=list)  # (audio s generated, text length)
    status: str = "queued"  # queued, running, speaking, done, interrupted, error, cancelled
    error: str = ""
    user_transcript: str = ""
    interrupted_by: str = ""
    played_s: float = 0.0
    full_text: str = ""  # what the model produced before any truncation
    live: bool = True  # played through a live audio output as generated (False: shown as text, kept for replay)
    timings: Timings = field(default_factory=Timings)
    started_wall: float = field(default_factory=time.time)
    files: dict = field(default_factory=dict)  # name -> path inside the session folder
    user_audio_s: float = 0.0
    _user_audio: np.ndarray | None = field(default=None, repr=False)  # float32 16 kHz, until the turn ends
    _generated_s: float | None = field(default=None, repr=False)  # set when the chunks are released

    @property
    def user_audio(self) -> np.ndarray | None:
        """The question's audio (float32 16 kHz): in memory while the turn runs, read back from its file after."""
        if self._user_audio is None and "user_audio" in self.files:
            import soundfile as sf

            return sf.read(self.files["user_audio"], dtype="float32")[0]
        return self._user_audio

    @user_audio.setter
    def user_audio(self, a: np.ndarray | None) -> None:
        self._user_audio = a
        self.user_audio_s = 0.0 if a is None else len(a) / VAD_RATE

    def audio(self) -> np.ndarray:
        """The answer's speech (int16 24 kHz): what was generated while the turn runs, what was kept (its file)
        after."""
        if self._generated_s is not None:
            if "assistant_audio" not in self.files:
                return np.zeros(0, np.int16)
            import soundfile as sf

            return sf.read(self.files["assistant_audio"], dtype="int16")[0]
        return np.concatenate(self.assistant_audio) if self.assistant_audio else np.zeros(0, np.int16)

    def generated_s(self) -> float:
        if self._generated_s is not None:
            return self._generated_s
        return sum(len(a) for a in self.assistant_audio) / OUT_RATE

    def release_media(self) -> None:
        """Once the turn has ended and its files are written: drop the arrays (a 16 MP picture is 48 MB), so a long
        conversation keeps kilobytes per turn in memory; they are read back from the files when asked for."""
        if "user_audio" in self.files:
            self._user_audio = None
        if "image" in self.files:
            self.image = None
        self._generated_s = self.generated_s()
        self.assistant_audio = []



def model_timings(stats, throttled_s: float) -> dict:
    """The model's stats, with the time the answer was paused (ahead of playback, or another session's answer
    computing) taken out of the rates."""
    d = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in stats.as_dict().items()}
    busy_decode = max(1e-6, (stats.decode_s or 0.0) - throttled_s)
    d["steps_per_s"] = round(stats.steps / busy_decode, 2) if stats.steps else d.get("steps_per_s")
    d["decode_ms_per_step"] = round(1000 * busy_decode / stats.steps, 1) if stats.steps else None
    if stats.audio_seconds:
        d["real_time_factor"] = round(max(0.0, stats.total_s - throttled_s) / stats.audio_seconds, 3)
    d["throttled_s"] = round(throttled_s, 3)
    return d


def slow_speech_hint(rebuffers: int, real_time_factor: float | None, model) -> str:
    """What to tell a user whose answer paused because the model made its speech slower than it plays (a fp32
    model on a small CPU); "" when playback did not pause or the pauses had another cause (then the rate,
    measured without the time the answer waited for others, is below 1)."""
    if not rebuffers or real_time_factor is None or real_time_factor <= 1.0:
        return ""
    device = getattr(model, "device", None)
    if getattr(device, "type", device) == "cpu" and not getattr(model, "quantize", None):
        fix = "start the app with --quantize int8 (2-3x faster on a CPU; fp32 is the exact mode)"
    else:
        fix = "raise the playback prebuffer (--prebuffer; on the Gradio page also in its settings)"
    times = "once" if rebuffers == 1 else f"{rebuffers} times"
    return (f"Speech paused {times}: this machine makes speech slower than it plays (real-time factor "
            f"{real_time_factor:.2f}). For speech without pauses, {fix}.")


def truncate_text(turn: Turn, played_s: float) -> str:
    """The part of the answer text that belongs to the audio actually played.

    Text runs ahead of speech in Mini-Omni's parallel decoding; each text delta is stamped with how much
    audio existed when it arrived, and the text whose stamp is within what was played is kept.
    """
    if not turn.text_marks:
        return turn.assistant_text
    keep = 0
    for audio_s, length in turn.text_marks:
        if audio_s <= played_s + 1e-6:
            keep = length
    if keep == 0 and played_s > 0:
        keep = turn.text_marks[0][1]
    return turn.assistant_text[:keep].rstrip() + ("…" if keep < len(turn.assistant_text) else "")
