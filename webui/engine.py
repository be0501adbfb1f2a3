"""The conversation engine: one model shared by every conversation, through one worker.

UI-independent: a transport (fastrtc in Gradio, a test harness, Streamlit) pushes microphone audio with
`Session.feed_audio`, pulls paced speech frames with `Session.next_frame`, and renders `Session.snapshot()`. One
`Engine` owns the model and a single worker thread, because model calls are not thread-safe; every browser gets its
own `Session` (webui/session.py), and sessions share nothing but the worker.
"""

from __future__ import annotations

import atexit
import gc
import shutil
import threading
import weakref
from dataclasses import replace
from typing import Callable

import numpy as np

from .config import EngineConfig
from .interrupt import CommandChecker
from .recordings import recordings_root
from .session import Session, Shared
from .vad import SAMPLE_RATE as VAD_RATE
from .worker import FreshThreadExecutor, ModelWorker


class EngineBusy(ValueError):
    """No new session now: as many as the engine takes are open (a message for the user)."""

class Engine:
    """Owns the model, the worker queue and the ASR used for the stop-command check."""

    def __init__(self, model, config: EngineConfig | None = None, transcriber=None, recordings_dir: str | None = None,
                 options_cls=None):
        self.config = (config or EngineConfig()).validate()
        self.model = model
        self.options_cls = options_cls
        self.worker = ModelWorker(model, self.config.max_active_answers)
        self.checker = CommandChecker(transcriber, self.config.phrases) if transcriber is not None else None
        # one ASR thread: the command check must not wait behind a user-transcript job, so two queues
        self.asr_pool = FreshThreadExecutor("asr")
        self.side_pool = FreshThreadExecutor("asr-bg")
        if self.checker is not None:  # the first ASR call is slow (allocations); pay it now, not at barge-in
            self.asr_pool.submit(self.checker.transcribe, np.zeros(VAD_RATE, np.float32))
        # a folder the user named keeps each session's files (and its transcript) when the session ends; the
        # default temp folder is cleaned up
        self.keep_recordings = recordings_dir is not None
        self.recordings_dir = recordings_root(recordings_dir)
        # the app stopped with Ctrl-C still ends its sessions: transcripts are written, temp files removed
        atexit.register(_close_if_alive, weakref.ref(self))
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()
        self.shared = Shared(model, self.worker, self.checker, self.asr_pool, self.side_pool, self._options)

    @property
    def event_sink(self) -> Callable[[str, dict], None] | None:
        """Where sessions report their events (e.g. a JSONL log for tests): (session id, event) -> None."""
        return self.shared.event_sink

    @event_sink.setter
    def event_sink(self, sink: Callable[[str, dict], None] | None) -> None:
        self.shared.event_sink = sink

    def _options(self, cfg: EngineConfig):
        cls = self.options_cls
        if cls is None:
            import omni

            cls = omni.DecodingOptions
        return cls(
            max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p
        )

    def new_session(self, config: EngineConfig | None = None) -> "Session":
        """A new conversation; `EngineBusy` when `max_sessions` are open (each holds a VAD, history and files)."""
        with self._lock:
            if len(self._sessions) >= self.config.max_sessions:
                raise EngineBusy(f"The assistant is busy: {len(self._sessions)} conversations are open, the most "
                                 f"this machine takes. Try again in a minute.")
            cfg = config or self.config
            s = Session(self.shared, replace(cfg, vad=replace(cfg.vad)), self.recordings_dir, self.keep_recordings)
            self._sessions[s.id] = s
        return s

    def get(self, session_id: str | None) -> "Session | None":
        with self._lock:
            return self._sessions.get(session_id or "")

    def close_session(self, session_id: str) -> None:
        with self._lock:
            s = self._sessions.pop(session_id, None)
        if s is not None:
            s.close()

    @property
    def sessions(self) -> int:
        with self._lock:
            return len(self._sessions)

    def close(self) -> None:
        for sid in list(self._sessions):
            self.close_session(sid)
        self.worker.close()
        self.asr_pool.shutdown(wait=True, cancel_futures=True)
        self.side_pool.shutdown(wait=True, cancel_futures=True)
        if not self.keep_recordings:  # the temp folder made for this engine goes with it
            shutil.rmtree(self.recordings_dir, ignore_errors=True)


def _close_if_alive(ref: "weakref.ref[Engine]") -> None:
    engine = ref()
    if engine is not None:
        engine.close()


def freeze_heap() -> None:
    """Collect once, then move every object alive now (model, tokenizers, UI libraries: ~0.5 M objects) out of
    the garbage collector's way. A full collection over them takes ~0.2 s on a 2-core CPU with the GIL held: an
    audible gap in the speech being played. Later collections scan only newer objects. Call after loading."""
    gc.collect()
    gc.freeze()


ABANDONED_AFTER_S = 300.0  # a page gone this long (tab closed, not a network blip)


def close_abandoned(engine: Engine, owners: dict, is_active: Callable[[str], bool], now: float,
                    grace_s: float = ABANDONED_AFTER_S) -> list[str]:
    """Close the sessions whose page has been gone for `grace_s` (their memory, and their temp files; a
    --recordings folder keeps them), for UIs that are not told when a page closes (Streamlit).

    owners: session id -> [page id, when the page was first seen gone or None], updated in place.
    Returns the ids closed."""
    closed = []
    for sid, entry in list(owners.items()):
        if is_active(entry[0]):
            entry[1] = None
        elif entry[1] is None:
            entry[1] = now
        elif now - entry[1] >= grace_s:
            owners.pop(sid, None)
            engine.close_session(sid)
            closed.append(sid)
    return closed
