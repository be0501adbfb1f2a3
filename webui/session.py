"""One conversation: turn-taking, barge-in, playback, history. Thread-safe: the transport, the UI and the model
worker all call in."""

from __future__ import annotations

import threading
import logging
import os
import shutil
import time
import uuid
from collections import deque
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from .config import EARLY_ENCODE_AFTER_S, MAX_TEXT_CHARS, MAX_TURNS_KEPT, OUT_RATE, PICTURE_NEEDS_VOICE, TEXT_TASKS, EngineConfig
from .bargein import BargeIn, Check, Duck, Interrupt, Note, RunCheck, Unduck, Utterance
from .interrupt import CommandCheck, PhraseMatcher, normalize
from .playback import NEVER, Player
from .recordings import export_zip, save_inputs, save_outputs, transcript, transcript_texts
from .turn import Turn, model_timings, slow_speech_hint, truncate_text
from .uploads import load_audio, load_image
from .vad import SAMPLE_RATE as VAD_RATE
from .vad import SpeechStarted, TurnDetector, TurnEnded, load_silero, resample, to_float32
from .worker import GO, HOLD, WAIT, Job

if TYPE_CHECKING:
    from .engine import Engine

log = logging.getLogger("webui")


class Session:
    """One conversation. Thread-safe: the transport, the UI and the worker all call in."""

    def __init__(self, engine: Engine, config: EngineConfig):
        self.engine = engine
        self.config = config
        self.id = uuid.uuid4().hex
        self.dir = engine.recordings_dir / self.id
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # in a named folder too, only this user reads it
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

    # ------------------------------------------------------------ inputs

    def set_camera_frame(self, frame: np.ndarray | None) -> None:
        """Latest webcam frame (HxWx3 uint8); None means the camera was turned off."""
        with self._lock:
            was_on = self.camera_frame() is not None
            if frame is None:
                self._camera = None
            else:
                self._camera = (time.monotonic(), np.ascontiguousarray(frame[..., :3]).astype(np.uint8, copy=False))
            if was_on != (frame is not None):
                self._event("camera_on" if frame is not None else "camera_off")

    def camera_frame(self) -> np.ndarray | None:
        with self._lock:
            if self._camera and time.monotonic() - self._camera[0] <= self.config.camera_max_age_s:
                return self._camera[1]
        return None

    def feed_audio(self, sample_rate: int, pcm: np.ndarray) -> None:
        """Microphone audio from the transport, in any chunk size."""
        if self.closed:
            return
        with self._lock:
            if self._detector is None:
                self._detector = TurnDetector(self.config.vad, load_silero())
            active = self._assistant_active()
            if active and self.config.policy == "off":
                return  # half-duplex: the mic is ignored while the assistant speaks
            det = self._detector
            events = det.push(sample_rate, pcm)
            now = time.monotonic()
            for ev in events:
                t_wall = now - (det.time - (ev.t if isinstance(ev, SpeechStarted) else ev.t_end))
                self._on_vad(ev, t_wall)
            if self._barge.utterance is not None and det.in_speech and self._assistant_active():
                self._carry_out(self._barge.progress(det, now, self.config))
            self._encode_early(det)

    def _encode_early(self, det: TurnDetector) -> None:
        """While a spoken turn's end-of-turn silence runs out, have the model encode the turn's audio (the audio
        cannot change any more unless speech resumes; the answer then finds its Whisper features ready). Only
        when the model is idle; the work is dropped as soon as the speaker goes on."""
        early = self._early
        if early is not None and early.finished is None and det.in_speech and det.trailing_silence_s == 0:
            early.cancel.set()  # speaking again: that was a pause, not the end of the turn
            self.engine.worker.remove(early)
            self._early = None
            self._event("early_encode_dropped")
            return
        cfg = self.config
        if not (cfg.early_encode and det.in_speech and det.speech_s >= cfg.vad.min_turn_s
                and det.trailing_silence_s >= max(cfg.vad.tail_s, EARLY_ENCODE_AFTER_S)):
            return
        key = (det.speech_start, det.last_speech_end)
        if key == self._early_key or self._assistant_active() or not self.engine.worker.idle \
                or not callable(getattr(self.engine.model, "encode_audio", None)):
            return
        self._early_key = key

        def nothing(*_):
            pass

        self._early = self.engine.worker.submit(Job("encode", {"audio": (VAD_RATE, det.turn_audio())}, nothing,
                                                     nothing, nothing, kind="encode"))
        self._event("early_encode", silence_s=det.trailing_silence_s)

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

    def add_flush_hook(self, fn: Callable[[], None]) -> None:
        """Called on interrupt to drop audio the transport has queued (e.g. fastrtc's clear_queue)."""
        with self._lock:
            self._flush_hooks.append(fn)

    def remove_flush_hook(self, fn: Callable[[], None]) -> None:
        with self._lock:
            if fn in self._flush_hooks:
                self._flush_hooks.remove(fn)

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
                        self._current.timings["rebuffers"] = p.rebuffers
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

    def queue_position(self) -> int | None:
        job = self._job
        return self.engine.worker.position(job) if job is not None else None

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
        sink = self.engine.event_sink
        if sink is not None:
            try:
                sink(self.id, rec)
            except Exception:
                log.debug("event sink failed", exc_info=True)

    # ------------------------------------------------------------ turn-taking and barge-in

    def _on_vad(self, ev, t_wall: float) -> None:
        if isinstance(ev, SpeechStarted):
            self._event("speech_started", at=t_wall)
            if self._assistant_active():
                self._carry_out(self._barge.started(t_wall, self._player.speaking_since, self.config))
            return
        u = self._barge.utterance
        if u is not None and self._assistant_active():  # speech over an answer is never a new turn
            ended = isinstance(ev, TurnEnded)
            self._carry_out(self._barge.ended(ended, ev.audio if ended else None, ev.t_end, t_wall, self.config,
                                              self._ducked))
            return
        self._barge.utterance = None
        if u is not None and (u.ignored or u.command):
            return  # the assistant's own voice, or the stop command itself
        if isinstance(ev, TurnEnded):
            self._event("turn_detected", start=ev.t_start, end=ev.t_end, speech_s=ev.speech_s)
            frame = self.camera_frame()
            task = "IMAGE_A1A2" if frame is not None else "A1A2"
            turn = self._start_turn("voice", task, audio=(VAD_RATE, ev.audio), image=frame,
                                    image_source="webcam" if frame is not None else "")
            turn.timings["speech_end_wall"] = t_wall
            self._vet_turn(turn, turn.user_audio)
        else:
            self._event("speech_dropped", speech_s=ev.speech_s)

    def _carry_out(self, actions: list) -> None:
        """Do what the barge-in logic decided (webui/bargein.py)."""
        for a in actions:
            if isinstance(a, Duck):
                self._duck(a.onset)
            elif isinstance(a, Unduck):
                self._unduck(a.why)
            elif isinstance(a, RunCheck):
                self._run_check(a.utterance, a.check)
            elif isinstance(a, Interrupt):
                self._interrupt(a.reason, a.onset, a.result, a.end_wall)
                if a.keeps is not None:
                    self._barge.utterance = a.keeps  # the rest of this utterance is the command, never a new turn
            elif isinstance(a, Note):
                self._event(a.event)

    def _vet_turn(self, turn: Turn, audio16k: np.ndarray) -> None:
        """A short spoken turn said while nothing played may be a stop phrase ("stop omni" just as an answer
        ended): its answer is generated meanwhile but not played until the check says it is a question; a stop
        phrase drops the turn quietly instead of having it answered."""
        checker = self.engine.checker
        if checker is None or len(audio16k) > self.config.command_max_s * VAD_RATE:
            return
        self._vetting = turn
        matcher = self.matcher

        def run():
            try:
                res = checker.check(audio16k, "", matcher)
            except Exception as e:
                log.error("stop-phrase check failed: %s", e)
                res = CommandCheck(False, "", None, 0.0, f"error: {e}")
            with self._lock:
                if self._vetting is turn:
                    self._vetting = None
                only_phrase = res.is_command and len(normalize(res.transcript)) <= len(res.phrase.split()) + 2
                self._event("turn_vetted", index=turn.index, stop_phrase=only_phrase, transcript=res.transcript)
                if only_phrase:
                    self._drop_turn(turn)
                self._bump()

        self.engine.asr_pool.submit(run)

    def _drop_turn(self, turn: Turn) -> None:
        """Forget a turn that was a stop phrase: its answer is cancelled, its files removed, nothing shown."""
        if self._job is not None and turn is self._current:
            self._job.cancel.set()
            self.engine.worker.remove(self._job)
            self._job = None
        if turn is self._current:
            self._current = None
            self._player.stop()
        turn.status = "cancelled"
        if turn in self.history:
            self.history.remove(turn)
        for path in turn.files.values():
            Path(path).unlink(missing_ok=True)
        self._event("stop_phrase_dropped", source="spoken", index=turn.index)

    def _run_check(self, u: Utterance, check: Check) -> None:
        """Have the recogniser check barge-in speech for a stop command (on the ASR thread)."""
        checker = self.engine.checker
        if checker is None:
            u.in_flight = False
            if self._ducked:
                self._unduck("no ASR configured")
            return
        turn = self._current
        said = turn.assistant_text if turn else ""
        matcher = self.matcher
        audio = check.audio
        rms = float(np.sqrt(np.mean(audio.astype(np.float64) ** 2))) if len(audio) else 0.0
        self._event("command_check_started", final=check.final, audio_s=len(audio) / VAD_RATE, rms=round(rms, 4))
        if os.environ.get("WEBUI_DEBUG_AUDIO"):
            import soundfile as sf

            sf.write(self.dir / f"barge_{int(time.time() * 1000)}.wav", audio, VAD_RATE)

        def run():
            try:
                res = checker.check(audio, said, matcher)
            except Exception as e:
                log.error("command check failed: %s", e)
                res = CommandCheck(False, "", None, 0.0, f"error: {e}")
            with self._lock:
                self._event("command_check", is_command=res.is_command, transcript=res.transcript,
                            reason=res.reason, seconds=res.seconds)
                answering = turn is self._current and self._assistant_active()
                self._carry_out(self._barge.checked(u, check, res, self._ducked, answering))

        self.engine.asr_pool.submit(run)

    def _duck(self, onset_wall: float) -> None:
        self._ducked = True
        now = time.monotonic()
        self._ducked_at = now
        self._silence_at = self._silence_after_flush(now)
        if self._current is not None:
            self._current.timings.setdefault("ducks", 0)
            self._current.timings["ducks"] += 1
            self._current.timings["duck_onset_to_silence_s"] = round(self._silence_at - onset_wall, 3)
        self._event("ducked", onset=onset_wall, silence_at=self._silence_at)
        self._bump()

    def _unduck(self, why: str) -> None:
        self._ducked = False
        # resume where playback stopped: the play clock restarts from now
        self._player.resume(time.monotonic())
        self._event("resumed", why=why)
        self._bump()

    def _silence_after_flush(self, now: float) -> float:
        """When the output goes quiet if nothing more is handed out from `now` on."""
        for fn in list(self._flush_hooks):
            try:
                fn()
            except Exception:
                log.debug("flush hook failed", exc_info=True)
        return self._player.quiet_at(now)

    def interrupt(self, reason: str = "button") -> bool:
        """Stop the current answer now (the UI's stop button)."""
        with self._lock:
            if not self._assistant_active():
                return False
            self._interrupt(reason, time.monotonic(), None)
            return True

    def _interrupt(self, reason: str, onset_wall: float, check: CommandCheck | None, end_wall: float | None = None) -> None:
        turn = self._current
        if turn is None or not self._assistant_active():
            return
        now = time.monotonic()
        if self._job is not None:
            self._job.cancel.set()
            self.engine.worker.remove(self._job)
        was_ducked = self._ducked
        silence_at = self._silence_at if was_ducked and self._silence_at else self._silence_after_flush(now)
        played = self._player.heard_s(now, flushed=was_ducked)
        # without a live player (the Streamlit page, Gradio before its voice stream starts) the text was read as
        # it came and no speech was heard yet: keep what was generated up to now, text and speech
        turn.live = self._transports > 0
        self._player.clear()
        self._ducked = False
        self.interrupts += 1
        turn.status = "interrupted"
        turn.interrupted_by = reason
        turn.played_s = played
        turn.full_text = turn.assistant_text
        if turn.live:
            turn.assistant_text = truncate_text(turn, played)
        t = turn.timings
        t["interrupt_reason"] = reason
        t["onset_to_silence_s"] = round(silence_at - onset_wall, 3)
        t["decision_to_silence_s"] = round(max(0.0, silence_at - now), 3)
        if check is not None:
            t["command_check_s"] = round(check.seconds, 3)
            t["command_transcript"] = check.transcript
        if end_wall is not None:
            # end of the spoken command -> output quiet (or already quiet when ducked)
            t["command_end_to_decision_s"] = round(now - end_wall, 3)
        self._event("interrupted", reason=reason, onset=onset_wall, silence_at=silence_at, played_s=played)
        self.notice = f"Interrupted ({reason})."
        self._job = None  # the cancelled job winds down within one decode step; its events are ignored
        self._finish_turn(turn, keep_status=True)

    # ------------------------------------------------------------ running a turn

    def _start_turn(self, kind: str, task: str, audio=None, image=None, text: str = "", image_source: str = "") -> Turn:
        with self._lock:
            if self._assistant_active():
                # a new request replaces the answer in progress (typed text or upload while it speaks)
                self._interrupt("new message", time.monotonic(), None)
            self._turn_counter += 1
            turn = Turn(self._turn_counter, kind, task, user_text=text)
            if audio is not None:
                sr, a = audio
                turn.user_audio = resample(to_float32(a).reshape(-1), sr, VAD_RATE)
            turn.image = image
            turn.image_source = image_source
            self.history.append(turn)
            del self.history[:-MAX_TURNS_KEPT]
            self._current = turn
            self._player.start(self.config.prebuffer_s, self.config.max_ahead_s)
            self._ducked = False
            self._barge.utterance = None
            self._vetting = None
            inputs: dict = {"options": self.engine._options(self.config)}
            if turn.user_audio is not None:
                inputs["audio"] = (VAD_RATE, turn.user_audio)
            if image is not None:
                inputs["image"] = image
            if text:
                inputs["text"] = self._context(text) if self.config.multi_turn else text
            inputs["stride"] = self.config.stride
            inputs["mode"] = self.config.stream_mode
            submitted = time.monotonic()
            turn.timings["submitted"] = submitted
            job = Job(task, inputs, lambda ev: self._on_model_event(turn, ev, job),
                      lambda msg: self._on_model_error(turn, msg), lambda j: self._on_job_done(turn, j),
                      gate=lambda: self._gate(turn))
            self._job = job
            self.engine.worker.submit(job)
            self._event("turn_submitted", index=turn.index, task=task)
            save_inputs(turn, self.dir)
            self._bump()
            return turn

    def _context(self, text: str) -> str:
        """Opt-in multi-turn: previous exchanges as plain text ahead of the new message."""
        lines = []
        for t in self.history[:-1][-self.config.history_turns :]:
            user = t.user_text or t.user_transcript
            if user and t.assistant_text:
                lines.append(f"User: {user}\nAssistant: {t.assistant_text}")
        if not lines:
            return text
        return "\n".join(lines) + f"\nUser: {text}"

    def _on_model_event(self, turn: Turn, ev, job: Job) -> None:
        from omni.events import AudioChunk, Finished, TextDelta

        with self._lock:
            turn.timings["throttled_s"] = round(job.paused_s, 3)
            if isinstance(ev, Finished) and ev.stats is not None and turn.status == "interrupted":
                turn.timings["model"] = model_timings(ev.stats, job.paused_s)
                turn.timings["steps_per_s"] = turn.timings["model"].get("steps_per_s")
            if turn is not self._current or turn.status == "interrupted":
                return
            if turn.status == "queued":
                turn.status = "running"
                # until the worker took the question up (its encoders and prefill are the answer's own time)
                turn.timings["queue_wait_s"] = round((job.started or time.monotonic()) - turn.timings["submitted"], 3)
            if isinstance(ev, TextDelta):
                turn.assistant_text += ev.text
                turn.text_marks.append((turn.generated_s(), len(turn.assistant_text)))
                if "first_text_s" not in turn.timings:
                    turn.timings["first_text_s"] = round(time.monotonic() - turn.timings["submitted"], 3)
            elif isinstance(ev, AudioChunk):
                pcm = np.asarray(ev.pcm)
                if pcm.dtype != np.int16:
                    pcm = (np.clip(to_float32(pcm), -1, 1) * 32767).astype(np.int16)
                if ev.sample_rate != OUT_RATE:
                    pcm = (resample(pcm.astype(np.float32) / 32768, ev.sample_rate, OUT_RATE) * 32767).astype(np.int16)
                turn.assistant_audio.append(pcm)
                turn.status = "speaking"
                if "first_audio_s" not in turn.timings:
                    now = time.monotonic()
                    turn.timings["first_audio_s"] = round(now - turn.timings["submitted"], 3)
                    if "speech_end_wall" in turn.timings:
                        turn.timings["speech_end_to_first_audio_s"] = round(now - turn.timings["speech_end_wall"], 3)
                if self._transports:
                    self._player.add(pcm)
                    self._bump()
            elif isinstance(ev, Finished):
                st = ev.stats
                if st is not None:
                    turn.timings["model"] = model_timings(st, job.paused_s)
                    if not turn.assistant_text and ev.result.text:
                        turn.assistant_text = ev.result.text
            self._bump()

    def _gate(self, turn: Turn) -> str:
        """Asked by the model worker before each step of this turn's answer: WAIT while the speech generated is
        far ahead of playback (generating faster than real time buys nothing but CPU taken from the VAD, the
        command check and other sessions, and work thrown away on an interruption); HOLD while playback is
        paused for a possible stop command, so the command check has the CPU."""
        with self._lock:
            if turn is not self._current or turn.status == "interrupted" or self.closed or not self._transports:
                return GO
            if self._ducked and time.monotonic() - self._ducked_at < self.config.command_max_s + 2.0:
                return HOLD
            return WAIT if self._player.queued_s > self.config.max_ahead_s else GO

    def _on_model_error(self, turn: Turn, msg: str) -> None:
        with self._lock:
            turn.status = "error"
            turn.error = msg
            self.notice = msg
            self._bump()

    def _on_job_done(self, turn: Turn, job: Job) -> None:
        with self._lock:
            if self._job is job:
                self._job = None
            if turn is self._current:
                if turn.status == "error":
                    self._finish_turn(turn, keep_status=True)
                elif turn.status in ("queued", "running") or not self._transports:
                    self._finish_turn(turn)  # text-only answer, or nobody is listening live
                # otherwise the turn ends when its audio has been played (next_frame)
            self._bump()

    def _finish_turn(self, turn: Turn, keep_status: bool = False) -> None:
        if not keep_status:
            turn.status = "done" if turn.status != "error" else "error"
            turn.played_s = turn.generated_s()
        if self._current is turn:
            self._current = None
            self._player.stop()
            self._ducked = False
            self._barge.utterance = None
        if self.config.policy == "off" and self._detector is not None:
            self._detector.reset()  # half-duplex: what was said over the answer is dropped
        m = turn.timings.get("model") or {}
        turn.timings.setdefault("steps_per_s", m.get("steps_per_s"))
        turn.timings.setdefault("real_time_factor", m.get("real_time_factor"))
        hint = slow_speech_hint(turn.timings.get("rebuffers", 0), turn.timings.get("real_time_factor"),
                                self.engine.model)
        if hint and turn.status == "done":
            self.notice = hint
        self._event("turn_finished", index=turn.index, status=turn.status)
        save_outputs(turn, self.dir)
        question = turn.user_audio
        if question is not None and self.engine.checker is not None and not turn.user_transcript:
            self.engine.side_pool.submit(self._transcribe_user, turn, question)
        turn.release_media()
        self._bump()

    def _transcribe_user(self, turn: Turn, question: np.ndarray) -> None:
        try:
            text = self.engine.checker.transcribe(question)
        except Exception:
            return
        with self._lock:
            turn.user_transcript = text
            self._bump()

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
                self.engine.worker.remove(self._job)
            self._current = None
            self._player.clear()
        if not self.engine.keep_recordings:
            shutil.rmtree(self.dir, ignore_errors=True)
        elif self.history:  # the capture stays complete without an export: the transcript beside its files
            transcript_json, transcript_md = transcript_texts(self.transcript())
            (self.dir / "transcript.json").write_text(transcript_json)
            (self.dir / "transcript.md").write_text(transcript_md)
