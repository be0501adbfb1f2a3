"""A thin Streamlit UI over the same conversation engine: typed, recorded (microphone) and uploaded questions,
a webcam photo or uploaded picture with a spoken question, the answer streamed as text, then its speech.

    streamlit run webui/streamlit_app.py -- --checkpoint tiny
    python app.py --ui streamlit --checkpoint tiny

Live streaming voice and barge-in are in the Gradio app (WebRTC); here each question is a whole recording.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `streamlit run` starts in this folder

import numpy as np  # noqa: E402
import streamlit as st  # noqa: E402

from omni.tiny import is_test_checkpoint  # noqa: E402
from webui.engine import Engine, EngineConfig, Session, load_audio, load_image  # noqa: E402

TINY_BANNER = "⚠️ Random weights — answers are noise (tiny test checkpoint)."
MAX_UPLOAD_MB = 25


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Mini-Omni2 Streamlit UI")
    p.add_argument("--checkpoint", default=os.environ.get("OMNI_CHECKPOINT", "checkpoints"))
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--quantize", default=None)
    p.add_argument("--max-new-tokens", type=int, default=int(os.environ.get("OMNI_MAX_NEW_TOKENS", "512")))
    p.add_argument("--multi-turn", action="store_true")
    p.add_argument("--recordings", default=None)
    args, _ = p.parse_known_args()
    return args


@st.cache_resource(show_spinner="Loading the model (once for all sessions)…")
def get_engine(checkpoint: str, device: str, dtype: str, quantize: str | None, max_new_tokens: int,
               multi_turn: bool = False, recordings: str | None = None) -> Engine:
    import omni

    if checkpoint == "tiny":
        from webui.gradio_app import tiny_checkpoint_dir

        checkpoint = str(tiny_checkpoint_dir())
    model = omni.load_model(checkpoint, device=device, dtype=dtype, quantize=quantize)
    # no live microphone here, so no stop-command ASR is needed
    return Engine(model, EngineConfig(max_new_tokens=max_new_tokens, multi_turn=multi_turn).validate(),
                  transcriber=None, recordings_dir=recordings)


def session(engine: Engine) -> Session:
    s = st.session_state.get("omni_session")
    if s is None or s.closed:
        s = st.session_state["omni_session"] = engine.new_session()
    return s


def show_turn(t) -> None:
    with st.chat_message("user"):
        if t.user_text:
            st.write(t.user_text)
        elif t.kind == "voice":
            st.write("🎤 spoken question")
        if "user_audio" in t.files:
            st.audio(t.files["user_audio"])
        if "image" in t.files:
            st.image(t.files["image"], width=240)
    with st.chat_message("assistant"):
        note = " *(interrupted)*" if t.status == "interrupted" else ""
        st.write((t.assistant_text or "(no text)") + note)
        if t.error:
            st.error(t.error)
        if "assistant_audio" in t.files:
            st.audio(t.files["assistant_audio"])
        if figures := turn_figures(t):
            st.caption(figures)


def turn_figures(t) -> str:
    """The latency panel's figures for one turn, on one line."""
    m, tm = t.timings.get("model") or {}, t.timings
    parts = []
    for label, value, fmt in (("prefill", None if m.get("prefill_s") is None else m["prefill_s"] * 1000, "{:.1f} ms"),
                              ("first audio", tm.get("first_audio_s"), "{:.2f} s"),
                              ("decode", m.get("decode_ms_per_step"), "{:.1f} ms/step"),
                              ("", m.get("steps_per_s"), "{:.1f} steps/s"),
                              ("RTF", m.get("real_time_factor"), "{:.2f}"),
                              ("peak RSS", m.get("peak_rss_mb"), "{:.0f} MB"),
                              ("GPU", m.get("gpu_peak_mem_mb"), "{:.0f} MB")):
        if value is not None:
            parts.append(f"{label} {fmt.format(value)}".strip())
    if tm.get("rebuffers"):
        parts.append(f"{tm['rebuffers']} playback pauses")
    return " · ".join(parts)


def stream_answer(s: Session, turn) -> None:
    """Write the answer as it is generated (with a stop button while it runs), then its speech."""
    with st.chat_message("assistant"):
        box = st.empty()
        stop = st.empty()
        if s.current is turn:
            # clicking reruns the page, which ends this loop; the callback runs first and stops the answer
            stop.button("⏹ Stop answer", key=f"stop_{turn.index}", on_click=s.interrupt)
        end = time.monotonic() + 600
        while time.monotonic() < end:
            done = s.current is not turn
            pos = s.queue_position()
            if turn.status == "queued" and pos:
                box.markdown(f"⏳ waiting for the model — position {pos} in the queue")
            else:
                note = " *(interrupted)*" if turn.status == "interrupted" else ""
                box.markdown((turn.assistant_text or ("" if not done else "(no text)")) + ("" if done else " ▌") + note)
            if done:
                break
            time.sleep(0.1)
        stop.empty()
        if turn.error:
            st.error(turn.error)
        if "assistant_audio" in turn.files:
            st.audio(turn.files["assistant_audio"], autoplay=True)
        if figures := turn_figures(turn):
            st.caption(figures)


def main() -> None:
    args = parse_args()
    st.set_page_config(page_title="Mini-Omni2", page_icon="🎙️")
    st.title("Mini-Omni2")
    try:
        engine = get_engine(args.checkpoint, args.device, args.dtype, args.quantize, args.max_new_tokens,
                            args.multi_turn, args.recordings)
    except Exception as e:
        st.error(f"The model could not be loaded: {e}")
        st.stop()
    if is_test_checkpoint(engine.model.checkpoint_dir):  # "tiny" too: it was built into a folder
        st.warning(TINY_BANNER)
    s = session(engine)

    with st.sidebar:
        mode = st.radio("Answer as", ["speech", "text"], horizontal=True)
        st.subheader("Ask by voice")
        recording = st.audio_input("Record a question (sent when you stop)", key="recording")
        photo = None
        if st.toggle("Webcam", key="webcam", help="Take a photo: your next spoken question is about it"):
            photo = st.camera_input("Photo for the next spoken question", key="photo")
        st.subheader("Upload")
        image_file = st.file_uploader("Image", type=["png", "jpg", "jpeg", "webp"], max_upload_size=MAX_UPLOAD_MB)
        audio_file = st.file_uploader("Audio question", type=["wav", "mp3", "ogg", "flac", "m4a"],
                                      max_upload_size=MAX_UPLOAD_MB)
        ask = st.button("Ask with upload", disabled=audio_file is None and image_file is None)
        st.divider()
        if s.history:
            zip_path = s.export_zip()
            st.download_button("⬇ Export conversation", zip_path.read_bytes(), file_name=zip_path.name,
                               mime="application/zip")
        if st.button("Clear"):
            s.clear()

    active = s.current  # an answer still running from before this rerun is followed again below
    for t in s.history:
        if t is not active:
            show_turn(t)

    text = st.chat_input("Type a message")
    turn = None
    try:
        if text:
            turn = s.send_text(text, speak=(mode == "speech"), image=_picture(photo, image_file)[0])
        elif recording is not None and recording.file_id != st.session_state.get("answered_recording"):
            st.session_state["answered_recording"] = recording.file_id  # a recording is asked once
            image, source = _picture(photo, image_file)
            turn = s.send_upload(audio=_read_audio(recording), image=image, speak=(mode == "speech"), kind="voice",
                                 image_source=source)
        elif ask:
            image, source = _picture(None, image_file)
            audio = _read_audio(audio_file) if audio_file is not None else None
            turn = s.send_upload(audio=audio, image=image, speak=(mode == "speech"), image_source=source)
    except ValueError as e:
        st.error(str(e))
    active = turn or active
    if active is not None:
        show_user(active)
        stream_answer(s, active)


def show_user(t) -> None:
    with st.chat_message("user"):
        st.write(t.user_text or ("🎤 spoken question" if t.kind == "voice" else "📎 audio question"))
        if "image" in t.files:
            st.image(t.files["image"], width=240)


def _picture(photo, image_file) -> tuple[np.ndarray | None, str]:
    """The picture for a question and where it came from: the webcam photo if one was taken, else the upload."""
    if photo is not None:
        return _read_image(photo), "webcam"
    if image_file is not None:
        return _read_image(image_file), "upload"
    return None, ""


def _read_image(f) -> np.ndarray:
    if f.size > MAX_UPLOAD_MB * 1024 * 1024:
        raise ValueError(f"The image is larger than {MAX_UPLOAD_MB} MB.")
    from io import BytesIO

    return load_image(_pil(BytesIO(f.getvalue())))


def _pil(buf):
    from PIL import Image, UnidentifiedImageError

    try:
        return Image.open(buf)
    except (UnidentifiedImageError, OSError):
        raise ValueError("That file is not an image I can read (try PNG or JPEG).") from None


def _read_audio(f):
    if f.size > MAX_UPLOAD_MB * 1024 * 1024:
        raise ValueError(f"The audio file is larger than {MAX_UPLOAD_MB} MB.")
    suffix = Path(f.name).suffix.lower() if Path(f.name).suffix.lower() in (".wav", ".mp3", ".ogg", ".flac", ".m4a") else ".wav"
    with tempfile.NamedTemporaryFile(suffix=suffix, delete=False) as tmp:
        tmp.write(f.getvalue())
    try:
        return load_audio(tmp.name)
    finally:
        os.unlink(tmp.name)


main()
