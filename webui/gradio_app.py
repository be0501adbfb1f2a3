"""The Gradio app: loads the model once (in the background, so the page shows progress), keeps the pages'
sessions, carries each WebRTC voice connection to and from its session (fastrtc), and launches the page
(webui/gradio_page.py) with only the open sessions' files served."""

from __future__ import annotations

import atexit
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
import traceback
import uuid
from pathlib import Path

from .engine import Engine, EngineBusy
from .session import Session
from .rtc import allow_loopback_ice
from .startup import start_engine
from .gradio_page import build_ui

log = logging.getLogger("webui")

class OmniApp:
    """Loads the model once (in the background, so the page can show progress) and keeps sessions."""

    def __init__(self, opts):
        self.opts = opts  # the parsed options (webui/startup.py)
        self.engine: Engine | None = None
        self.status = "Starting…"
        self.error: str | None = None
        self.ready = threading.Event()
        self.sessions: dict[str, Session] = {}
        self._issued: set[str] = set()  # ids handed to pages; nothing else can open a session
        self._refused: dict[str, str] = {}  # page id -> why it has no session (the engine was full)
        self.page = None  # the launched gr.Blocks: its allowed_paths are the folders of the open sessions
        self._lock = threading.Lock()
        self._events_lock = threading.Lock()

    # ---------------------------------------------------------- loading

    def load_in_background(self) -> None:
        threading.Thread(target=self._load, name="model-load", daemon=True).start()

    def load(self) -> None:
        self._load()
        if self.error:
            raise RuntimeError(self.error)

    def _load(self) -> None:
        try:
            sink = self._event_log() if self.opts.events else None
            self.engine, ready = start_engine(self.opts, self._set_status, sink)
            self._set_status(ready)
        except Exception as e:
            from omni.errors import OmniError

            self.error = f"The model could not be loaded: {e}"
            self._set_status(self.error)
            # a known problem (missing/broken file, bad option) is said in one line; anything else is a bug
            (log.debug if isinstance(e, OmniError) else log.error)("model load failed:\n%s", traceback.format_exc())
        finally:
            self.ready.set()

    def _set_status(self, s: str) -> None:
        self.status = s
        sys.stdout.write(f"[mini-omni2] {s}\n")  # one write: print() from two threads can join lines
        sys.stdout.flush()

    def _event_log(self):
        """A sink writing session events as JSON lines (used by the browser test and for debugging)."""
        path = Path(self.opts.events)
        t_base = time.monotonic()

        def sink(session_id: str, ev: dict) -> None:
            rec = {k: (round(v - t_base, 4) if k in ("t", "at", "onset", "silence_at") and isinstance(v, float) else v)
                   for k, v in ev.items()}
            rec["session"] = session_id[:8]
            with self._events_lock, open(path, "a") as f:
                f.write(json.dumps(rec, default=str) + "\n")

        return sink

    # ---------------------------------------------------------- sessions

    def new_id(self) -> str:
        sid = str(uuid.uuid4())
        with self._lock:
            self._issued.add(sid)
        return sid

    def session(self, sid: str | None) -> Session | None:
        if not isinstance(sid, str) or self.engine is None:
            return None
        with self._lock:
            s = self.sessions.get(sid)
            if s is None:
                if sid not in self._issued:
                    return None
                try:
                    s = self.engine.new_session()
                except EngineBusy as e:  # asked again on the page's next action: a place may have come free
                    self._refused[sid] = str(e)
                    return None
                self._refused.pop(sid, None)
                self.sessions[sid] = s
                self._serve(s.dir, True)
            return s

    def refusal(self, sid: str | None) -> str | None:
        """Why this page has no session, when the engine was full."""
        with self._lock:
            return self._refused.get(sid or "")
    def _serve(self, folder: Path, on: bool) -> None:
        """Let the page have a session's files (chat audio and images, the export), and nothing else of the
        recordings folder. Gradio 5 reads the launched page's allowed_paths on each use: when it copies an output
        file into its cache (outside its temp folder and the working folder, only from allowed paths), and for
        each /gradio_api/file= request. Called with the lock held."""
        paths = getattr(self.page, "allowed_paths", None)
        if paths is None:  # not launched (tests that only build the page)
            return
        if on:
            paths.append(str(folder))
        elif str(folder) in paths:
            paths.remove(str(folder))

    def close_session(self, sid: str | None) -> None:
        with self._lock:
            s = self.sessions.pop(sid or "", None)
            self._issued.discard(sid or "")
            self._refused.pop(sid or "", None)
            if s is not None:
                self._serve(s.dir, False)
        if s is not None and self.engine is not None:
            self.engine.close_session(s.id)


# ------------------------------------------------------------------------------ rendering


def make_voice_handler(app: OmniApp):
    from fastrtc import StreamHandler

    class VoiceHandler(StreamHandler):
        """One per WebRTC connection: mic frames into the session, paced speech frames out."""

        def __init__(self):
            super().__init__(expected_layout="mono", output_sample_rate=24000, input_sample_rate=48000)
            self.session: Session | None = None
            self._tried = False

        def copy(self):
            return VoiceHandler()

        def _bind(self) -> Session | None:
            if self.session is None and not self._tried:
                self._tried = True
                self.wait_for_args_sync()
                args = self.latest_args
                # fastrtc puts the WebRTC value (or a placeholder) first; our session id is the last input
                sid = args[-1] if isinstance(args, list) and len(args) > 1 else None
                s = app.session(sid)
                if s is not None:
                    s.attach_transport(self._flush)
                    self.session = s
            return self.session

        def _flush(self) -> None:
            try:
                self.clear_queue()
            except Exception:
                pass

        def receive(self, frame) -> None:
            s = self.session
            if s is not None:
                sr, a = frame
                s.feed_audio(sr, a)

        def emit(self):
            s = self._bind()
            if s is None:
                time.sleep(0.05)
                return None
            f = s.next_frame(480, timeout=0.02)
            if f is None:
                return None
            return (24000, f.reshape(1, -1))

        def shutdown(self) -> None:
            if self.session is not None:
                self.session.detach_transport(self._flush)
                self.session = None

    return VoiceHandler()


# ------------------------------------------------------------------------------ the page


def private_gradio_cache() -> None:
    """Gradio copies every file the page shows (voices, webcam frames, answers) and every upload into its cache,
    by default /tmp/gradio: shared by all local users and readable by them. Unless GRADIO_TEMP_DIR names one, use
    a new private folder (0700) for this run, removed at exit. Gradio reads the variable when the page is built."""
    if not os.environ.get("GRADIO_TEMP_DIR"):
        folder = tempfile.mkdtemp(prefix="mini-omni2-gradio-")
        atexit.register(shutil.rmtree, folder, True)
        os.environ["GRADIO_TEMP_DIR"] = folder


def launch(app: OmniApp, host: str = "127.0.0.1", port: int = 7860, share: bool = False, banner: str | None = None,
           max_file_size: str = "25mb", routes: list | None = None) -> None:
    """The page on host:port; `routes` (the Realtime API's WebSocket) are served beside it by the same server."""
    allow_loopback_ice()
    private_gradio_cache()
    demo = build_ui(app, banner=banner)
    demo.queue(default_concurrency_limit=8)
    app.page = demo  # each session's folder is allowed while it is open (OmniApp._serve), not the recordings root
    demo.launch(server_name=host, server_port=port, share=share, max_file_size=max_file_size,
                show_api=False, favicon_path=None, app_kwargs={"routes": routes} if routes else None)
