"""Barge-in: what speech heard over an answer does, by policy. The state of the utterance being heard is a
dataclass, and each decision comes back as actions (duck, unduck, check, interrupt) for the session to carry out.

Policies: `command` pauses playback at the first syllable (duck), has the speech checked for a stop phrase at each
pause and at its end, and interrupts on a command or resumes otherwise; `any` interrupts at the onset; `off` (half
duplex) hears nothing while the assistant speaks (the session does not even feed the detector then); `model` leaves the
decision to a checkpoint trained for the interruption (omni/listen.py, fed by the session): speech neither ducks nor
is checked here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .interrupt import CommandCheck
from .vad import SAMPLE_RATE as VAD_RATE


@dataclass
class Check:
    """Audio to check for a stop command: up to `t_end` on the detector's clock, which ended at `end_wall`."""
    audio: np.ndarray
    t_end: float
    final: bool  # the utterance has ended
    end_wall: float


@dataclass(eq=False)
class Utterance:
    """Speech heard while an answer is active (a possible stop command)."""
    onset: float  # wall time it began
    ignored: bool = False  # began within the echo guard after playback started: most likely the assistant itself
    in_flight: bool = False  # a check is running
    pending: Check | None = None  # the latest audio to check once the running check is back
    checks: int = 0
    checked_end: float = -1.0  # detector time up to which the speech was checked at a pause
    max_checked: bool = False  # checked once at command_max_s: longer speech is not a command
    command: bool = False  # a check found a stop command: the rest of it is never a new turn


@dataclass
class Duck:
    onset: float


@dataclass
class Unduck:
    why: str


@dataclass
class RunCheck:
    utterance: Utterance
    check: Check


@dataclass
class Interrupt:
    reason: str
    onset: float
    result: CommandCheck | None = None
    end_wall: float | None = None
    keeps: Utterance | None = None  # still being spoken: it stays the current utterance after the interruption


@dataclass
class Note:
    event: str


class BargeIn:
    def __init__(self) -> None:
        self.utterance: Utterance | None = None

    def started(self, t_wall: float, playing_since: float | None, cfg) -> list:
        """Speech began while an answer is active."""
        if playing_since is not None and t_wall < playing_since + cfg.echo_guard_s:
            self.utterance = Utterance(t_wall, ignored=True)
            return [Note("onset_ignored_guard")]
        self.utterance = Utterance(t_wall)
        if cfg.policy == "any":
            return [Interrupt("speech", t_wall)]
        return [Duck(t_wall)] if cfg.duck_on_speech and cfg.policy == "command" else []

    def progress(self, det, now: float, cfg) -> list:
        """The detector heard more of the utterance: check it at each pause, and once when it grows too long."""
        u = self.utterance
        if u is None or u.ignored or cfg.policy != "command":
            return []
        if det.trailing_silence_s >= cfg.command_pause_s and det.last_speech_end > u.checked_end:
            u.checked_end = det.last_speech_end
            audio = det.current_audio()
            keep = len(audio) - int(det.trailing_silence_s * VAD_RATE)
            return self._check(u, Check(audio[: max(keep, 0)], det.last_speech_end, False,
                                        now - det.trailing_silence_s))
        if det.time - det.speech_start >= cfg.command_max_s and not u.max_checked:
            u.max_checked = True
            return self._check(u, Check(det.current_audio(), det.time, False, now))
        return []

    def ended(self, turn_ended: bool, audio: np.ndarray | None, t_end: float, t_wall: float, cfg,
              ducked: bool) -> list:
        """The utterance over an active answer ended: a whole turn, or dropped as too short. Never a new turn."""
        u, self.utterance = self.utterance, None
        settled = ducked and not u.in_flight
        if not turn_ended:
            return [Unduck("too short")] if settled else []
        if u.ignored or cfg.policy != "command":
            return []
        if u.max_checked:
            return [Unduck("long speech is not a command")] if settled else []
        if u.checked_end >= t_end - 1e-6:
            return [Unduck("not a command")] if settled else []
        return self._check(u, Check(audio, t_end, True, t_wall))

    def checked(self, u: Utterance, check: Check, res: CommandCheck, ducked: bool, answering: bool = True) -> list:
        """A check came back; `answering`: the answer it was about is still the active one."""
        u.in_flight = False
        u.checks += 1
        if not answering:
            return []
        if res.is_command:
            u.command = True
            return [Interrupt(f"command: {res.transcript}", u.onset, res, check.end_wall,
                              keeps=u if self.utterance is u else None)]
        if u.pending is not None:
            following, u.pending = u.pending, None
            return self._check(u, following)
        still_speaking = self.utterance is u
        if ducked and (check.final or not still_speaking or u.max_checked or res.reason == "echo"):
            return [Unduck(res.reason)]
        return []

    def _check(self, u: Utterance, check: Check) -> list:
        if u.in_flight:  # one check at a time; the newest audio waits
            u.pending = check
            return []
        u.in_flight = True
        return [RunCheck(u, check)]
