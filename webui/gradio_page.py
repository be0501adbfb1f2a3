"""The Gradio page: its layout, what each control does, and how a session's state is shown. Everything
conversational is the session's (webui/session.py); the app object (webui/gradio_app.py) loads the model and keeps
the sessions."""

from __future__ import annotations

import html
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

import numpy as np

from .config import EngineConfig, policy_warning
from .interrupt import parse_phrases
from .startup import LATENCY_COLUMNS, latency_row
from .uploads import NOT_AN_IMAGE

if TYPE_CHECKING:
    from .gradio_app import OmniApp

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


# ------------------------------------------------------------------------------ what the controls do


class Handlers:
    """The page's event handlers, each given the page's session id first."""

    def __init__(self, app):
        self.app = app

    def session(self, sid):
        return self.app.session(sid)

    def need_session(self, sid):
        s = self.session(sid)
        if s is None:
            app = self.app
            raise Refused(app.refusal(sid) or app.error or "The model is still loading — try again in a moment.")
        return s

    def on_load(self):
        return self.app.new_id()

    def tick(self, sid, last_version):
        import gradio as gr

        app, s = self.app, self.session(sid)
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

    def send_text(self, sid, text, mode, image):
        self.need_session(sid).send_text(text, speak=(mode == "speech"), image=checked_upload(image))
        return ""

    def send_upload(self, sid, audio, image, mode):
        self.need_session(sid).send_upload(audio=audio, image=checked_upload(image), speak=(mode == "speech"))
        return None

    def on_frame(self, sid, frame):
        s = self.session(sid)
        if s is not None and frame is not None:
            s.set_camera_frame(np.asarray(frame))

    def camera_off(self, sid):
        s = self.session(sid)
        if s is not None:
            s.set_camera_frame(None)

    def stop(self, sid):
        s = self.session(sid)
        if s is not None:
            s.interrupt("stop button")

    def export(self, sid):
        import gradio as gr

        s = self.need_session(sid)
        if not s.history:
            raise Refused("Nothing to export yet.")
        return gr.update(value=str(s.export_zip()), visible=True)

    def clear(self, sid):
        s = self.session(sid)
        if s is not None:
            s.clear()
        return [], latency_html([])

    def settings(self, sid, policy, phrases, duck, end_silence, onset, pre_roll, threshold, guard, multi_turn,
                 max_tokens, prebuffer):
        import gradio as gr

        try:
            s = self.need_session(sid)
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
        warning = policy_warning(c.policy, self.app.engine.model)
        return (f"Settings applied: policy {c.policy}; stop phrases: {', '.join(ph)}; end-of-turn silence "
                f"{c.vad.end_silence_s:g} s; max new tokens {c.max_new_tokens}; playback prebuffer {c.prebuffer_s:g} s."
                + (f" ⚠️ {warning}" if warning else ""))


def refusing(fn):
    """Bad input becomes a warning toast and the inputs stay as they were (gr.Error would also paint an "Error"
    pill over every output box, hiding the text the user typed)."""
    def handler(*args):
        import gradio as gr

        try:
            return fn(*args)
        except (Refused, ValueError) as e:
            gr.Warning(str(e))
            return gr.skip()
    return handler


# ------------------------------------------------------------------------------ the layout


def build_ui(app, title: str = "Mini-Omni2", banner: str | None = None):
    """The page: its layout, then each control wired to its handler."""
    import gradio as gr

    with gr.Blocks(title=title, css=CSS, head=HEAD_JS, theme=gr.themes.Soft()) as demo:
        ui = SimpleNamespace(sid=gr.State(None, delete_callback=lambda v: app.close_session(v)), version=gr.State(-1),
                             # a change pauses replays playing in the page (the browser-side flush)
                             interrupts=gr.Number(0, visible=False))
        gr.Markdown(f"# {title}\nTalk, show your webcam, upload a picture or type. Answers stream as speech and text; "
                    "say **“stop omni”** to interrupt.")
        if banner:
            gr.Markdown(banner, elem_id="banner-random")
        gr.HTML("<div id='media-error' role='alert'></div>")
        ui.status = gr.Markdown(f"**{app.status}**", elem_id="status-line")
        with gr.Row():
            with gr.Column(scale=5):
                _inputs(ui)
            with gr.Column(scale=7):
                _conversation(ui)
        ui.latency = gr.HTML(latency_html([]), elem_id="latency")
        _settings(ui, EngineConfig.from_options(app.opts))
        _wire(demo, ui, Handlers(app), app)
    return demo


def _inputs(ui) -> None:
    import gradio as gr
    from fastrtc import WebRTC

    ui.voice = WebRTC(modality="audio", mode="send-receive", label="Voice (click to start talking)", elem_id="voice",
                      full_screen=False, server_rtc_configuration={"iceServers": []},
                      track_constraints={"echoCancellation": True, "noiseSuppression": True, "autoGainControl": True,
                                         "sampleRate": {"ideal": 48000}})
    ui.webcam = gr.Image(sources=["webcam"], streaming=True, type="numpy", label="Webcam (live; the latest frame goes "
                         "with each spoken turn)", elem_id="webcam")
    with gr.Row():
        ui.text = gr.Textbox(placeholder="Type a message and press Enter", show_label=False, scale=4,
                             elem_id="text-in", max_lines=8)
        ui.send = gr.Button("Send", variant="primary", scale=1, elem_id="send")
    ui.mode = gr.Radio(["speech", "text"], value="speech", label="Answer as", elem_id="mode")
    with gr.Accordion("Upload audio / image", open=False):
        ui.up_image = image_upload(label="Image", elem_id="upload-image", height=200)
        ui.up_audio = gr.Audio(sources=["upload"], type="filepath", label="Audio question", elem_id="upload-audio")
        ui.up_send = gr.Button("Ask with upload", elem_id="upload-send")
        examples = [p for p in sorted((ASSETS / "examples").glob("*.wav")) if not p.stem.startswith("stop")]
        ex_img = ASSETS / "examples" / "house.png"
        if examples:
            gr.Examples([[str(p), str(ex_img) if "image" in p.stem and ex_img.exists() else None] for p in examples],
                        inputs=[ui.up_audio, ui.up_image], label="Examples")


def _conversation(ui) -> None:
    import gradio as gr

    ui.chat = gr.Chatbot(type="messages", label="Conversation", height=460, elem_id="chat", show_copy_button=True)
    ui.last_audio = gr.Audio(label="Last answer (plays here when the voice connection is off)", autoplay=True,
                             interactive=False, elem_id="last-answer", visible=True)
    with gr.Row():
        ui.stop = gr.Button("⏹ Stop answer", elem_id="stop")
        ui.clear = gr.Button("Clear", elem_id="clear")
        ui.export = gr.Button("⬇ Export conversation", elem_id="export")
    ui.export_file = gr.File(label="Export (zip)", elem_id="export-file", interactive=False, height=90,
                             visible=False)  # shown once there is a zip to download


def _settings(ui, cfg: EngineConfig) -> None:
    import gradio as gr

    with gr.Accordion("Interruption and turn-taking settings", open=False):
        with gr.Row():
            ui.policy = gr.Radio(["command", "any", "off", "model"], value=cfg.policy, label="Barge-in policy",
                                 info="command: only stop phrases interrupt · any: any speech interrupts and becomes "
                                      "the next turn · off: half-duplex (use with speakers, no headset) · model: the "
                                      "model's own stop signal (checkpoints trained for it)")
            ui.phrases = gr.Textbox(", ".join(cfg.phrases), label="Stop phrases (comma-separated)",
                                    elem_id="phrases", lines=2)
            ui.duck = gr.Checkbox(cfg.duck_on_speech, label="Pause playback while I speak (resume if not a command)")
        with gr.Row():
            ui.end_silence = gr.Slider(0.2, 2.0, cfg.vad.end_silence_s, step=0.05, label="End-of-turn silence (s)")
            ui.onset = gr.Slider(0.032, 0.5, cfg.vad.onset_s, step=0.032, label="Speech onset (s)")
            ui.pre_roll = gr.Slider(0.0, 1.0, cfg.vad.pre_roll_s, step=0.05, label="Pre-roll (s)")
            ui.threshold = gr.Slider(0.2, 0.9, cfg.vad.threshold, step=0.05, label="VAD threshold")
            ui.guard = gr.Slider(0.0, 2.0, cfg.echo_guard_s, step=0.1, label="Echo guard after playback starts (s)")
        with gr.Row():
            ui.multi_turn = gr.Checkbox(cfg.multi_turn, label="Multi-turn context (typed turns; the official weights "
                                        "are single-turn)")
            ui.max_tokens = gr.Slider(16, 2048, cfg.max_new_tokens, step=16, label="Max new tokens")
            ui.prebuffer = gr.Slider(0.0, 2.0, cfg.prebuffer_s, step=0.05, label="Playback prebuffer (s)",
                                     info="speech queued before playback starts: more is smoother on a slow machine",
                                     elem_id="prebuffer")
            ui.apply = gr.Button("Apply settings", elem_id="apply")
        ui.settings_note = gr.Markdown(elem_id="settings-note")


def _wire(demo, ui, h: Handlers, app) -> None:
    import gradio as gr

    from .gradio_app import make_voice_handler

    sid = ui.sid
    demo.load(h.on_load, outputs=[sid])
    timer = gr.Timer(0.25)
    timer.tick(h.tick, [sid, ui.version], [ui.chat, ui.status, ui.latency, ui.version, ui.last_audio, ui.interrupts],
               show_progress="hidden", concurrency_limit=None, queue=True)
    ui.interrupts.change(None, None, None, js=PAUSE_REPLAYS_JS)
    ui.voice.stream(fn=make_voice_handler(app), inputs=[ui.voice, sid], outputs=[ui.voice], time_limit=None,
                    concurrency_limit=app.opts.max_voice)
    ui.webcam.stream(h.on_frame, [sid, ui.webcam], None, stream_every=0.5, time_limit=None, show_progress="hidden",
                     concurrency_limit=None)
    ui.webcam.clear(h.camera_off, [sid], None)
    send_text = refusing(h.send_text)
    ui.text.submit(send_text, [sid, ui.text, ui.mode, ui.up_image], [ui.text], js=None)
    ui.send.click(send_text, [sid, ui.text, ui.mode, ui.up_image], [ui.text])
    ui.up_send.click(refusing(h.send_upload), [sid, ui.up_audio, ui.up_image, ui.mode], [ui.up_audio])
    ui.stop.click(h.stop, [sid], None, js=PAUSE_REPLAYS_JS)
    ui.clear.click(h.clear, [sid], [ui.chat, ui.latency])
    ui.export.click(refusing(h.export), [sid], [ui.export_file])
    ui.apply.click(h.settings, [sid, ui.policy, ui.phrases, ui.duck, ui.end_silence, ui.onset, ui.pre_roll,
                                ui.threshold, ui.guard, ui.multi_turn, ui.max_tokens, ui.prebuffer],
                   [ui.settings_note])
