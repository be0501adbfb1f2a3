"""One conversation: its settings, inputs, playback, history and files. Thread-safe: the transport, the UI and
the model worker all call in. Its live side (microphone, webcam, barge-in) is in webui/listening.py and running a
turn in webui/answering.py; the model, the worker and the recogniser are shared by every session (`Shared`)."""

from __future__ import annotations

import logging
import shutil
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .answering import Answering
from .bargein import BargeIn
from .config import MAX_TEXT_CHARS, PICTURE_NEEDS_VOICE, TEXT_TASKS, EngineConfig
from .interrupt import CommandChecker, PhraseMatcher, normalize
from .listening import Listening
from .playback import NEVER, Player
from .recordings import export_zip, transcript, transcript_texts
from .turn import Turn
from .uploads import load_audio, load_image
from .vad import TurnDetector
from .worker import FreshThreadExecutor, Job, ModelWorker

log = logging.getLogger("webui")


@dataclass
class Shared:
    """What every session uses of the engine: the model (what it can do, for early encoding and the slow-speech
    hint), its worker, the stop-command checker with the threads that run it, how decoding options are made, and
    where events are reported (set later by a UI that logs them)."""
    model: Any
    worker: ModelWorker
    checker: CommandChecker | None
    asr_pool: FreshThreadExecutor
    side_pool: FreshThreadExecutor
    make_options: Callable[[EngineConfig], Any]
    event_sink: Callable[[str, dict], None] | None = None


class Session(Listening, Answering):
    """One conversation (see the module)."""


    def __init__(self, shared: Shared, config: EngineConfig, root: Path, keep_files: bool):
        self.shared = shared
        self.config = config
        self.id = uuid.uuid4().hex
        self.dir = root / self.id
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # in a named folder too, only this user reads it
        self.keep_files = keep_files  # a folder the user named keeps the files (and the transcript) at the end
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self.history: list[Turn] = []
        self.version = 0  # bumped on every visible change; UIs re-render when it moves
        self.notice = ""  # last message for the user (errors, interruptions)
        self._detector: TurnDetector | None = None
        self._turn_counter = 0
        # live assistant turn
        self._current: Turn | None = None
        self._job: Job | None = None
        self._player = Player()
        self._ducked = False
        self._ducked_at = 0.0
        self._early: Job | None = None  # Whisper on the turn as it stands, while its end-of-turn silence runs
        self._early_key: tuple[float, float] | None = None  # (speech start, last speech) it was started for
        self._flush_hooks: list[Callable[[], None]] = []
        self._transports = 0  # live audio outputs; without one, speech is kept for replay only
        self._silence_at: float | None = None
        # barge-in
        self._barge = BargeIn()  # the utterance heard over an answer, if any
        self._vetting: Turn | None = None  # a short spoken turn being checked for a stop phrase: not played yet
        self._early_check: tuple | None = None  # (key, audio digest, future): that check, begun in the silence
        self._camera: tuple[float, np.ndarray] | None = None
        self.interrupts = 0
        self.events: deque[dict] = deque(maxlen=500)  # timeline for tests and the latency panel
        self.closed = False

    # ------------------------------------------------------------ settings

    def update_config(self, **kw) -> None:
        with self._lock:
            vad_kw = {k: kw.pop(k) for k in list(kw) if hasattr(self.config.vad, k)}
            cfg = replace(self.config, **kw)
            cfg.vad = replace(self.config.vad, **vad_kw)
            cfg.validate()
            if vad_kw and self._detector is not None:
                self._detector = TurnDetector(cfg.vad, self._detector.model)
            self.config = cfg
            self._matcher = None
            self._bump()

    @property
    def matcher(self) -> PhraseMatcher:
        m = getattr(self, "_matcher", None)
        if m is None:
            m = self._matcher = PhraseMatcher(self.config.phrases)
        return m

    def send_text(self, text: str, speak: bool = True, image=None) -> Turn | None:
        """A typed question; None when it is only a stop phrase, which stops the answer if one runs and is never
        sent to the model."""
        text = (text or "").strip()
        if not text:
            raise ValueError("Type a message first.")
        if " ".join(normalize(text)) in self.config.phrases:
            self.interrupt("typed stop")
            self._event("stop_phrase_dropped", source="typed")
            return None
        if len(text) > MAX_TEXT_CHARS:
            raise ValueError(f"The message is too long ({len(text)} characters; the limit is {MAX_TEXT_CHARS}).")
        if image is not None:  # answering without it while showing it in the chat would mislead
            raise ValueError(PICTURE_NEEDS_VOICE + " To send the typed message, remove the picture.")
        return self._start_turn("text", TEXT_TASKS["speech" if speak else "text"], text=text)

    def send_upload(self, audio=None, image=None, speak: bool = True, kind: str = "upload",
                    image_source: str = "upload") -> Turn:
        """An uploaded or recorded question (audio, optionally with an image): answered like a voice turn.
        `kind`/`image_source` say where they came from for the history ("voice"/"webcam" for a recording
        and a webcam photo taken on the page)."""
        if audio is None:
            if image is not None:
                raise ValueError(PICTURE_NEEDS_VOICE)
            raise ValueError("Upload an audio file (with an optional image), or type a message.")
        img = load_image(image) if image is not None else None
        a = load_audio(audio)
        task = "IMAGE_A1A2" if img is not None else "A1A2"
        if not speak:
            task = "A1T2" if img is None else "IMAGE_A1A2"
        turn = self._start_turn(kind, task, audio=a, image=img, image_source=image_source if img is not None else "")
        if kind == "voice":  # a recorded question (e.g. Streamlit's recorder) may be a stop phrase too
            self._vet_turn(turn, turn.user_audio)
        return turn

    # ------------------------------------------------------------ playback (pulled by the transport)

    def attach_transport(self, flush: Callable[[], None] | None = None) -> None:
        """A live audio output starts pulling `next_frame`; `flush` drops what it has queued."""
        with self._lock:
            self._transports += 1
            if flush is not None:
                self._flush_hooks.append(flush)

    def detach_transport(self, flush: Callable[[], None] | None = None) -> None:
        with self._lock:
            self._transports = max(0, self._transports - 1)
            if flush is not None and flush in self._flush_hooks:
                self._flush_hooks.remove(flush)
            if self._transports == 0:
                self._player.clear()
                if self._current is not None and self._job is None and self._current.status == "speaking":
                    self._finish_turn(self._current)

    @property
    def live_audio(self) -> bool:
        return self._transports > 0

    def next_frame(self, samples: int = 480, timeout: float = 0.02) -> np.ndarray | None:
        """The next `samples` of speech (int16, 24 kHz) once it is due, or None (silence) after `timeout`; paced
        by the player (webui/playback.py), held while playback is paused for a possible stop command."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                now = time.monotonic()
                when = NEVER
                if not (self._ducked or self._vetting is not None):
                    p = self._player
                    rebuffers = p.rebuffers
                    frame, when = p.pull(samples, now, self._job is not None, self.config.playback_lead_s)
                    if frame is not None:
                        return frame
                    if p.rebuffers != rebuffers and self._current is not None:
                        self._current.timings.rebuffers = p.rebuffers
                    if not p.queued_s:
                        self._maybe_finish_playback()
                wait = min(when, deadline) - now
                if wait <= 0:
                    return None
                self._cond.wait(wait)

    def _maybe_finish_playback(self) -> None:
        t = self._current
        if t is not None and not self._player.queued_s and self._job is None and not self._ducked:
            # everything generated has been handed out; the turn ends when it has been heard
            if time.monotonic() >= self._player.heard_by or self._player.sent == 0:
                self._finish_turn(t)

    # ------------------------------------------------------------ state for UIs

    def _assistant_active(self) -> bool:
        return self._current is not None and self._current.status in ("queued", "running", "speaking")

    @property
    def assistant_active(self) -> bool:
        with self._lock:
            return self._assistant_active()

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """Block until no turn is queued, generating or playing (for tests and non-streaming UIs)."""
        end = time.monotonic() + timeout
        with self._cond:
            while self._assistant_active():
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.05))
        return True

    @property
    def current(self) -> Turn | None:
        """The turn being answered (queued, generating or playing), if any."""
        with self._lock:
            return self._current if self._assistant_active() else None

    def consistent_view(self) -> threading.RLock:
        """Hold it (`with session.consistent_view():`) to read several things as of one moment: a transport that
        pairs the due speech frames with the turn they belong to (webui/realtime_connection.py)."""
        return self._lock

    @property
    def live_turn(self) -> Turn | None:
        """The turn the session is on, in any state (`current` is only one being answered)."""
        return self._current

    @property
    def vetting_turn(self) -> Turn | None:
        """A short spoken turn still being checked for a stop phrase: not a question (nor answered) yet."""
        return self._vetting

    def queue_position(self) -> int | None:
        job = self._job
        return self.shared.worker.position(job) if job is not None else None

    def snapshot(self) -> dict:
        with self._lock:
            return {
                "version": self.version,
                "turns": list(self.history),
                "active": self._assistant_active(),
                "listening": bool(self._detector and self._detector.in_speech),
                "ducked": self._ducked,
                "queue_position": self.queue_position(),
                "notice": self.notice,
                "camera_on": self.camera_frame() is not None,
            }

    def _bump(self) -> None:
        self.version += 1
        self._cond.notify_all()

    def _event(self, kind: str, **kw) -> None:
        rec = {"t": time.monotonic(), "ev": kind, **kw}
        self.events.append(rec)
        sink = self.shared.event_sink
        if sink is not None:
            try:
                sink(self.id, rec)
            except Exception:
                log.debug("event sink failed", exc_info=True)

    # ------------------------------------------------------------ files and export

    def transcript(self) -> dict:
        with self._lock:
            return transcript(self.id, self.history, self.config)

    def export_zip(self) -> Path:
        """transcript.json + transcript.md + every audio/image file, zipped inside the session folder (the
        previous export there is replaced: a page may export after every turn)."""
        with self._lock:
            data, turns = self.transcript(), list(self.history)
        return export_zip(self.dir, data, turns)

    def clear(self) -> None:
        with self._lock:
            if self._assistant_active():
                self._interrupt("cleared", time.monotonic(), None)
            self.history.clear()
            self.notice = ""
            self._bump()

    def close(self) -> None:
        with self._lock:
            self.closed = True
            if self._job is not None:
                self._job.cancel.set()
                self.shared.worker.remove(self._job)
            self._current = None
            self._player.clear()
        if not self.keep_files:
            shutil.rmtree(self.dir, ignore_errors=True)
        elif self.history:  # the capture stays complete without an export: the transcript beside its files
            transcript_json, transcript_md = transcript_texts(self.transcript())
            (self.dir / "transcript.json").write_text(transcript_json)
            (self.dir / "transcript.md").write_text(transcript_md)
