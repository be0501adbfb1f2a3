"""Who gets a conversation on one model replica: K live at once, then Q waiting in order, then a clear refusal
(not Ray's bare HTTP 500: a refused client reads why). Ray's own per-replica cap sits above K + Q so that every
connection reaches this code."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager


class Full(Exception):
    """No conversation now and the queue is full."""


class Closing(Full):
    """This replica is shutting down: it takes no conversation, waiting ones included."""


class Admission:
    def __init__(self, live: int, queue: int, wait_s: float = 120.0):
        self.capacity, self.queue, self.wait_s = live, queue, wait_s
        self.live = 0
        self.waiting = 0
        self.closing: str | None = None  # why no conversation is taken any more
        self._freed = asyncio.Condition()

    async def close(self, why: str) -> None:
        """Take no more conversations; those waiting are told `why` (raised as Closing)."""
        self.closing = why
        async with self._freed:
            self._freed.notify_all()

    @asynccontextmanager
    async def slot(self):
        """One live conversation for the duration of the block; waits in the bounded queue; raises Full."""
        if self.closing:
            raise Closing(self.closing)
        if self.live >= self.capacity and self.waiting >= self.queue:
            raise Full(f"The demo is full: {self.live} conversations are live here and {self.waiting} are waiting. "
                       f"Try again in a minute.")
        self.waiting += 1
        try:
            async with self._freed:
                await asyncio.wait_for(self._freed.wait_for(lambda: self.live < self.capacity or self.closing),
                                       self.wait_s)
                if self.closing:
                    raise Closing(self.closing)
                self.live += 1
        except TimeoutError:
            raise Full(f"No conversation became free within {self.wait_s:.0f} s. Try again in a minute.") from None
        finally:
            self.waiting -= 1
        try:
            yield
        finally:
            async with self._freed:
                self.live -= 1
                self._freed.notify()
