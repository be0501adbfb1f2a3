"""The model worker: one thread in front of the model, sharing it between answers in turns; and the executor that
runs side work (the stop-command check) on short-lived threads beside it."""

from __future__ import annotations

import concurrent.futures
import logging
import queue
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from omni.events import AudioChunk, TextDelta

log = logging.getLogger("webui")


class FreshThreadExecutor:
    """Runs submitted calls one at a time, in order, each on a new thread that ends with it.

    For side work that may run torch (the stop-command check with openai-whisper) next to the model worker:
    OpenMP keeps a thread team for every live thread that ever ran a parallel region, and with more team
    threads than cores it stops spinning between regions, so every parallel op of the model then pays a
    wake-up (on 2 cores, small ops 13 -> 58 us after one matmul on another long-lived thread; back to 13 once
    that thread ended). A thread that ends frees its team.
    """

    def __init__(self, name: str):
        self._tasks: queue.SimpleQueue = queue.SimpleQueue()
        self._name = name
        self._closed = False
        self._runner: threading.Thread | None = None
        self._dispatcher = threading.Thread(target=self._dispatch, name=f"{name}-dispatch", daemon=True)
        self._dispatcher.start()

    def submit(self, fn: Callable, *args, **kw) -> concurrent.futures.Future:
        if self._closed:
            raise RuntimeError(f"{self._name}: executor is shut down")
        fut: concurrent.futures.Future = concurrent.futures.Future()
        self._tasks.put((fut, fn, args, kw))
        return fut

    def shutdown(self, wait: bool = True, cancel_futures: bool = False, timeout: float = 10.0) -> None:
        """With `wait`, returns once the call running now has ended (at most `timeout` s): a recogniser thread
        still inside CTranslate2 when the interpreter exits aborts the process ('terminate called ...')."""
        self._closed = True
        if cancel_futures:
            while True:
                try:
                    item = self._tasks.get_nowait()
                except queue.Empty:
                    break
                if item is not None:
                    item[0].cancel()
        self._tasks.put(None)
        if wait and threading.current_thread() not in (self._dispatcher, self._runner):
            self._dispatcher.join(timeout)

    def _dispatch(self) -> None:
        while (item := self._tasks.get()) is not None:
            fut, fn, args, kw = item
            if not fut.set_running_or_notify_cancel():
                continue

            def run():
                try:
                    fut.set_result(fn(*args, **kw))
                except BaseException as e:  # noqa: BLE001 - handed to whoever waits on the future
                    fut.set_exception(e)

            t = self._runner = threading.Thread(target=run, name=self._name, daemon=True)
            t.start()
            t.join()


GO, WAIT, HOLD = "go", "wait", "hold"  # a started answer's gate: advance it / skip it (ahead of playback) / skip it
# (its listener may be saying a stop command). Either way only that answer waits; the others go on.


@dataclass(eq=False)  # jobs are told apart by identity (their inputs hold arrays, which compare elementwise)
class Job:
    task: str
    inputs: dict
    on_event: Callable[[Any], None]
    on_error: Callable[[str], None]
    on_done: Callable[["Job"], None]
    cancel: threading.Event = field(default_factory=threading.Event)
    kind: str = "answer"  # or "encode": Whisper features of a turn that may be about to end
    # asked before each step of a started answer: WAIT while its speech is far ahead of playback (the worker
    # serves other answers meanwhile), HOLD while its listener may be saying a stop command
    gate: Callable[[], str] = lambda: GO
    submitted: float = field(default_factory=time.monotonic)
    started: float | None = None  # when the worker took it: queue wait is started - submitted
    finished: float | None = None
    paused_s: float = 0.0  # time started but not computing (gated, or another answer's turn): not model time
    events: Iterator[Any] | None = None
    _last_step: float | None = None
    first_output: bool = False  # its first speech (a speech answer) or text (a text answer) has come


def _is_first_output(job: Job, ev) -> bool:
    return isinstance(ev, AudioChunk if job.task.endswith("A2") else TextDelta)  # speech tasks end in A2


class ModelWorker:
    """One thread in front of the model, sharing it between answers in turns.

    An answer is a stream of events (a text piece, a chunk of speech), advanced one event at a time. A new
    answer is taken up at once when fewer than `max_active` are (each holds a KV cache). Of the taken-up
    answers whose gates say go, those still before their first speech (or text, for a text answer) go first, in
    the order they came; the others take turns, the one advanced least recently first. So a user who asks while
    another's long answer runs waits about one event of it (at most one chunk of speech), and is then served
    up to the first sound of the answer; people waiting for their first sound are served in turn, not all at a
    third of the speed. Queue position 0 means started.
    """

    def __init__(self, model, max_active: int = 4):
        self.model = model
        self.max_active = max(1, max_active)
        self._jobs: deque[Job] = deque()
        self._active: list[Job] = []  # started, in the order they started
        self._cond = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="model-worker", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> Job:
        with self._cond:
            self._jobs.append(job)
            self._cond.notify_all()
        return job

    def position(self, job: Job) -> int | None:
        """Answers ahead of `job` in the queue (0: started, or only an early encode is ahead of it)."""
        with self._cond:
            if job in self._active:
                return 0
            ahead = int(len(self._active) >= self.max_active)
            for j in self._jobs:
                if j is job:
                    return ahead
                ahead += j.kind == "answer"
        return None

    @property
    def idle(self) -> bool:
        with self._cond:
            return not self._active and not self._jobs

    def remove(self, job: Job) -> bool:
        with self._cond:
            try:
                self._jobs.remove(job)
                return True
            except ValueError:
                return False

    @property
    def waiting(self) -> int:
        with self._cond:
            return len(self._jobs)

    def close(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        # wait for the thread to end: a finished worker left alive keeps its OpenMP team, which slows the next
        # engine's worker on a small CPU (see FreshThreadExecutor)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _next_job(self) -> Job | None:
        """The job to advance now (see the class): None when every started answer waits."""
        with self._cond:
            while self._jobs and len(self._active) < self.max_active:
                self._active.append(self._jobs.popleft())
            active = list(self._active)
        # gates take their sessions' locks: asked outside the worker's own lock (sessions call in holding theirs)
        ready = [j for j in active if j.cancel.is_set() or j.gate() == GO]
        waiting_first = [j for j in ready if not j.first_output]
        if waiting_first:
            return min(waiting_first, key=lambda j: j.submitted)
        return min(ready, key=lambda j: j._last_step or 0.0) if ready else None  # the least recently advanced

    def _loop(self) -> None:
        try:
            while True:
                with self._cond:
                    if self._stop:
                        return
                    while not self._jobs and not self._active and not self._stop:
                        self._cond.wait()
                    if self._stop:
                        return
                job = self._next_job()
                if job is None:
                    with self._cond:
                        self._cond.wait(0.05)  # a gate opens as playback goes on: look again soon
                    continue
                self._advance(job)
        finally:
            for job in list(self._active):  # free what the started answers hold, on this thread
                self._finish(job)

    def _advance(self, job: Job) -> None:
        """Start `job` or take its next event; finish it when it ends, fails or was cancelled before starting."""
        now = time.monotonic()
        try:
            if job.started is None:
                job.started = now
                if job.cancel.is_set():
                    raise StopIteration
                if job.kind == "encode":
                    self.model.encode_audio(job.inputs["audio"], cancel=job.cancel)  # the model keeps the features
                    raise StopIteration
                opts = job.inputs.pop("options")
                job.events = iter(self.model.stream(job.task, options=opts, cancel=job.cancel, **job.inputs))
            elif job._last_step is not None:
                job.paused_s += now - job._last_step
            ev = next(job.events)
            job._last_step = time.monotonic()
            job.first_output = job.first_output or _is_first_output(job, ev)
            job.on_event(ev)
        except StopIteration:
            self._finish(job)
        except Exception as e:  # a model failure ends this turn, never the app
            job.on_error(user_message(e))
            log.error("model failure:\n%s", traceback.format_exc())
            self._finish(job)

    def _finish(self, job: Job) -> None:
        if job.events is not None and hasattr(job.events, "close"):
            try:
                job.events.close()  # frees the answer's KV cache now
            except Exception:
                log.error("closing a model stream failed:\n%s", traceback.format_exc())
        job.finished = time.monotonic()
        with self._cond:
            if job in self._active:
                self._active.remove(job)
        try:
            job.on_done(job)
        except Exception:
            log.error("turn bookkeeping failed:\n%s", traceback.format_exc())


def user_message(e: Exception) -> str:
    try:
        from omni.errors import OmniError

        if isinstance(e, OmniError):
            return str(e)
    except ImportError:
        pass
    if isinstance(e, (ValueError, FileNotFoundError)):
        return str(e)
    return f"The model failed on this turn ({type(e).__name__}: {e}). The conversation can go on."
