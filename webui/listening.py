"""The live side of a session: the microphone (turn detection, early encoding, barge-in over an answer, the
stop-phrase check of short turns) and the webcam. Part of `Session` (webui/session.py), whose state it shares."""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path

import numpy as np

from .bargein import Check, Duck, Interrupt, Note, RunCheck, Unduck, Utterance
from .config import EARLY_ENCODE_AFTER_S, policy_warning
from .interrupt import CommandCheck, normalize
from .turn import Turn
from .vad import SAMPLE_RATE as VAD_RATE
from .vad import SpeechStarted, TurnDetector, TurnEnded, load_silero
from .worker import Job

log = logging.getLogger("webui")
# policy `model`: a turn whose speech spans the moment the model heard a stop command (give or take this) is the
# command itself, when the model heard it before the VAD noticed speech
IRQ_MARGIN_S = 0.5


def _digest(audio: np.ndarray) -> bytes:
    return hashlib.blake2b(np.ascontiguousarray(audio).tobytes(), digest_size=16).digest()


class Listening:
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
            if active and self.config.policy == "model":
                self._model_listens(sample_rate, pcm)
            det = self._detector
            events = det.push(sample_rate, pcm)
            now = time.monotonic()
            for ev in events:
                t_wall = now - (det.time - (ev.t if isinstance(ev, SpeechStarted) else ev.t_end))
                self._on_vad(ev, t_wall)
            if self._barge.utterance is not None and det.in_speech and self._assistant_active():
                self._carry_out(self._barge.progress(det, now, self.config))
            self._encode_early(det)

    def _model_listens(self, sample_rate: int, pcm: np.ndarray) -> None:
        """Barge-in policy `model`: the mic audio to the checkpoint's interruption listener (omni/listen.py), a new
        one for each answer, on a thread of its own (webui/model_listener.py); irq on a frame interrupts the answer
        as a stop phrase would (`_irq_heard`)."""
        turn, model = self._current, self.shared.model
        warning = policy_warning("model", model)
        if turn is None or warning:
            if turn is not None and getattr(self, "_irq_unavailable", None) is not turn:
                self._irq_unavailable = turn  # said once per answer (attributes set here: no Session change)
                self._event("model_policy_unavailable")
                self.notice = warning
            return
        listening = getattr(self, "_irq_listening", None)
        if listening is None or listening[0] is not turn:
            from .model_listener import AnswerListener

            if listening is not None:
                listening[1].stop()
            over = lambda: turn.status not in ("queued", "running", "speaking")  # noqa: E731
            listening = self._irq_listening = (turn, AnswerListener(
                model.interrupt_listener(), sample_rate, lambda: self._irq_heard(turn), over))
        listening[1].add(pcm)

    def _irq_heard(self, turn: Turn) -> None:
        """The listener's thread: the model heard a stop command over `turn`."""
        with self._lock:
            if turn is not self._current or not self._assistant_active():
                return  # that answer has ended meanwhile
            now = time.monotonic()
            u = self._barge.utterance
            self._interrupt("model: irq", u.onset if u is not None else now, None, now)
            if u is not None:  # the model heard the command in it: the rest of it is never a new turn
                u.command = True
                self._barge.utterance = u
            else:  # heard before the VAD noticed speech: the utterance the VAD finds around now is the command
                self._irq_command_at = now

    def _was_irq_command(self, ev, t_wall: float) -> bool:
        """Whether a turn the VAD found spans the moment the model heard a stop command (policy `model`)."""
        at = getattr(self, "_irq_command_at", None)
        if at is None:
            return False
        onset = t_wall - (ev.t_end - ev.t_start)
        if onset - IRQ_MARGIN_S <= at <= t_wall + IRQ_MARGIN_S:
            self._irq_command_at = None
            return True
        if at < onset - IRQ_MARGIN_S:  # a later utterance: that command had no utterance of its own
            self._irq_command_at = None
        return False

    def _encode_early(self, det: TurnDetector) -> None:
        """While a spoken turn's end-of-turn silence runs out, have the model encode the turn's audio (the audio
        cannot change any more unless speech resumes; the answer then finds its Whisper features ready). Only
        when the model is idle; the work is dropped as soon as the speaker goes on."""
        early = self._early
        if early is not None and early.finished is None and det.in_speech and det.trailing_silence_s == 0:
            early.cancel.set()  # speaking again: that was a pause, not the end of the turn
            self.shared.worker.remove(early)
            self._early = None
            self._event("early_encode_dropped")
            return
        cfg = self.config
        if not (det.in_speech and det.speech_s >= cfg.vad.min_turn_s
                and det.trailing_silence_s >= max(cfg.vad.tail_s, EARLY_ENCODE_AFTER_S)) or self._assistant_active():
            return
        key = (det.speech_start, det.last_speech_end)
        self._check_early(key, det.turn_audio())
        if not cfg.early_encode or key == self._early_key or not self.shared.worker.idle \
                or not callable(getattr(self.shared.model, "encode_audio", None)):
            return
        self._early_key = key

        def nothing(*_):
            pass

        self._early = self.shared.worker.submit(Job("encode", {"audio": (VAD_RATE, det.turn_audio())}, nothing,
                                                     nothing, nothing, kind="encode"))
        self._event("early_encode", silence_s=det.trailing_silence_s)

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
        if isinstance(ev, TurnEnded) and self._was_irq_command(ev, t_wall):
            self._event("irq_command_dropped", speech_s=ev.speech_s)
            return
        if isinstance(ev, TurnEnded):
            self._event("turn_detected", start=ev.t_start, end=ev.t_end, speech_s=ev.speech_s)
            frame = self.camera_frame()
            task = "IMAGE_A1A2" if frame is not None else "A1A2" if self.config.spoken_answers else "A1T2"
            turn = self._start_turn("voice", task, audio=(VAD_RATE, ev.audio), image=frame,
                                    image_source="webcam" if frame is not None else "")
            turn.timings.speech_end_wall = t_wall
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

    def _check_early(self, key: tuple[float, float], audio16k: np.ndarray) -> None:
        """Start the stop-phrase check of a short turn (see _vet_turn) while its end-of-turn silence runs out, as
        the early encode does: by the end of the turn the result is mostly there, and a question's answer is not
        held back by the check (nor slowed by it: the model is idle meanwhile)."""
        checker = self.shared.checker
        if checker is None or len(audio16k) > self.config.command_max_s * VAD_RATE:
            return
        if self._early_check is not None and self._early_check[0] == key:
            return
        self._early_check = (key, _digest(audio16k),
                             self.shared.asr_pool.submit(checker.check, audio16k, "", self.matcher))

    def _vet_turn(self, turn: Turn, audio16k: np.ndarray) -> None:
        """A short spoken turn said while nothing played may be a stop phrase ("stop omni" just as an answer
        ended): its answer is generated meanwhile but not played until the check says it is a question; a stop
        phrase drops the turn quietly instead of having it answered."""
        checker = self.shared.checker
        early, self._early_check = self._early_check, None
        if checker is None or len(audio16k) > self.config.command_max_s * VAD_RATE:
            return
        self._vetting = turn
        if early is not None and early[1] == _digest(audio16k):
            check = early[2]  # started during the end-of-turn silence, on this very audio
        else:
            check = self.shared.asr_pool.submit(checker.check, audio16k, "", self.matcher)
        check.add_done_callback(lambda done: self._vetted(turn, done))

    def _vetted(self, turn: Turn, done) -> None:
        try:
            res = done.result()
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

    def _drop_turn(self, turn: Turn) -> None:
        """Forget a turn that was a stop phrase: its answer is cancelled, its files removed, nothing shown."""
        if self._job is not None and turn is self._current:
            self._job.cancel.set()
            self.shared.worker.remove(self._job)
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
        checker = self.shared.checker
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

        self.shared.asr_pool.submit(run)

    def _duck(self, onset_wall: float) -> None:
        self._ducked = True
        now = time.monotonic()
        self._ducked_at = now
        self._silence_at = self._silence_after_flush(now)
        if self._current is not None:
            self._current.timings.ducks += 1
            self._current.timings.duck_onset_to_silence_s = round(self._silence_at - onset_wall, 3)
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
