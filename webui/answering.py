"""Running a turn: the question goes to the model worker, its text and speech come back into the turn and the
player, and the turn ends when it has been heard, fails, or is interrupted. Part of `Session`
(webui/session.py), whose state it shares."""

from __future__ import annotations

import time

import numpy as np

from .config import MAX_TURNS_KEPT, OUT_RATE
from .interrupt import CommandCheck
from .recordings import save_inputs, save_outputs
from .turn import Turn, model_timings, slow_speech_hint, truncate_text
from .vad import SAMPLE_RATE as VAD_RATE
from .vad import resample, to_float32
from .worker import GO, HOLD, WAIT, Job


class Answering:
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
            self.shared.worker.remove(self._job)
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
        t.interrupt_reason = reason
        t.onset_to_silence_s = round(silence_at - onset_wall, 3)
        t.decision_to_silence_s = round(max(0.0, silence_at - now), 3)
        if check is not None:
            t.command_check_s = round(check.seconds, 3)
            t.command_transcript = check.transcript
        if end_wall is not None:
            # end of the spoken command -> output quiet (or already quiet when ducked)
            t.command_end_to_decision_s = round(now - end_wall, 3)
        self._event("interrupted", reason=reason, onset=onset_wall, silence_at=silence_at, played_s=played)
        self.notice = f"Interrupted ({reason})."
        self._job = None  # the cancelled job winds down within one decode step; its events are ignored
        self._finish_turn(turn, keep_status=True)

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
            inputs: dict = {"options": self.shared.make_options(self.config)}
            if turn.user_audio is not None:
                inputs["audio"] = (VAD_RATE, turn.user_audio)
            if image is not None:
                inputs["image"] = image
            if text:
                inputs["text"] = self._context(text) if self.config.multi_turn else text
            inputs["stride"] = self.config.stride
            inputs["mode"] = self.config.stream_mode
            submitted = time.monotonic()
            turn.timings.submitted = submitted
            job = Job(task, inputs, lambda ev: self._on_model_event(turn, ev, job),
                      lambda msg: self._on_model_error(turn, msg), lambda j: self._on_job_done(turn, j),
                      gate=lambda: self._gate(turn))
            self._job = job
            self.shared.worker.submit(job)
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
            turn.timings.throttled_s = round(job.paused_s, 3)
            if isinstance(ev, Finished) and ev.stats is not None and turn.status == "interrupted":
                turn.timings.model = model_timings(ev.stats, job.paused_s)
                turn.timings.steps_per_s = turn.timings.model.get("steps_per_s")
            if turn is not self._current or turn.status == "interrupted":
                return
            if turn.status == "queued":
                turn.status = "running"
                # until the worker took the question up (its encoders and prefill are the answer's own time)
                turn.timings.queue_wait_s = round((job.started or time.monotonic()) - turn.timings.submitted, 3)
            if isinstance(ev, TextDelta):
                turn.assistant_text += ev.text
                turn.text_marks.append((turn.generated_s(), len(turn.assistant_text)))
                if turn.timings.first_text_s is None:
                    turn.timings.first_text_s = round(time.monotonic() - turn.timings.submitted, 3)
            elif isinstance(ev, AudioChunk):
                pcm = np.asarray(ev.pcm)
                if pcm.dtype != np.int16:
                    pcm = (np.clip(to_float32(pcm), -1, 1) * 32767).astype(np.int16)
                if ev.sample_rate != OUT_RATE:
                    pcm = (resample(pcm.astype(np.float32) / 32768, ev.sample_rate, OUT_RATE) * 32767).astype(np.int16)
                turn.assistant_audio.append(pcm)
                turn.status = "speaking"
                if turn.timings.first_audio_s is None:
                    now = time.monotonic()
                    turn.timings.first_audio_s = round(now - turn.timings.submitted, 3)
                    if turn.timings.speech_end_wall is not None:
                        turn.timings.speech_end_to_first_audio_s = round(now - turn.timings.speech_end_wall, 3)
                if self._transports:
                    self._player.add(pcm)
                    self._bump()
            elif isinstance(ev, Finished):
                st = ev.stats
                if st is not None:
                    turn.timings.model = model_timings(st, job.paused_s)
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
        m = turn.timings.model or {}
        tm = turn.timings
        tm.steps_per_s = tm.steps_per_s if tm.steps_per_s is not None else m.get("steps_per_s")
        tm.real_time_factor = tm.real_time_factor if tm.real_time_factor is not None else m.get("real_time_factor")
        hint = slow_speech_hint(turn.timings.rebuffers, turn.timings.real_time_factor,
                                self.shared.model)
        if hint and turn.status == "done":
            self.notice = hint
        self._event("turn_finished", index=turn.index, status=turn.status)
        save_outputs(turn, self.dir)
        question = turn.user_audio
        if question is not None and self.shared.checker is not None and not turn.user_transcript:
            self.shared.side_pool.submit(self._transcribe_user, turn, question)
        turn.release_media()
        self._bump()

    def _transcribe_user(self, turn: Turn, question: np.ndarray) -> None:
        try:
            text = self.shared.checker.transcribe(question)
        except Exception:
            return
        with self._lock:
            turn.user_transcript = text
            self._bump()
