"""The engine's settings and limits: one `EngineConfig` (a session gets its own copy it may change), the rates."""

from __future__ import annotations

from dataclasses import dataclass, field

from .interrupt import DEFAULT_PHRASES, parse_phrases
from .vad import VADConfig

OUT_RATE = 24000  # SNAC output
POLICIES = ("command", "any", "off", "model")  # model: the checkpoint's own irq signal (omni/listen.py)
TEXT_TASKS = {"speech": "T1A2", "text": "T1T2"}
MAX_TEXT_CHARS = 2000
# Mini-Omni2 has one image task, IMAGE_A1A2: a picture with a spoken question (no typed question with a picture)
PICTURE_NEEDS_VOICE = ("The model answers about a picture only when the question is spoken: ask out loud with the "
                       "webcam on, or upload a recorded question (audio) together with the picture.")
MODEL_POLICY_MISSING = ("Barge-in policy 'model' needs a checkpoint trained for it (`python -m omni train --stage "
                        "irq`); this one has no stop signal, so speech does not interrupt the answer (the stop "
                        "button does; policy 'command' hears \"stop omni\").")


def policy_warning(policy: str, model) -> str | None:
    """What to tell the user when barge-in policy 'model' meets a checkpoint without the stop signal, else None."""
    return MODEL_POLICY_MISSING if policy == "model" and not getattr(model, "has_interrupt", False) else None


MAX_TURNS_KEPT = 200  # older turns are dropped from memory (and from the export) to bound a session


@dataclass
class EngineConfig:
    vad: VADConfig = field(default_factory=VADConfig)
    policy: str = "command"  # command: only stop phrases interrupt; any: any speech; off: half-duplex; model: irq
    phrases: tuple[str, ...] = DEFAULT_PHRASES
    duck_on_speech: bool = True  # pause playback at speech onset, resume if it was not a command
    echo_guard_s: float = 0.3  # onsets this soon after the assistant starts playing are ignored (echo)
    command_pause_s: float = 0.128  # a pause this long after barge-in speech triggers the command check
    command_max_s: float = 2.5  # barge-in speech longer than this is checked once and then is not a command
    spoken_answers: bool = True  # a spoken turn is answered with speech (A1A2); False: text only (A1T2)
    multi_turn: bool = False  # the official weights are single-turn: history in the prompt is opt-in
    history_turns: int = 3
    camera_max_age_s: float = 5.0  # an older webcam frame means the camera is off
    max_new_tokens: int = 512
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    stride: int | None = None  # frames per audio chunk; None: the model's default for stream_mode
    stream_mode: str = "smooth"
    playback_lead_s: float = 0.04  # audio handed to the transport ahead of real time
    # speech queued before playback starts while the answer is still being generated: absorbs the uneven pace
    # of the first chunks of a model near real time (e.g. int8 on 2 cores); doubled after each underrun
    prebuffer_s: float = 0.3
    max_ahead_s: float = 3.0  # generation pauses when this much speech is waiting to be played
    # encode a spoken turn while the end-of-turn silence runs out (from EARLY_ENCODE_AFTER_S of silence on):
    # the answer then skips Whisper, up to end_silence_s - EARLY_ENCODE_AFTER_S sooner
    early_encode: bool = True
    # engine-wide (read from the Engine's config, not a session's): answers the model works on in turns at once
    # (each holds a KV cache; more wait in the queue), and browser sessions open at once (more are refused)
    max_active_answers: int = 4
    max_sessions: int = 16

    @classmethod
    def from_options(cls, o) -> "EngineConfig":
        """From the apps' command-line options (app.py and the Streamlit page take the same ones); validated."""
        return cls(vad=VADConfig(end_silence_s=o.end_silence), policy=o.policy,
                   phrases=parse_phrases(o.phrases) if o.phrases else DEFAULT_PHRASES, multi_turn=o.multi_turn,
                   max_new_tokens=o.max_new_tokens, prebuffer_s=o.prebuffer,
                   early_encode=not o.no_early_encode, max_sessions=o.max_sessions,
                   max_active_answers=o.max_answers).validate()

    def validate(self) -> "EngineConfig":
        if self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}")
        self.vad.validate()
        if not parse_phrases(self.phrases):
            raise ValueError("give at least one stop phrase")
        if not 1 <= self.max_new_tokens <= 4096:
            raise ValueError("max_new_tokens must be between 1 and 4096")
        if not 0 <= self.prebuffer_s <= 10:
            raise ValueError("prebuffer must be between 0 and 10 seconds")
        if self.max_active_answers < 1 or self.max_sessions < 1:
            raise ValueError("max_active_answers and max_sessions must be at least 1")
        return self


EARLY_ENCODE_AFTER_S = 0.2  # silence after which a spoken turn is encoded ahead of its end (see Session._encode_early)
