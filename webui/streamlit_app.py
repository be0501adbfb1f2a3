"""A Streamlit UI over the same conversation engine as the Gradio page.

Live voice over WebRTC (streamlit-webrtc): microphone and webcam in, the answer's speech out as it is generated,
turn-taking and barge-in by the engine. Also typed, recorded and uploaded questions, a webcam photo or uploaded
picture with a spoken question, the answer streamed as text, then its speech.

    python app.py --ui streamlit --checkpoint tiny
    streamlit run webui/streamlit_app.py --server.address 127.0.0.1 -- --checkpoint tiny

(`streamlit run` alone listens on every interface; app.py binds 127.0.0.1 unless --host says otherwise.)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `streamlit run` starts in this folder

import numpy as np  # noqa: E402
import streamlit as st  # noqa: E402

from omni.random_checkpoint import is_test_checkpoint  # noqa: E402
from webui.config import OUT_RATE  # noqa: E402
from webui.engine import Engine, EngineBusy, close_abandoned  # noqa: E402
from webui.session import Session  # noqa: E402
from webui.uploads import load_audio, load_image  # noqa: E402
from webui.startup import TINY_BANNER, latency_line, parse, start_engine  # noqa: E402

MAX_UPLOAD_MB = 25


@st.cache_resource(show_spinner="Loading the model (once for all sessions)…")
def get_engine(options: tuple) -> tuple[Engine, str]:
    """The engine for the page's options (sorted (name, value) pairs: hashable, so one engine per set), and the
    start-up's summary line."""
    from webui.rtc import allow_loopback_ice

    allow_loopback_ice()
    return start_engine(argparse.Namespace(**dict(options)), say=lambda msg: print(f"[mini-omni2] {msg}", flush=True))


class LiveLink:
    """One WebRTC connection's audio and video to and from a session: microphone frames in, webcam frames in (a
    few per second are enough), speech out in 20 ms frames at real-time pace. The callbacks run on aiortc's loop."""

    FRAME = OUT_RATE // 50  # 20 ms of speech

    def __init__(self, session: Session):
        self.session = session
        self.attached = False
        self._last_picture = 0.0

    def speak(self, pts, time_base):
        import av

        if not self.attached:
            self.session.attach_transport()
            self.attached = True
        pcm = self.session.next_frame(self.FRAME, timeout=0.0)
        if pcm is None:
            pcm = np.zeros(self.FRAME, np.int16)
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = OUT_RATE
        return frame

    def hear(self, frame) -> None:
        pcm = frame.to_ndarray().reshape(-1, len(frame.layout.channels))[:, 0]  # packed s16: first channel
        self.session.feed_audio(frame.sample_rate, pcm)

    def see(self, frame) -> None:
        now = time.monotonic()
        if now - self._last_picture >= 0.2:
            self._last_picture = now
            self.session.set_camera_frame(frame.to_ndarray(format="rgb24"))

    def ended(self) -> None:
        if self.attached:
            self.attached = False
            self.session.detach_transport()


def live_voice(s: Session, webcam: bool):
    """The WebRTC widget: START talks with the assistant (its answers play as they are generated, and saying
    a stop phrase interrupts them). Returns its context (state.playing while connected)."""
    from streamlit_webrtc import (WebRtcMode, create_audio_sink_track, create_audio_source_track,
                                  create_video_sink_track, webrtc_streamer)

    link = st.session_state.get("omni_link")
    if link is None or link.session is not s:
        link = st.session_state["omni_link"] = LiveLink(s)
    return webrtc_streamer(
        key="live", mode=WebRtcMode.SENDRECV,
        rtc_configuration={"iceServers": []}, server_rtc_configuration={"iceServers": []},  # offline: no STUN
        media_stream_constraints={"audio": {"echoCancellation": True, "noiseSuppression": True,
                                            "autoGainControl": True}, "video": webcam},
        source_audio_track=create_audio_source_track(link.speak, key="omni-speech", sample_rate=OUT_RATE,
                                                     on_ended=link.ended),
        sink_audio_track=create_audio_sink_track(link.hear, key="omni-mic", on_ended=link.ended),
        sink_video_track=create_video_sink_track(link.see, key="omni-camera") if webcam else None,
        translations={"start": "Start talking", "stop": "Stop talking", "select_device": "Devices",
                      "device_access_denied": "Microphone or camera access was denied: allow it in the browser's "
                                              "site settings, then start again.",
                      "device_not_available": "No microphone or camera was found.",
                      "media_api_not_available": "This browser cannot use the microphone here: open the page on "
                                                 "localhost or over https (e.g. ssh -L 8501:127.0.0.1:8501 host)."},
    )


def export_button(s: Session, key: str = "export") -> None:
    """The zip is made when the button is clicked (Streamlit calls `data` then), so it holds every turn on the
    page, also one answered after the button was drawn (the sidebar is drawn before a typed question is). The click
    does not rerun the page: a rerun could withdraw the zip before the browser has fetched it."""
    st.download_button("⬇ Export conversation", lambda: s.export_zip().read_bytes(),
                       file_name=f"conversation-{time.strftime('%Y%m%d-%H%M%S')}.zip", mime="application/zip",
                       key=key, on_click="ignore")


def follow_live(s: Session, area, export_slot) -> None:
    """While the live connection runs, redraw the conversation whenever it changes, and the export when a turn
    ends (a rerun ends this)."""
    seen, ended = None, None
    while True:
        snap = s.snapshot()
        done = sum(t.status not in ("queued", "running", "speaking") for t in snap["turns"])
        if done and done != ended:
            ended = done
            with export_slot.container():
                export_button(s, key=f"export_{snap['version']}")
        if snap["version"] != seen:
            seen = snap["version"]
            with area.container():
                for t in snap["turns"]:
                    if t.status in ("queued", "running", "speaking"):
                        show_user(t)
                        with st.chat_message("assistant"):
                            st.markdown((t.assistant_text or "") + " ▌")
                    else:
                        show_turn(t)
                listening = "🎤 listening…" if snap["listening"] else "🎤 live: speak when you like"
                st.caption(listening + (f" · {snap['notice']}" if snap["notice"] else ""))
        time.sleep(0.2)


@st.cache_resource
def session_owners() -> dict:
    """Engine session id -> [Streamlit session id, when it was first seen gone]: one table per process."""
    return {}


def _page_is_active(page_id: str) -> bool:
    try:
        from streamlit.runtime import Runtime

        return Runtime.instance().is_active_session(page_id)
    except Exception:  # no runtime (tests) or an internal change: never close on a guess
        return True


def session(engine: Engine) -> Session:
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    owners = session_owners()
    close_abandoned(engine, owners, _page_is_active, time.monotonic())  # tabs closed a while ago
    s = st.session_state.get("omni_session")
    if s is None or s.closed:
        try:
            s = st.session_state["omni_session"] = engine.new_session()
        except EngineBusy as e:
            st.warning(str(e))
            st.stop()
    ctx = get_script_run_ctx()
    if ctx is not None:
        owners.setdefault(s.id, [ctx.session_id, None])
    return s


def show_turn(t) -> None:
    with st.chat_message("user"):
        if t.user_text:
            st.write(t.user_text)
        elif t.kind == "voice":
            st.write("🎤 " + (f"“{t.user_transcript}”" if t.user_transcript else "spoken question"))
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
        if figures := latency_line(t):
            st.caption(figures)


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
                # while it runs: how much speech is ready (played when the answer ends, unless live voice is on)
                spoken = turn.generated_s()
                speech = f"  \n🔊 *{spoken:.1f} s of speech*" if spoken and not done else ""
                box.markdown((turn.assistant_text or ("" if not done else "(no text)")) + ("" if done else " ▌") + note
                             + speech)
            if done:
                break
            time.sleep(0.1)
        stop.empty()
        if turn.error:
            st.error(turn.error)
        if "assistant_audio" in turn.files:
            st.audio(turn.files["assistant_audio"], autoplay=True)
        if figures := latency_line(turn):
            st.caption(figures)


def sidebar(s: Session, webcam: bool, playing: bool) -> SimpleNamespace:
    """One question at a time (recorded, or uploaded with a picture), the export and Clear."""
    with st.sidebar:
        st.subheader("Ask one question")
        mode = st.radio("Answer as", ["speech", "text"], horizontal=True)
        recording = st.audio_input("Record a question (sent when you stop)", key="recording")
        photo = None
        if webcam and not playing:
            photo = st.camera_input("Photo for the next recorded question", key="photo")
        st.subheader("Upload")
        image_file = st.file_uploader("Image", type=["png", "jpg", "jpeg", "webp"], max_upload_size=MAX_UPLOAD_MB)
        audio_file = st.file_uploader("Audio question", type=["wav", "mp3", "ogg", "flac", "m4a"],
                                      max_upload_size=MAX_UPLOAD_MB)
        clicked = st.button("Ask with upload", disabled=audio_file is None and image_file is None)
        st.divider()
        export_slot = st.empty()
        offered = bool(s.history)
        if offered:
            with export_slot.container():
                export_button(s)
        if st.button("Clear"):
            s.clear()
    return SimpleNamespace(mode=mode, recording=recording, photo=photo, image_file=image_file, audio_file=audio_file,
                           clicked=clicked, export_slot=export_slot, offered=offered)


def main() -> None:
    args = parse(sys.argv[1:], known_only=True)  # app.py's command line, passed on by `streamlit run ... --`
    st.set_page_config(page_title="Mini-Omni2", page_icon="🎙️")
    st.title("Mini-Omni2")
    try:
        engine, summary = get_engine(tuple(sorted(vars(args).items())))
    except Exception as e:
        st.error(f"The model could not be loaded: {e}")
        st.stop()
    if is_test_checkpoint(engine.model.checkpoint_dir):  # "tiny" too: it was built into a folder
        st.warning(TINY_BANNER)
    if "could not load" in summary:  # the stop-command recogniser: the page works without it, and says so
        st.warning(summary)
    s = session(engine)

    webcam = st.toggle("Webcam", key="webcam", help="Live: the latest frame goes with each spoken turn. "
                                                  "One question at a time: take a photo in the sidebar")
    try:
        playing = live_voice(s, webcam).state.playing
    except Exception as e:  # e.g. no streamlit-webrtc, or a runtime without it (tests): the rest still works
        st.caption(f"Live voice is not available here ({type(e).__name__}: {e}).")
        playing = False
    if playing:
        st.button("⏹ Stop answer", key="stop_live", on_click=s.interrupt)
    else:
        st.caption("Start talking asks for the microphone (and the webcam when it is on). If the browser says the "
                   "permission was denied, allow both in its site settings for this page and start again. From "
                   "another machine the page needs https or an ssh tunnel (ssh -L PORT:127.0.0.1:PORT host).")

    ask = sidebar(s, webcam, playing)
    mode, recording, photo, image_file, audio_file = ask.mode, ask.recording, ask.photo, ask.image_file, ask.audio_file
    export_slot, offered = ask.export_slot, ask.offered

    active = s.current  # an answer still running from before this rerun is followed again below
    if not playing:  # (live: follow_live draws the whole conversation)
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
        elif ask.clicked:
            image, source = _picture(None, image_file)
            audio = _read_audio(audio_file) if audio_file is not None else None
            turn = s.send_upload(audio=audio, image=image, speak=(mode == "speech"), image_source=source)
    except ValueError as e:
        st.error(str(e))
    active = turn or active
    if playing:  # live conversation: the page follows it
        follow_live(s, st.empty(), export_slot)
    elif active is not None:
        show_user(active)
        stream_answer(s, active)
        if not offered:  # the page's first turn: there is something to export now
            with export_slot.container():
                export_button(s)


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

    return load_image(BytesIO(f.getvalue()))  # the engine's reading: size from the header, clear messages


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
