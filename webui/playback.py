"""The answer's speech on its way to the listener: the chunks generated and not yet handed out, and the play clock
that hands them out at real-time pace.

Frames are released at real-time pace with a small lead, so "handed out" is "played" to within the lead; that is
what lets an interruption truncate the answer to what was heard. Playback starts once `prebuffer_s` of speech is
queued (at once when the answer is complete). When it runs dry while the answer is still being generated (a model
slower than real time), it pauses until twice the last target is queued (at most `max_ahead_s`): a few longer
pauses instead of a stutter at every chunk, as video players rebuffer. `omni.bench.playback_gaps` models this
player. Not thread-safe: the session calls it holding its lock.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from .config import OUT_RATE

NEVER = float("inf")


class Player:
    def __init__(self) -> None:
        self._queue: deque[np.ndarray] = deque()
        self._t0 = 0.0  # the play clock: sample k of the answer is heard at _t0 + k / OUT_RATE
        self.sent = 0  # samples handed to the transport for the current answer
        self.speaking_since: float | None = None  # when the first frame of the answer was handed out
        self.rebuffers = 0  # times the current answer ran dry while it was being generated
        self._refilling = False  # ran dry while generating: waiting for _refill_s of speech
        self._refill_s = 0.0  # speech to queue before (re)starting playback
        self._max_ahead_s = 0.0

    def start(self, prebuffer_s: float, max_ahead_s: float) -> None:
        """A new answer: nothing queued or heard yet."""
        self._queue.clear()
        self.sent, self.speaking_since, self.rebuffers = 0, None, 0
        # never more than max_ahead_s: generation pauses there, so playback would wait forever
        self._refilling, self._refill_s, self._max_ahead_s = False, min(prebuffer_s, max_ahead_s), max_ahead_s

    def add(self, pcm: np.ndarray) -> None:
        self._queue.append(pcm)

    def clear(self) -> None:
        """Drop what is queued (an interruption, or no one listening)."""
        self._queue.clear()

    def stop(self) -> None:
        """The answer is over: drop what is queued; the next one starts afresh."""
        self._queue.clear()
        self.speaking_since = None

    @property
    def queued_s(self) -> float:
        """Seconds of speech generated and not yet handed to the transport."""
        return sum(len(c) for c in self._queue) / OUT_RATE

    @property
    def heard_by(self) -> float:
        """When everything handed out so far has been heard."""
        return self._t0 + self.sent / OUT_RATE

    def heard_s(self, now: float, flushed: bool) -> float:
        """Seconds of this answer heard by `now`: all that was handed out, less what is still ahead of the clock
        (none when the transport's queue was flushed, e.g. while playback is paused)."""
        lead = 0.0 if flushed or self.speaking_since is None else max(0.0, self.heard_by - now)
        return max(0.0, self.sent / OUT_RATE - lead)

    def quiet_at(self, now: float) -> float:
        """When the output goes quiet if nothing more is handed out from `now` on."""
        return now if self.speaking_since is None else max(now, self.heard_by)

    def resume(self, now: float) -> None:
        """Go on where playback stopped (after a pause): the play clock restarts from now."""
        self._t0 = now - self.sent / OUT_RATE

    def pull(self, samples: int, now: float, generating: bool, lead_s: float) -> tuple[np.ndarray | None, float]:
        """(the next `samples` of speech, 0) when due, else (None, when to look again; NEVER: when more comes)."""
        heard_all = now >= self.heard_by
        if not self._queue:
            if generating and self.speaking_since is not None and not self._refilling and heard_all:
                self._refilling = True  # ran dry while generating: wait for twice as much as last time
                self._refill_s = min(2 * self._refill_s, self._max_ahead_s)
                self.rebuffers += 1
            return None, NEVER
        if (self.speaking_since is None or self._refilling) and generating and self.queued_s < self._refill_s:
            return None, NEVER  # let the buffer fill first
        if self.speaking_since is None or self._refilling or heard_all:
            # (re)start, or a gap shorter than one poll: the play clock runs from now
            self.resume(now)
            self._refilling = False
            if self.speaking_since is None:
                self.speaking_since = now
        due = self.heard_by - lead_s
        if now >= due:
            return self._take(samples), 0.0
        return None, due

    def _take(self, samples: int) -> np.ndarray:
        out = np.zeros(samples, np.int16)
        n = 0
        while n < samples and self._queue:
            chunk = self._queue[0]
            k = min(samples - n, len(chunk))
            out[n : n + k] = chunk[:k]
            if k == len(chunk):
                self._queue.popleft()
            else:
                self._queue[0] = chunk[k:]
            n += k
        self.sent += n
        return out
