"""Gradio 5 UI over the conversation engine: WebRTC voice (fastrtc), live webcam, uploads, text, chat,
latency panel, settings and export. Everything conversational lives in `webui.engine`; this file only
wires components to a `Session` and renders its snapshot.
"""

from __future__ import annotations

import atexit
import html
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

import numpy as np

from .config import EngineConfig
from .engine import Engine, EngineBusy
from .session import Session
from .interrupt import parse_phrases
from .rtc import allow_loopback_ice
from .startup import LATENCY_COLUMNS, latency_row, start_engine
from .uploads import NOT_AN_IMAGE

log = logging.getLogger("webui")

ASSETS = Path(__file__).resolve().parents[1] / "assets"

# Wrap getUserMedia so a refused microphone or camera becomes a readable message instead of a dead widget.
HEAD_JS = """
<script>
(() => {
  const md = navigator.mediaDevices;
  if (!md || !md.getUserMedia || md.__omniWrapped) return;
  const orig = md.getUserMedia.bind(md);
  md.__omniWrapped = true;
  md.getUserMedia = async (c) => {
    try { return await orig(c); }
    catch (e) {
      const what = c && c.video && !c.audio ? 'Camera' : (c && c.audio && !c.video ? 'Microphone' : 'Microphone/camera');
      const box = document.getElementById('media-error');
      const msg = (e && (e.name === 'NotAllowedError' || e.name === 'SecurityError'))
        ? `${what} permission was denied. Allow it in the browser's site settings (or open the page over https / localhost), or use the text box and uploads instead.`
        : `${what} is not available (${e && e.name}: ${e && e.message}). You can still type or upload.`;
      if (box) { box.textContent = msg; box.style.display = 'block'; }
      throw e;
    }
  };
})();
</script>
"""

# Pause recorded answers playing in the page: plain <audio> elements, and Gradio's waveform players (their audio
# is not in the DOM, so their own Pause button is pressed). The live WebRTC stream (srcObject) is left alone.
PAUSE_REPLAYS_JS = """() => {
  document.querySelectorAll('audio').forEach(a => { if (!a.srcObject) { a.pause(); } });
  document.querySelectorAll('[data-testid="waveform-controls"] button[aria-label="Pause"]').forEach(b => b.click());
}"""

CSS = """
#media-error { display:none; background:#fde8e8; color:#9b1c1c; padding:8px 12px; border-radius:6px; }
#banner-random { background:#fff4d6; color:#7a4b00; padding:8px 12px; border-radius:6px; font-weight:600; }
#status-line { min-height: 1.6em; }
#status-line, #status-line * { opacity: 1 !important; transition: none !important; }  /* no dimming on each tick */
#latency .latency-scroll { overflow-x: auto; }  /* a narrow page scrolls the panel; no value is cut */
#latency table { font-size: 0.85em; border-collapse: collapse; width: 100%; }
#latency caption { caption-side: top; text-align: left; padding: 0 0 6px; color: var(--block-label-text-color); }
#latency th, #latency td { padding: 4px 8px; border: 1px solid var(--border-color-primary); text-align: left; }
#latency td { white-space: nowrap; font-family: var(--font-mono); }  /* headers may wrap, values never */
"""


LATENCY_CAPTION = ("Latency per turn (prefill: encoders + prompt; first audio: from the end of your speech; ms/step: "
                   "one batch-of-2 decode step; peak RSS: the app process; onset→silence: from your barge-in to quiet "
                   "output)")


class UnreadableImage:
    """What an image box hands on for an upload Gradio itself could not take apart (a handler says so)."""


class Refused(Exception):
    """A request the UI turns down with a message (bad input, model not loaded)."""


def checked_upload(image):
    if isinstance(image, UnreadableImage):
        raise Refused(NOT_AN_IMAGE)
    return image


def image_upload(**kwargs):
    """gr.Image for uploads and pastes whose handlers get the file's path undecoded, so the engine's own reading
    gives the message ("not an image", "too large") where gr.Image would decode first and fail with a traceback
    (or spend ~10 s decoding a 150-megapixel picture before the size check). Same browser component.

    The instance's `preprocess` is replaced rather than subclassing: Gradio's component metaclass writes a .pyi
    file next to the module of every component subclass."""
    import gradio as gr

    box = gr.Image(sources=["upload", "clipboard"], type="filepath", **kwargs)
    decode = box.preprocess

    def preprocess(payload):
        if payload is None or payload.path:
            return None if payload is None else payload.path  # a file Gradio checked into its upload cache
        try:  # an inline (data: URL) image
            return decode(payload)
        except Exception:
            return UnreadableImage()

    box.preprocess = preprocess
    return box


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


def render_chat(turns) -> list[dict]:
    msgs: list[dict] = []
    for t in turns:
        if t.kind == "voice" or t.kind == "upload":
            dur = t.user_audio_s
            label = "🎤 voice" if t.kind == "voice" else "📎 audio upload"
            said = f": “{t.user_transcript}”" if t.user_transcript else ""
            msgs.append({"role": "user", "content": f"{label} ({dur:.1f} s){said}"})
            if "user_audio" in t.files:
                msgs.append({"role": "user", "content": {"path": t.files["user_audio"]}})
        else:
            msgs.append({"role": "user", "content": t.user_text})
        if "image" in t.files:
            msgs.append({"role": "user", "content": {"path": t.files["image"],
                                                     "alt_text": f"{t.image_source} frame used for this turn"}})
        text = t.assistant_text
        if t.status in ("queued",):
            text = text or "⏳ waiting for the model…"
        elif t.status in ("running", "speaking"):
            text = (text or "") + " ▌"
        elif t.status == "interrupted":
            text = (text or "") + f"\n\n*— interrupted after {t.played_s:.1f} s ({t.interrupted_by})*"
        elif t.status == "error":
            text = (text + "\n\n" if text else "") + f"⚠️ {t.error}"
        msgs.append({"role": "assistant", "content": text or "(no text)"})
        if "assistant_audio" in t.files:
            msgs.append({"role": "assistant", "content": {"path": t.files["assistant_audio"]}})
    return msgs


def latency_html(turns) -> str:
    """The latency panel as a plain table: each column is as wide as its longest value, so a status that becomes
    "interrupted" is shown whole (gr.Dataframe keeps the widths measured for earlier values and cuts it)."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in LATENCY_COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>"
                   for row in map(latency_row, turns))
    return (f"<div class='latency-scroll'><table><caption>{html.escape(LATENCY_CAPTION)}</caption>"
            f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>")


def render_status(app: OmniApp, snap: dict | None) -> str:
    if app.engine is None:
        return f"**{app.status}**"
    if snap is None:
        return f"**{app.status}**"
    parts = []
    q = snap["queue_position"]
    if snap["active"]:
        if q and q > 0:
            parts.append(f"⏳ waiting for the model — position {q} in the queue")
        elif snap["ducked"]:
            parts.append("⏸ paused while you speak (checking for a stop command)")
        else:
            parts.append("🗣 answering")
    elif snap["listening"]:
        parts.append("🎙 hearing you…")
    else:
        parts.append("✅ ready")
    if snap["camera_on"]:
        parts.append("📷 camera on")
    if snap["notice"]:
        parts.append(snap["notice"])
    return f"{app.status}  \n**{' · '.join(parts)}**"


# ------------------------------------------------------------------------------ the voice transport


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


def build_ui(app: OmniApp, title: str = "Mini-Omni2", banner: str | None = None):
    import gradio as gr
    from fastrtc import WebRTC

    def sess(sid):
        return app.session(sid)

    def on_load():
        return app.new_id()

    def tick(sid, last_version):
        s = sess(sid)
        if s is None:
            busy = app.refusal(sid)
            status = f"**⏳ {busy}**" if busy else render_status(app, None)
            return gr.skip(), status, gr.skip(), last_version, gr.skip(), gr.skip()
        snap = s.snapshot()
        status = render_status(app, snap)
        if snap["version"] == last_version:
            return gr.skip(), status, gr.skip(), last_version, gr.skip(), gr.skip()
        turns = snap["turns"]
        last_audio = gr.skip()
        if turns and not s.live_audio:
            t = turns[-1]
            if t.status == "done" and "assistant_audio" in t.files:
                last_audio = t.files["assistant_audio"]  # no live voice connection: play the answer here
        return render_chat(turns), status, latency_html(turns), snap["version"], last_audio, s.interrupts

    def need_session(sid) -> Session:
        s = sess(sid)
        if s is None:
            raise Refused(app.refusal(sid) or app.error or "The model is still loading — try again in a moment.")
        return s

    def refusing(fn):
        """Bad input becomes a warning toast and the inputs stay as they were (gr.Error would also paint an
        "Error" pill over every output box, hiding the text the user typed)."""
        def handler(*args):
            try:
                return fn(*args)
            except (Refused, ValueError) as e:
                gr.Warning(str(e))
                return gr.skip()
        return handler

    @refusing
    def send_text(sid, text, mode, image):
        s = need_session(sid)
        s.send_text(text, speak=(mode == "speech"), image=checked_upload(image))
        return ""

    @refusing
    def send_upload(sid, audio, image, mode):
        s = need_session(sid)
        s.send_upload(audio=audio, image=checked_upload(image), speak=(mode == "speech"))
        return None

    def on_frame(sid, frame):
        s = sess(sid)
        if s is not None and frame is not None:
            s.set_camera_frame(np.asarray(frame))

    def camera_off(sid):
        s = sess(sid)
        if s is not None:
            s.set_camera_frame(None)

    def stop(sid):
        s = sess(sid)
        if s is not None:
            s.interrupt("stop button")

    @refusing
    def export(sid):
        s = need_session(sid)
        if not s.history:
            raise Refused("Nothing to export yet.")
        return gr.update(value=str(s.export_zip()), visible=True)

    def clear(sid):
        s = sess(sid)
        if s is not None:
            s.clear()
        return [], latency_html([])

    def settings(sid, policy, phrases, duck, end_silence, onset, pre_roll, threshold, guard, multi_turn, max_tokens,
                 prebuffer):
        try:
            s = need_session(sid)
            ph = parse_phrases(phrases)
            if not ph:
                raise Refused("Give at least one stop phrase (comma-separated).")
            s.update_config(policy=policy, phrases=ph, duck_on_speech=bool(duck), end_silence_s=float(end_silence),
                            onset_s=float(onset), pre_roll_s=float(pre_roll), threshold=float(threshold),
                            echo_guard_s=float(guard), multi_turn=bool(multi_turn), max_new_tokens=int(max_tokens),
                            prebuffer_s=float(prebuffer))
        except (Refused, ValueError) as e:
            gr.Warning(str(e))
            return f"⚠️ Not applied: {e}"
        c = s.config  # the values in force (a slider's number box can show more than its range allows)
        return (f"Settings applied: policy {c.policy}; stop phrases: {', '.join(ph)}; end-of-turn silence "
                f"{c.vad.end_silence_s:g} s; max new tokens {c.max_new_tokens}; playback prebuffer {c.prebuffer_s:g} s.")

    cfg = EngineConfig.from_options(app.opts)
    with gr.Blocks(title=title, css=CSS, head=HEAD_JS, theme=gr.themes.Soft()) as demo:
        sid = gr.State(None, delete_callback=lambda v: app.close_session(v))
        version = gr.State(-1)
        interrupts = gr.Number(0, visible=False)  # a change pauses replays playing in the page (browser-side flush)
        gr.Markdown(f"# {title}\nTalk, show your webcam, upload a picture or type. Answers stream as speech and text; "
                    "say **“stop omni”** to interrupt.")
        if banner:
            gr.Markdown(banner, elem_id="banner-random")
        gr.HTML("<div id='media-error' role='alert'></div>")
        status = gr.Markdown(f"**{app.status}**", elem_id="status-line")
        with gr.Row():
            with gr.Column(scale=5):
                voice = WebRTC(modality="audio", mode="send-receive", label="Voice (click to start talking)",
                               elem_id="voice", full_screen=False, server_rtc_configuration={"iceServers": []},
                               track_constraints={"echoCancellation": True, "noiseSuppression": True,
                                                  "autoGainControl": True, "sampleRate": {"ideal": 48000}})
                webcam = gr.Image(sources=["webcam"], streaming=True, type="numpy", label="Webcam (live; the latest "
                                  "frame goes with each spoken turn)", elem_id="webcam")
                with gr.Row():
                    text = gr.Textbox(placeholder="Type a message and press Enter", show_label=False, scale=4,
                                      elem_id="text-in", max_lines=8)
                    send = gr.Button("Send", variant="primary", scale=1, elem_id="send")
                mode = gr.Radio(["speech", "text"], value="speech", label="Answer as", elem_id="mode")
                with gr.Accordion("Upload audio / image", open=False):
                    up_image = image_upload(label="Image", elem_id="upload-image", height=200)
                    up_audio = gr.Audio(sources=["upload"], type="filepath", label="Audio question",
                                        elem_id="upload-audio")
                    up_send = gr.Button("Ask with upload", elem_id="upload-send")
                    examples = [p for p in sorted((ASSETS / "examples").glob("*.wav")) if not p.stem.startswith("stop")]
                    ex_img = ASSETS / "examples" / "house.png"
                    if examples:
                        gr.Examples([[str(p), str(ex_img) if "image" in p.stem and ex_img.exists() else None]
                                     for p in examples], inputs=[up_audio, up_image], label="Examples")
            with gr.Column(scale=7):
                chat = gr.Chatbot(type="messages", label="Conversation", height=460, elem_id="chat",
                                  show_copy_button=True)
                last_audio = gr.Audio(label="Last answer (plays here when the voice connection is off)",
                                      autoplay=True, interactive=False, elem_id="last-answer", visible=True)
                with gr.Row():
                    stop_btn = gr.Button("⏹ Stop answer", elem_id="stop")
                    clear_btn = gr.Button("Clear", elem_id="clear")
                    export_btn = gr.Button("⬇ Export conversation", elem_id="export")
                export_file = gr.File(label="Export (zip)", elem_id="export-file", interactive=False, height=90,
                              visible=False)  # shown once there is a zip to download
        latency = gr.HTML(latency_html([]), elem_id="latency")
        with gr.Accordion("Interruption and turn-taking settings", open=False):
            with gr.Row():
                policy = gr.Radio(["command", "any", "off"], value=cfg.policy, label="Barge-in policy",
                                  info="command: only stop phrases interrupt · any: any speech interrupts and becomes "
                                       "the next turn · off: half-duplex (use with speakers, no headset)")
                phrases = gr.Textbox(", ".join(cfg.phrases), label="Stop phrases (comma-separated)",
                                     elem_id="phrases", lines=2)
                duck = gr.Checkbox(cfg.duck_on_speech, label="Pause playback while I speak (resume if not a command)")
            with gr.Row():
                end_silence = gr.Slider(0.2, 2.0, cfg.vad.end_silence_s, step=0.05, label="End-of-turn silence (s)")
                onset = gr.Slider(0.032, 0.5, cfg.vad.onset_s, step=0.032, label="Speech onset (s)")
                pre_roll = gr.Slider(0.0, 1.0, cfg.vad.pre_roll_s, step=0.05, label="Pre-roll (s)")
                threshold = gr.Slider(0.2, 0.9, cfg.vad.threshold, step=0.05, label="VAD threshold")
                guard = gr.Slider(0.0, 2.0, cfg.echo_guard_s, step=0.1, label="Echo guard after playback starts (s)")
            with gr.Row():
                multi_turn = gr.Checkbox(cfg.multi_turn, label="Multi-turn context (typed turns; the official "
                                         "weights are single-turn)")
                max_tokens = gr.Slider(16, 2048, cfg.max_new_tokens, step=16, label="Max new tokens")
                prebuffer = gr.Slider(0.0, 2.0, cfg.prebuffer_s, step=0.05, label="Playback prebuffer (s)",
                                      info="speech queued before playback starts: more is smoother on a slow machine",
                                      elem_id="prebuffer")
                apply = gr.Button("Apply settings", elem_id="apply")
            settings_note = gr.Markdown(elem_id="settings-note")

        demo.load(on_load, outputs=[sid])
        timer = gr.Timer(0.25)
        timer.tick(tick, [sid, version], [chat, status, latency, version, last_audio, interrupts],
                   show_progress="hidden", concurrency_limit=None, queue=True)
        interrupts.change(None, None, None, js=PAUSE_REPLAYS_JS)
        voice.stream(fn=make_voice_handler(app), inputs=[voice, sid], outputs=[voice], time_limit=None,
                     concurrency_limit=app.opts.max_voice)
        webcam.stream(on_frame, [sid, webcam], None, stream_every=0.5, time_limit=None, show_progress="hidden",
                      concurrency_limit=None)
        webcam.clear(camera_off, [sid], None)
        text.submit(send_text, [sid, text, mode, up_image], [text], js=None)
        send.click(send_text, [sid, text, mode, up_image], [text])
        up_send.click(send_upload, [sid, up_audio, up_image, mode], [up_audio])
        stop_btn.click(stop, [sid], None, js=PAUSE_REPLAYS_JS)
        clear_btn.click(clear, [sid], [chat, latency])
        export_btn.click(export, [sid], [export_file])
        apply.click(settings, [sid, policy, phrases, duck, end_silence, onset, pre_roll, threshold, guard,
                               multi_turn, max_tokens, prebuffer], [settings_note])
    return demo


def private_gradio_cache() -> None:
    """Gradio copies every file the page shows (voices, webcam frames, answers) and every upload into its cache,
    by default /tmp/gradio: shared by all local users and readable by them. Unless GRADIO_TEMP_DIR names one, use
    a new private folder (0700) for this run, removed at exit. Gradio reads the variable when the page is built."""
    if not os.environ.get("GRADIO_TEMP_DIR"):
        folder = tempfile.mkdtemp(prefix="mini-omni2-gradio-")
        atexit.register(shutil.rmtree, folder, True)
        os.environ["GRADIO_TEMP_DIR"] = folder


def launch(app: OmniApp, host: str = "127.0.0.1", port: int = 7860, share: bool = False, banner: str | None = None,
           max_file_size: str = "25mb") -> None:
    allow_loopback_ice()
    private_gradio_cache()
    demo = build_ui(app, banner=banner)
    demo.queue(default_concurrency_limit=8)
    app.page = demo  # each session's folder is allowed while it is open (OmniApp._serve), not the recordings root
    demo.launch(server_name=host, server_port=port, share=share, max_file_size=max_file_size,
                show_api=False, favicon_path=None)
