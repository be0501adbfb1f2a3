"""The conversation engine: turn-taking, barge-in, history, playback accounting and export.

UI-independent: a transport (fastrtc in Gradio, a test harness, Streamlit) pushes microphone audio with
`Session.feed_audio`, pulls paced speech frames with `Session.next_frame`, and renders
`Session.snapshot()`. One `Engine` owns the model and a single worker thread, because model calls are
not thread-safe; every browser gets its own `Session`, and sessions share nothing but the queue.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import gc
import io
import json
import logging
import os
import queue
import shutil
import tempfile
import threading
import time
import traceback
import uuid
import warnings
import weakref
import zipfile
from collections import deque
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from .interrupt import DEFAULT_PHRASES, CommandCheck, CommandChecker, PhraseMatcher, normalize, parse_phrases
from .vad import SAMPLE_RATE as VAD_RATE
from .vad import SpeechDropped, SpeechStarted, TurnDetector, TurnEnded, VADConfig, load_silero, resample, to_float32

log = logging.getLogger("webui")

OUT_RATE = 24000  # SNAC output
POLICIES = ("command", "any", "off")
TEXT_TASKS = {"speech": "T1A2", "text": "T1T2"}
MAX_TEXT_CHARS = 2000
# Mini-Omni2 has one image task, IMAGE_A1A2: a picture with a spoken question (no typed question with a picture)
PICTURE_NEEDS_VOICE = ("The model answers about a picture only when the question is spoken: ask out loud with the "
                       "webcam on, or upload a recorded question (audio) together with the picture.")
MAX_UPLOAD_AUDIO_S = 60.0
MAX_IMAGE_PIXELS = 4096 * 4096
MAX_TURNS_KEPT = 200  # older turns are dropped from memory (and from the export) to bound a session


@dataclass
class EngineConfig:
    vad: VADConfig = field(default_factory=VADConfig)
    policy: str = "command"  # command: only stop phrases interrupt; any: any speech; off: half-duplex
    phrases: tuple[str, ...] = DEFAULT_PHRASES
    duck_on_speech: bool = True  # pause playback at speech onset, resume if it was not a command
    echo_guard_s: float = 0.3  # onsets this soon after the assistant starts playing are ignored (echo)
    command_pause_s: float = 0.128  # a pause this long after barge-in speech triggers the command check
    command_max_s: float = 2.5  # barge-in speech longer than this is checked once and then is not a command
    multi_turn: bool = False  # the official weights are single-turn: history in the prompt is opt-in
    history_turns: int = 3
    camera_max_age_s: float = 5.0  # an older webcam frame means the camera is off
    max_new_tokens: int = 512
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    stride: int | None = None  # frames per audio chunk; None: the model's default for stream_mode
    stream_mode: str = "smooth"
    playback_lead_s: float = 0.04  # audio handed to the transport ahead of real time
    # speech queued before playback starts while the answer is still being generated: absorbs the uneven pace
    # of the first chunks of a model near real time (e.g. int8 on 2 cores); doubled after each underrun
    prebuffer_s: float = 0.3
    max_ahead_s: float = 3.0  # generation pauses when this much speech is waiting to be played
    # encode a spoken turn while the end-of-turn silence runs out (from EARLY_ENCODE_AFTER_S of silence on):
    # the answer then skips Whisper, up to end_silence_s - EARLY_ENCODE_AFTER_S sooner
    early_encode: bool = True
    # engine-wide (read from the Engine's config, not a session's): answers the model works on in turns at once
    # (each holds a KV cache; more wait in the queue), and browser sessions open at once (more are refused)
    max_active_answers: int = 4
    max_sessions: int = 16

    @classmethod
    def from_options(cls, o) -> "EngineConfig":
        """From the apps' command-line options (app.py and the Streamlit page take the same ones); validated."""
        return cls(vad=VADConfig(end_silence_s=o.end_silence), policy=o.policy,
                   phrases=parse_phrases(o.phrases) if o.phrases else DEFAULT_PHRASES, multi_turn=o.multi_turn,
                   max_new_tokens=o.max_new_tokens, prebuffer_s=o.prebuffer,
                   early_encode=not o.no_early_encode, max_sessions=o.max_sessions,
                   max_active_answers=o.max_answers).validate()

    def validate(self) -> "EngineConfig":
        if self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}")
        self.vad.validate()
        if not parse_phrases(self.phrases):
            raise ValueError("give at least one stop phrase")
        if not 1 <= self.max_new_tokens <= 4096:
            raise ValueError("max_new_tokens must be between 1 and 4096")
        if not 0 <= self.prebuffer_s <= 10:
            raise ValueError("prebuffer must be between 0 and 10 seconds")
        if self.max_active_answers < 1 or self.max_sessions < 1:
            raise ValueError("max_active_answers and max_sessions must be at least 1")
        return self


EARLY_ENCODE_AFTER_S = 0.2  # silence after which a spoken turn is encoded ahead of its end (see _encode_early)


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
        threading.Thread(target=self._dispatch, name=f"{name}-dispatch", daemon=True).start()

    def submit(self, fn: Callable, *args, **kw) -> concurrent.futures.Future:
        if self._closed:
            raise RuntimeError(f"{self._name}: executor is shut down")
        fut: concurrent.futures.Future = concurrent.futures.Future()
        self._tasks.put((fut, fn, args, kw))
        return fut

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
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

            t = threading.Thread(target=run, name=self._name, daemon=True)
            t.start()
            t.join()


# ---------------------------------------------------------------- the model worker (one at a time)


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
    _turn: int = -1  # the worker's count of advances when this job was last advanced (round-robin order)
    first_output: bool = False  # its first speech (a speech answer) or text (a text answer) has come


def _is_first_output(job: Job, ev) -> bool:
    from omni.events import AudioChunk, TextDelta

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
        self._turns = 0
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
        return min(ready, key=lambda j: j._turn) if ready else None

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
            self._turns += 1
            job._turn = self._turns
            ev = next(job.events)
            job._last_step = time.monotonic()
            job.first_output = job.first_output or _is_first_output(job, ev)
            job.on_event(ev)
        except StopIteration:
            self._finish(job)
        except Exception as e:  # a model failure ends this turn, never the app
            job.on_error(_user_message(e))
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


def _user_message(e: Exception) -> str:
    try:
        from omni.errors import OmniError

        if isinstance(e, OmniError):
            return str(e)
    except ImportError:
        pass
    if isinstance(e, (ValueError, FileNotFoundError)):
        return str(e)
    return f"The model failed on this turn ({type(e).__name__}: {e}). The conversation can go on."


# ---------------------------------------------------------------- history


@dataclass
class Turn:
    index: int
    kind: str  # "voice" (live or recorded), "text", "upload"
    task: str
    user_text: str = ""
    image: np.ndarray | None = None  # HxWx3 uint8 (the frame or upload used) until the turn ends; then the file
    image_source: str = ""  # "webcam" or "upload"
    assistant_text: str = ""
    assistant_audio: list[np.ndarray] = field(default_factory=list)  # int16 24 kHz chunks, until the turn ends
    text_marks: list[tuple[float, int]] = field(default_factory=list)  # (audio s generated, text length)
    status: str = "queued"  # queued, running, speaking, done, interrupted, error, cancelled
    error: str = ""
    user_transcript: str = ""
    interrupted_by: str = ""
    played_s: float = 0.0
    full_text: str = ""  # what the model produced before any truncation
    live: bool = True  # played through a live audio output as generated (False: shown as text, kept for replay)
    timings: dict = field(default_factory=dict)
    started_wall: float = field(default_factory=time.time)
    files: dict = field(default_factory=dict)  # name -> path inside the session folder
    user_audio_s: float = 0.0
    _user_audio: np.ndarray | None = field(default=None, repr=False)  # float32 16 kHz, until the turn ends
    _generated_s: float | None = field(default=None, repr=False)  # set when the chunks are released

    @property
    def user_audio(self) -> np.ndarray | None:
        """The question's audio (float32 16 kHz): in memory while the turn runs, read back from its file after."""
        if self._user_audio is None and "user_audio" in self.files:
            import soundfile as sf

            return sf.read(self.files["user_audio"], dtype="float32")[0]
        return self._user_audio

    @user_audio.setter
    def user_audio(self, a: np.ndarray | None) -> None:
        self._user_audio = a
        self.user_audio_s = 0.0 if a is None else len(a) / VAD_RATE

    def audio(self) -> np.ndarray:
        """The answer's speech (int16 24 kHz): what was generated while the turn runs, what was kept (its file)
        after."""
        if self._generated_s is not None:
            if "assistant_audio" not in self.files:
                return np.zeros(0, np.int16)
            import soundfile as sf

            return sf.read(self.files["assistant_audio"], dtype="int16")[0]
        return np.concatenate(self.assistant_audio) if self.assistant_audio else np.zeros(0, np.int16)

    def generated_s(self) -> float:
        if self._generated_s is not None:
            return self._generated_s
        return sum(len(a) for a in self.assistant_audio) / OUT_RATE

    def release_media(self) -> None:
        """Once the turn has ended and its files are written: drop the arrays (a 16 MP picture is 48 MB), so a long
        conversation keeps kilobytes per turn in memory; they are read back from the files when asked for."""
        if "user_audio" in self.files:
            self._user_audio = None
        if "image" in self.files:
            self.image = None
        self._generated_s = self.generated_s()
        self.assistant_audio = []


# ---------------------------------------------------------------- engine and sessions


class EngineBusy(ValueError):
    """No new session now: as many as the engine takes are open (a message for the user)."""


def recordings_root(recordings_dir: str | None) -> Path:
    """Where sessions keep their voices, webcam frames and exports: private to this user. By default a new temp
    folder (mode 0700, unpredictable name: no other local user can read it or create it first); a named folder
    is made 0700 if it is new, and one that exists keeps the mode its owner gave it."""
    if recordings_dir is None:
        return Path(tempfile.mkdtemp(prefix="mini-omni2-webui-")).resolve()
    root = Path(recordings_dir).expanduser().resolve()
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    return root


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
        self.event_sink: Callable[[str, dict], None] | None = None  # e.g. a JSONL log for tests

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
            s = Session(self, replace(config or self.config, vad=replace((config or self.config).vad)))
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
        self.asr_pool.shutdown(wait=False, cancel_futures=True)
        self.side_pool.shutdown(wait=False, cancel_futures=True)
        if not self.keep_recordings:  # the temp folder made for this engine goes with it
            shutil.rmtree(self.recordings_dir, ignore_errors=True)


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
        self._playback: deque[np.ndarray] = deque()
        self._play_t0 = 0.0
        self._sent = 0  # samples handed to the transport for the current turn
        self._ducked = False
        self._ducked_at = 0.0
        self._speaking_since: float | None = None
        self._refilling = False  # ran dry while generating: waiting for _refill_s of speech
        self._refill_s = 0.0  # speech to queue before (re)starting playback; set per turn (_start_turn)
        self._early: Job | None = None  # Whisper on the turn as it stands, while its end-of-turn silence runs
        self._early_key: tuple[float, float] | None = None  # (speech start, last speech) it was started for
        self._flush_hooks: list[Callable[[], None]] = []
        self._transports = 0  # live audio outputs; without one, speech is kept for replay only
        self._silence_at: float | None = None
        # barge-in
        self._barge: dict | None = None  # state of the barge-in utterance being heard
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
            if self._barge is not None and det.in_speech:
                self._barge_progress(det, now)
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
                self._playback.clear()
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
        """The next `samples` of speech (int16, 24 kHz) once it is due, or None (silence) after `timeout`.

        Frames are released at real-time pace with a small lead, so "handed out" is "played" to within
        `playback_lead_s`; that is what lets an interruption truncate the answer to what was heard.
        Playback starts once `prebuffer_s` of speech is queued (at once when the answer is complete). When it
        runs dry while the answer is still being generated (a model slower than real time), it pauses until
        twice the last target is queued (at most `max_ahead_s`): a few longer pauses instead of a stutter at
        every chunk, as video players rebuffer. `omni.bench.playback_gaps` models this player.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                now = time.monotonic()
                heard_all = now >= self._play_t0 + self._sent / OUT_RATE
                if self._ducked or self._vetting is not None:
                    wait = deadline - now
                elif not self._playback:
                    if self._job is not None and self._speaking_since is not None and not self._refilling \
                            and heard_all:  # ran dry while generating
                        self._refilling = True
                        self._refill_s = min(2 * self._refill_s, self.config.max_ahead_s)
                        if self._current is not None:
                            self._current.timings["rebuffers"] = self._current.timings.get("rebuffers", 0) + 1
                    self._maybe_finish_playback()
                    wait = deadline - now
                elif (self._speaking_since is None or self._refilling) and self._job is not None \
                        and self._queued_s() < self._refill_s:
                    wait = deadline - now  # let the buffer fill first
                else:
                    if self._speaking_since is None or self._refilling or heard_all:
                        # (re)start, or a gap shorter than one poll: the play clock runs from now
                        self._play_t0 = now - self._sent / OUT_RATE
                        self._refilling = False
                        if self._speaking_since is None:
                            self._speaking_since = now
                    due = self._play_t0 + self._sent / OUT_RATE - self.config.playback_lead_s
                    if now >= due:
                        return self._take(samples)
                    wait = min(due, deadline) - now
                if wait <= 0:
                    return None
                self._cond.wait(wait)

    def _queued_s(self) -> float:
        """Seconds of speech generated and not yet handed to the transport."""
        return sum(len(c) for c in self._playback) / OUT_RATE

    def _take(self, samples: int) -> np.ndarray:
        out = np.zeros(samples, np.int16)
        n = 0
        while n < samples and self._playback:
            chunk = self._playback[0]
            k = min(samples - n, len(chunk))
            out[n : n + k] = chunk[:k]
            if k == len(chunk):
                self._playback.popleft()
            else:
                self._playback[0] = chunk[k:]
            n += k
        self._sent += n
        return out

    def _maybe_finish_playback(self) -> None:
        t = self._current
        if t is not None and not self._playback and self._job is None and not self._ducked:
            # everything generated has been handed out; the turn ends when it has been heard
            if time.monotonic() >= self._play_t0 + self._sent / OUT_RATE or self._sent == 0:
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
        cfg = self.config
        if isinstance(ev, SpeechStarted):
            self._event("speech_started", at=t_wall)
            if not self._assistant_active():
                return
            if self._speaking_since is not None and t_wall < self._speaking_since + cfg.echo_guard_s:
                self._event("onset_ignored_guard")
                self._barge = {"ignored": True, "onset": t_wall}
                return
            self._barge = {"onset": t_wall, "checked_len": 0, "checks": 0, "pending": None, "in_flight": False}
            if cfg.policy == "any":
                self._interrupt("speech", t_wall, None)
            elif cfg.duck_on_speech and self._current is not None:
                self._duck(t_wall)
            return
        if isinstance(ev, (TurnEnded, SpeechDropped)):
            barge = self._barge
            self._barge = None
            if barge is not None and not barge.get("ignored") and self._assistant_active() and isinstance(ev, TurnEnded):
                if cfg.policy == "command":
                    if barge.get("max_checked"):
                        if self._ducked and not barge.get("in_flight"):
                            self._unduck("long speech is not a command")
                    elif barge.get("checked_end", -1) >= ev.t_end - 1e-6:
                        if self._ducked and not barge.get("in_flight"):
                            self._unduck("not a command")
                    else:
                        self._launch_check(ev.audio, ev.t_end, barge, final=True, end_wall=t_wall)
                return
            if barge is not None and self._assistant_active():
                if isinstance(ev, SpeechDropped) and self._ducked and not barge.get("in_flight"):
                    self._unduck("too short")
                return  # speech heard while the assistant was talking is never a new turn
            if barge is not None and barge.get("ignored"):
                return
            if barge is not None and barge.get("command"):
                return  # the stop command itself
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
            self._playback.clear()
            self._speaking_since = None
        turn.status = "cancelled"
        if turn in self.history:
            self.history.remove(turn)
        for path in turn.files.values():
            Path(path).unlink(missing_ok=True)
        self._event("stop_phrase_dropped", source="spoken", index=turn.index)

    def _barge_progress(self, det: TurnDetector, now: float) -> None:
        b = self._barge
        if b is None or b.get("ignored") or self.config.policy != "command" or not self._assistant_active():
            return
        length = det.time - det.speech_start
        paused = det.trailing_silence_s >= self.config.command_pause_s
        if paused and det.last_speech_end > b.get("checked_end", -1):
            b["checked_end"] = det.last_speech_end
            audio = det.current_audio()
            keep = len(audio) - int(det.trailing_silence_s * VAD_RATE)
            self._launch_check(audio[: max(keep, 0)], det.last_speech_end, b, final=False,
                               end_wall=now - det.trailing_silence_s)
        elif length >= self.config.command_max_s and not b.get("max_checked"):
            b["max_checked"] = True
            self._launch_check(det.current_audio(), det.time, b, final=False, end_wall=now)

    def _launch_check(self, audio16k: np.ndarray, t_end: float, barge: dict, final: bool, end_wall: float | None = None) -> None:
        checker = self.engine.checker
        if checker is None:
            if self._ducked:
                self._unduck("no ASR configured")
            return
        turn = self._current
        if barge.get("in_flight"):
            barge["pending"] = (audio16k, t_end, final, end_wall)
            return
        barge["in_flight"] = True
        said = turn.assistant_text if turn else ""
        matcher = self.matcher
        end_wall = end_wall if end_wall is not None else time.monotonic()
        rms = float(np.sqrt(np.mean(audio16k.astype(np.float64) ** 2))) if len(audio16k) else 0.0
        self._event("command_check_started", final=final, audio_s=len(audio16k) / VAD_RATE, rms=round(rms, 4))
        if os.environ.get("WEBUI_DEBUG_AUDIO"):
            import soundfile as sf

            sf.write(self.dir / f"barge_{int(time.time() * 1000)}.wav", audio16k, VAD_RATE)

        def run():
            try:
                res = checker.check(audio16k, said, matcher)
            except Exception as e:
                log.error("command check failed: %s", e)
                res = CommandCheck(False, "", None, 0.0, f"error: {e}")
            self._on_check(res, turn, barge, end_wall, final)

        self.engine.asr_pool.submit(run)

    def _on_check(self, res: CommandCheck, turn: Turn | None, barge: dict, end_wall: float, final: bool) -> None:
        with self._lock:
            barge["in_flight"] = False
            barge["checks"] = barge.get("checks", 0) + 1
            self._event("command_check", is_command=res.is_command, transcript=res.transcript,
                        reason=res.reason, seconds=res.seconds)
            if turn is not self._current or not self._assistant_active():
                return
            if res.is_command:
                barge["command"] = True
                still_speaking = self._barge is barge
                self._interrupt(f"command: {res.transcript}", barge["onset"], res, end_wall)
                if still_speaking:
                    self._barge = barge  # the rest of this utterance is the command, never a new turn
                return
            pending = barge.get("pending")
            barge["pending"] = None
            if pending is not None:
                a, t_end, fin, ew = pending
                self._launch_check(a, t_end, barge, fin, ew)
                return
            still_speaking = self._barge is barge
            if self._ducked and (final or not still_speaking or barge.get("max_checked") or res.reason == "echo"):
                self._unduck(res.reason)

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
        self._play_t0 = time.monotonic() - self._sent / OUT_RATE
        self._event("resumed", why=why)
        self._bump()

    def _silence_after_flush(self, now: float) -> float:
        """When the output goes quiet if nothing more is handed out from `now` on."""
        for fn in list(self._flush_hooks):
            try:
                fn()
            except Exception:
                log.debug("flush hook failed", exc_info=True)
        if self._speaking_since is None:
            return now
        return max(now, self._play_t0 + self._sent / OUT_RATE)

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
        lead = max(0.0, self._play_t0 + self._sent / OUT_RATE - now) if self._speaking_since is not None else 0.0
        played = max(0.0, self._sent / OUT_RATE - (0.0 if was_ducked else lead))
        # without a live player (the Streamlit page, Gradio before its voice stream starts) the text was read as
        # it came and no speech was heard yet: keep what was generated up to now, text and speech
        turn.live = self._transports > 0
        self._playback.clear()
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
            self._playback.clear()
            self._sent = 0
            self._speaking_since = None
            # never more than max_ahead_s: generation pauses there, so playback would wait forever
            self._refilling, self._refill_s = False, min(self.config.prebuffer_s, self.config.max_ahead_s)
            self._ducked = False
            self._barge = None
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
            self._save_inputs(turn)
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
                    self._playback.append(pcm)
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
            return WAIT if self._queued_s() > self.config.max_ahead_s else GO

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
            self._playback.clear()
            self._speaking_since = None
            self._ducked = False
            self._barge = None
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
        self._save_outputs(turn)
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

    def _save_inputs(self, turn: Turn) -> None:
        import soundfile as sf

        if turn.user_audio is not None:
            p = self.dir / f"turn_{turn.index:03d}_user.wav"
            sf.write(p, turn.user_audio, VAD_RATE, subtype="PCM_16")
            turn.files["user_audio"] = str(p)
        if turn.image is not None:
            from PIL import Image

            p = self.dir / f"turn_{turn.index:03d}_image.jpg"
            Image.fromarray(turn.image).save(p, quality=90)
            turn.files["image"] = str(p)

    def _save_outputs(self, turn: Turn) -> None:
        import soundfile as sf

        audio = turn.audio()
        if turn.status == "interrupted" and turn.live:
            audio = audio[: int(turn.played_s * OUT_RATE)]  # keep what was actually heard
        if len(audio):  # nothing heard: no file (an empty one shows as a 0:00 player)
            p = self.dir / f"turn_{turn.index:03d}_assistant.wav"
            sf.write(p, audio, OUT_RATE, subtype="PCM_16")
            turn.files["assistant_audio"] = str(p)

    def transcript(self) -> dict:
        with self._lock:
            turns = []
            for t in self.history:
                turns.append({
                    "index": t.index, "kind": t.kind, "task": t.task, "status": t.status,
                    "user_text": t.user_text, "user_transcript": t.user_transcript,
                    "image_source": t.image_source,
                    "assistant_text": t.assistant_text,
                    "assistant_text_generated": t.full_text or t.assistant_text,
                    "interrupted_by": t.interrupted_by, "played_s": round(t.played_s, 3),
                    "error": t.error,
                    "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t.started_wall)),
                    "timings": {k: v for k, v in t.timings.items() if k not in ("submitted", "speech_end_wall")},
                    "files": {k: Path(v).name for k, v in t.files.items()},
                })
            return {"format": "mini-omni2-webui/1", "session": self.id, "policy": self.config.policy,
                    "multi_turn": self.config.multi_turn, "turns": turns}

    def _transcript_texts(self) -> tuple[str, str]:
        """transcript.json and the readable transcript.md."""
        data = self.transcript()
        md = [f"# Conversation {time.strftime('%Y-%m-%d %H:%M')}", ""]
        for t in data["turns"]:
            user = t["user_text"] or (f"(voice) {t['user_transcript']}" if t["user_transcript"] else "(voice)")
            md.append(f"**You** (turn {t['index']}, {t['task']}): {user}")
            if t["image_source"]:
                md.append(f"  image from {t['image_source']}: {t['files'].get('image', '')}")
            note = f" [interrupted after {t['played_s']:.1f} s: {t['interrupted_by']}]" if t["status"] == "interrupted" else ""
            if t["error"]:
                note += f" [error: {t['error']}]"
            md.append(f"**Omni**: {t['assistant_text']}{note}")
            md.append("")
        return json.dumps(data, indent=2, ensure_ascii=False), "\n".join(md)

    def export_zip(self) -> Path:
        """transcript.json + transcript.md + every audio/image file, zipped inside the session folder (the
        previous export there is replaced: a page may export after every turn)."""
        transcript_json, transcript_md = self._transcript_texts()
        out = self.dir / f"conversation-{time.strftime('%Y%m%d-%H%M%S')}.zip"
        for old in self.dir.glob("conversation-*.zip"):
            if old != out:
                old.unlink(missing_ok=True)
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr("transcript.json", transcript_json)
            z.writestr("transcript.md", transcript_md)
            with self._lock:
                paths = [Path(p) for t in self.history for p in t.files.values()]
            for p in paths:
                if p.exists() and p.resolve().parent == self.dir.resolve():
                    z.write(p, arcname=p.name)
        return out

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
            self._playback.clear()
        if not self.engine.keep_recordings:
            shutil.rmtree(self.dir, ignore_errors=True)
        elif self.history:  # the capture stays complete without an export: the transcript beside its files
            transcript_json, transcript_md = self._transcript_texts()
            (self.dir / "transcript.json").write_text(transcript_json)
            (self.dir / "transcript.md").write_text(transcript_md)


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


def model_timings(stats, throttled_s: float) -> dict:
    """The model's stats, with the time the answer was paused (ahead of playback, or another session's answer
    computing) taken out of the rates."""
    d = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in stats.as_dict().items()}
    busy_decode = max(1e-6, (stats.decode_s or 0.0) - throttled_s)
    d["steps_per_s"] = round(stats.steps / busy_decode, 2) if stats.steps else d.get("steps_per_s")
    d["decode_ms_per_step"] = round(1000 * busy_decode / stats.steps, 1) if stats.steps else None
    if stats.audio_seconds:
        d["real_time_factor"] = round(max(0.0, stats.total_s - throttled_s) / stats.audio_seconds, 3)
    d["throttled_s"] = round(throttled_s, 3)
    return d


def slow_speech_hint(rebuffers: int, real_time_factor: float | None, model) -> str:
    """What to tell a user whose answer paused because the model made its speech slower than it plays (a fp32
    model on a small CPU); "" when playback did not pause or the pauses had another cause (then the rate,
    measured without the time the answer waited for others, is below 1)."""
    if not rebuffers or real_time_factor is None or real_time_factor <= 1.0:
        return ""
    device = getattr(model, "device", None)
    if getattr(device, "type", device) == "cpu" and not getattr(model, "quantize", None):
        fix = "start the app with --quantize int8 (2-3x faster on a CPU; fp32 is the exact mode)"
    else:
        fix = "raise the playback prebuffer (--prebuffer; on the Gradio page also in its settings)"
    times = "once" if rebuffers == 1 else f"{rebuffers} times"
    return (f"Speech paused {times}: this machine makes speech slower than it plays (real-time factor "
            f"{real_time_factor:.2f}). For speech without pauses, {fix}.")


def truncate_text(turn: Turn, played_s: float) -> str:
    """The part of the answer text that belongs to the audio actually played.

    Text runs ahead of speech in Mini-Omni's parallel decoding; each text delta is stamped with how much
    audio existed when it arrived, and the text whose stamp is within what was played is kept.
    """
    if not turn.text_marks:
        return turn.assistant_text
    keep = 0
    for audio_s, length in turn.text_marks:
        if audio_s <= played_s + 1e-6:
            keep = length
    if keep == 0 and played_s > 0:
        keep = turn.text_marks[0][1]
    return turn.assistant_text[:keep].rstrip() + ("…" if keep < len(turn.assistant_text) else "")


# ---------------------------------------------------------------- input validation


def load_audio(audio) -> tuple[int, np.ndarray]:
    """(sr, array) or a file path -> (sr, float32 mono); clear errors for bad uploads."""
    if isinstance(audio, (str, Path)):
        import soundfile as sf

        p = Path(audio)
        if not p.is_file():
            raise ValueError("The audio file could not be found.")
        try:
            info = sf.info(str(p))
            if info.duration > MAX_UPLOAD_AUDIO_S:
                raise ValueError(f"The audio is {info.duration:.0f} s long; the limit is {MAX_UPLOAD_AUDIO_S:.0f} s.")
            a, sr = sf.read(str(p), dtype="float32", always_2d=True)
        except ValueError:
            raise
        except Exception:
            try:
                import warnings

                import librosa

                with warnings.catch_warnings():  # librosa warns before falling back to audioread (mp3, m4a)
                    warnings.simplefilter("ignore")
                    a, sr = librosa.load(str(p), sr=16000, mono=True, duration=MAX_UPLOAD_AUDIO_S + 1)
                a = a[:, None]
            except Exception:
                raise ValueError("That file is not audio I can read (try WAV, FLAC, OGG or MP3).") from None
        a = a.mean(axis=1)
    else:
        try:
            sr, a = audio
        except (TypeError, ValueError):
            raise ValueError("Audio must be a file or a (sample_rate, samples) pair.") from None
        a = to_float32(np.asarray(a))
        if a.ndim > 1:
            a = a.reshape(-1)
    sr = int(sr)
    if not 4000 <= sr <= 192000:
        raise ValueError(f"Unsupported sample rate {sr} Hz.")
    if len(a) / sr > MAX_UPLOAD_AUDIO_S:
        raise ValueError(f"The audio is {len(a) / sr:.0f} s long; the limit is {MAX_UPLOAD_AUDIO_S:.0f} s.")
    if len(a) < sr * 0.1 or not np.isfinite(a).all() or float(np.abs(a).max(initial=0)) < 1e-4:
        raise ValueError("The audio is empty or silent.")
    return sr, a.astype(np.float32)


IMAGE_TOO_LARGE = "The image is too large (over 16 megapixels)."
NOT_AN_IMAGE = "That file is not an image I can read (try PNG or JPEG)."


def _read_image_file(path) -> np.ndarray | None:
    """An image file (path or binary file object) -> HxWx3 uint8, or None when it is too large (known from the
    header, before decoding)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the size is checked right here
            im = Image.open(path)
        with im:
            if im.width * im.height > MAX_IMAGE_PIXELS:
                return None
            return np.asarray(im.convert("RGB"))
    except Image.DecompressionBombError:  # PIL refuses headers over ~179 megapixels outright
        return None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):  # not an image, truncated, corrupt
        raise ValueError(NOT_AN_IMAGE) from None


def load_image(image) -> np.ndarray:
    """Path, binary file object (an upload's bytes), PIL image or array -> HxWx3 uint8; clear errors for bad
    uploads."""
    from PIL import Image

    if isinstance(image, (str, Path)) or hasattr(image, "read"):
        a = _read_image_file(image)
        if a is None:
            raise ValueError(IMAGE_TOO_LARGE)
    elif isinstance(image, Image.Image):
        a = np.asarray(image.convert("RGB"))
    else:
        try:
            a = np.asarray(image)
        except (TypeError, ValueError):
            raise ValueError(NOT_AN_IMAGE) from None
    if a.ndim == 2:
        a = np.stack([a] * 3, axis=-1)
    if a.ndim != 3 or a.shape[2] not in (3, 4) or a.shape[0] < 8 or a.shape[1] < 8:
        raise ValueError("The image must be a colour picture at least 8x8 pixels.")
    if a.shape[0] * a.shape[1] > MAX_IMAGE_PIXELS:
        raise ValueError(IMAGE_TOO_LARGE)
    if a.dtype != np.uint8:
        a = np.clip(a * (255 if a.max() <= 1.0 else 1), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(a[..., :3])


def wav_bytes(audio: np.ndarray, rate: int) -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, audio, rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()
