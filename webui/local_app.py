"""The presenter mode, `python app.py --ui local`: the assistant on this machine's own microphone, speaker and camera,
with no browser. A thin front-end over the engine like the pages: one `Session`, fed by the microphone and the
camera and played to the speaker (webui/local_link.py), shown in a terminal view with keys (webui/local_view.py).
The devices are opened before the model loads, so a missing or refused one is one line and exit code 2."""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
from pathlib import Path

from .config import policy_warning
from .echo import make_canceller
from .local_audio import (DeviceError, Microphone, Speaker, device_lines, devices, native_stderr_away,
                          open_portaudio, pick, quiet_stderr, supported_rate)
from .local_camera import Camera, camera_lines, gui_support
from .local_link import AudioLink
from .local_view import POLICY_LABELS, Keys, LineView, TerminalView, ViewState

log = logging.getLogger("webui")

TICK_S = 0.1  # the view and the device watchdogs
# the latest turn's figures in the view: key of turn_figures -> (label, format)
FIGURES = {"status": ("status", "{}"), "frame": ("camera frame", "{}"),
           "speech_end_to_first_audio_at_speaker_s": ("end of speech → first audio at the speaker", "{:.2f} s"),
           "speech_end_to_first_audio_s": ("  … handed to the speaker", "{:.2f} s"),
           "steps_per_s": ("decode steps/s", "{:.1f}"), "rtf": ("real-time factor", "{:.2f}"),
           "onset_to_silence_at_speaker_s": ("barge-in onset → silence at the speaker", "{:.3f} s"),
           "interrupted_by": ("interrupted by", "{}"), "played_s": ("speech played", "{:.1f} s")}


def _tail(text: str, n: int) -> str:
    return text if len(text) <= n else "…" + text[-n:]



def list_devices(args) -> int:
    """--list-devices: the microphones, speakers and cameras, then exit."""
    try:
        pa = open_portaudio()
    except DeviceError as e:
        print(e, file=sys.stderr)
        return 2
    try:
        lines = device_lines(devices(pa))
    finally:
        with quiet_stderr():
            pa.terminate()
    print("\n".join(lines + camera_lines()))
    return 0


class Devices:
    """The PortAudio instance, the two streams and the camera (or None for each one not there)."""

    def __init__(self, args):
        self.pa = open_portaudio()
        self.mic = self.speaker = self.camera = None
        self.camera_note = ""
        try:
            mic_dev = pick(self.pa, args.mic, "microphone")
            spk_dev = pick(self.pa, args.speaker, "speaker")
            mic_rate = supported_rate(self.pa, mic_dev, "microphone", args.audio_rate)
            spk_rate = supported_rate(self.pa, spk_dev, "speaker", args.audio_rate)
            self.camera = self._camera(args)
            self.mic = Microphone(self.pa, mic_dev, mic_rate)
            self.speaker = Speaker(self.pa, spk_dev, spk_rate)
        except DeviceError:
            self.close()
            raise

    def _camera(self, args) -> Camera | None:
        if args.camera == "none":
            self.camera_note = "none (--camera none)"
            return None
        if args.camera == "auto":
            try:
                return Camera("0", preview=args.preview)
            except DeviceError:
                self.camera_note = "none found (--camera INDEX|PATH|URL)"
                return None
        return Camera(args.camera, preview=args.preview)

    def close(self) -> None:
        for part in (self.mic, self.speaker, self.camera):
            if part is not None:
                part.close()
        # a sound server that went away can hang PortAudio's shutdown: not the presenter's problem at exit
        t = threading.Thread(target=self.pa.terminate, name="portaudio-close", daemon=True)
        with quiet_stderr():
            t.start()
            t.join(2.0)


class PresenterApp:
    """One session on the local devices, its view and keys, until q or Ctrl-C."""

    def __init__(self, engine, session, devs: Devices, args, summary: str = "", banner: str = ""):
        self.engine, self.session, self.devs, self.args = engine, session, devs, args
        self.canceller, self.echo_label = make_canceller(args.aec)
        self.link = AudioLink(session, devs.mic, devs.speaker, self.canceller, self._lost)
        self.quit = threading.Event()
        self.lost: dict[str, str] = {}
        self.summary, self.banner = summary, banner
        self.at_speaker: dict[int, float] = {}  # turn -> end of speech -> first audio at the speaker, s
        self.silence_at_speaker: dict[int, float] = {}  # turn -> barge-in onset -> silence at the speaker, s
        self.frame_sizes: dict[int, str] = {}
        self._onset: tuple[int, float] | None = None  # (turn, onset) of the latest pause or interruption
        self._reported: set[int] = set()
        self._interrupted_at = 0.0
        self._events_path = Path(args.events) if args.events else None
        engine.event_sink = self._on_event

    # ------------------------------------------------------------ running

    def run(self, view=None) -> int:
        self.view = view or (TerminalView() if sys.stdout.isatty() else LineView())
        if self.args.preview and not gui_support():
            self.view.say("--preview: this OpenCV has no GUI support (opencv-python-headless): no camera window.")
        self.view.say(self.summary)
        cam = self.devs.camera
        if cam is not None:
            cam.start(self.session.set_camera_frame, lambda msg: self._lost("camera", msg))
        self.link.start()
        keys = Keys(self.on_key)
        try:
            while not self.quit.is_set():
                self._tick()
                self.quit.wait(TICK_S)
        except KeyboardInterrupt:
            pass
        finally:
            keys.close()
            self._tick()
            self.view.close()
        return 0

    def on_key(self, key: str) -> None:
        if key == " ":
            self.link.push_to_talk()
        elif key == "s":
            self.session.interrupt("key s")
        elif key == "m":
            self.link.muted = not self.link.muted
        elif key == "c" and self.devs.camera is not None and not self.devs.camera.lost:
            self.devs.camera.toggle(self.session.set_camera_frame)
        elif key == "q":
            self.quit.set()

    def _lost(self, part: str, message: str) -> None:
        self.lost[part] = message
        self.session.notice = message

    def close(self) -> Path | None:
        """Stop the devices and the session; with --recordings, its files, transcript and export are kept.
        Returns the session's folder if kept."""
        self.link.stop()
        self.devs.close()
        kept = None
        if self.engine.keep_recordings and self.session.history:
            self.session.wait_idle(2.0)
            self.session.export_zip()
            kept = self.session.dir
        for pool in (self.engine.asr_pool, self.engine.side_pool):  # a recogniser thread alive at exit can abort
            try:                                                     # the process (CTranslate2's threads)
                pool.submit(lambda: None).result(timeout=10)
            except Exception:
                pass
        self.engine.close()  # the session closes: transcript.json and .md written beside its files
        return kept

    # ------------------------------------------------------------ figures and events

    def _on_event(self, session_id: str, rec: dict) -> None:
        if rec["ev"] in ("ducked", "interrupted"):
            turn = self.session.current or (self.session.history[-1] if self.session.history else None)
            if turn is not None and (self._onset is None or self._onset[0] != turn.index):
                self._onset = (turn.index, rec["onset"])
        if rec["ev"] == "interrupted":
            self._interrupted_at = rec["t"]
        if self._events_path is not None:
            with open(self._events_path, "a") as f:
                f.write(json.dumps({k: v for k, v in rec.items() if not hasattr(v, "shape")}, default=str) + "\n")

    def _measure(self) -> None:
        """The figures measured at the speaker: when sound began and ended there, against the turn's events."""
        spk = self.link.speaker
        cur = self.session.current
        if cur is not None and cur.image is not None:
            self.frame_sizes[cur.index] = f"{cur.image.shape[1]}x{cur.image.shape[0]}"
        if spk is None:
            return
        tm = cur.timings if cur is not None else None
        if tm is not None and tm.speech_end_wall and spk.loud_at and tm.submitted and spk.loud_at > tm.submitted \
                and cur.index not in self.at_speaker:
            self.at_speaker[cur.index] = round(spk.loud_at - tm.speech_end_wall, 3)
        if self._onset is not None and spk.silent_after_flush_at is not None \
                and self._onset[0] not in self.silence_at_speaker:
            index, onset = self._onset
            self.silence_at_speaker[index] = round(spk.silent_after_flush_at - onset, 3)

    def _tick(self) -> None:
        self._measure()
        snap = self.session.snapshot()
        self.view.show(self._state_view(snap))
        for t in snap["turns"]:
            if t.status in ("done", "interrupted", "error") and t.index not in self._reported \
                    and isinstance(self.view, LineView):
                if t.status == "interrupted" and t.index not in self.silence_at_speaker and self.link.speaker \
                        and time.monotonic() - self._interrupted_at < 1.0:
                    continue  # the speaker's silence is a buffer away: report the turn with it
                self._reported.add(t.index)
                self.view.turn_done("[turn] " + json.dumps(self.turn_figures(t)))

    def turn_figures(self, t) -> dict:
        tm = t.timings
        return {"index": t.index, "status": t.status, "task": t.task, "kind": t.kind,
                "frame": self.frame_sizes.get(t.index, "") if t.image_source == "webcam" else "",
                "speech_end_to_first_audio_at_speaker_s": self.at_speaker.get(t.index),
                "speech_end_to_first_audio_s": tm.speech_end_to_first_audio_s,
                "steps_per_s": tm.steps_per_s, "rtf": tm.real_time_factor,
                "onset_to_silence_at_speaker_s": self.silence_at_speaker.get(t.index),
                "onset_to_silence_s": tm.onset_to_silence_s or tm.duck_onset_to_silence_s,
                "interrupted_by": t.interrupted_by, "played_s": round(t.played_s, 2),
                "text": t.assistant_text[:200]}

    def _state_view(self, snap: dict) -> ViewState:
        cam = self.devs.camera
        camera = "lost" if "camera" in self.lost else self.devs.camera_note if cam is None else \
            f"{'on' if cam.on else 'off'} {cam.size[0]}x{cam.size[1]}" if cam.size else "on (waiting for a frame)"
        mic, spk = self.link.mic, self.link.speaker
        erle = self.link.echo_reduction_db()
        v = ViewState(
            state=self._state(snap),
            echo=self.echo_label + (f", the mic {erle:.0f} dB quieter while it speaks" if erle is not None else ""), camera=camera, level=self.link.level,
            policy=self._policy_label(),
            mic=f"{mic.device.name} ({mic.rate} Hz)" if mic else self.lost.get("microphone", "none"),
            speaker=f"{spk.device.name} ({spk.rate} Hz)" if spk else self.lost.get("speaker", "none"),
            notice=snap["notice"], banner=self.banner)
        for t in snap["turns"][-4:]:
            said = t.user_text or t.user_transcript or f"({t.kind}, {t.user_audio_s:.1f} s)"
            if t.image_source == "webcam":
                said += f"  [+ camera frame {self.frame_sizes.get(t.index, '')}]"
            v.turns.append((t.index, "You", said))
            v.turns.append((t.index, "Omni", _tail(t.assistant_text or "…", 240) + ("" if t.status in ("done", "running",
                                                                                         "speaking", "queued")
                                                                          else f"  [{t.status}]")))
        if snap["turns"]:
            figures = self.turn_figures(snap["turns"][-1])
            v.figures = [(label, unit.format(figures[k])) for k, (label, unit) in FIGURES.items()
                         if figures.get(k) not in (None, "")]
        return v

    def _policy_label(self) -> str:
        policy = self.session.config.policy
        if policy_warning(policy, self.engine.model):
            return "the model's own stop signal, which this checkpoint lacks: nothing interrupts (s stops)"
        return POLICY_LABELS[policy]

    def _state(self, snap: dict) -> str:
        if self.link.recording:
            return "recording"
        if self.link.muted:
            return "muted"
        if snap["ducked"]:
            return "paused"
        cur = self.session.current
        if cur is not None:
            return "thinking" if cur.status in ("queued", "running") else "speaking"
        if snap["listening"]:
            return "hearing you"
        if time.monotonic() - self._interrupted_at < 2.0:
            return "interrupted"
        return "listening"


def run_local(args) -> int:
    """`python app.py --ui local`: open the devices (exit 2 with one line if one is missing or refuses), make sure
    the weights are there, load the engine through the one start-up path, and run until q or Ctrl-C."""
    from omni.errors import OmniError

    from .startup import TINY_BANNER, ensure_checkpoint, is_tiny, start_engine

    if not args.verbose:
        native_stderr_away()
    try:
        devs = Devices(args)
    except DeviceError as e:
        print(e, file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _stop_like_ctrl_c)
    app = None
    try:
        err = ensure_checkpoint(args)
        if err:
            print(err, file=sys.stderr)
            return 2
        try:
            engine, summary = start_engine(args, lambda s: print(f"[mini-omni2] {s}", flush=True))
        except OmniError as e:  # a missing or broken file: one line, as the pages say it
            print(f"The model could not be loaded: {e}", file=sys.stderr)
            return 2
        session = engine.new_session()
        banner = TINY_BANNER.replace("⚠️ **", "").replace("**", "") if is_tiny(args.checkpoint) else ""
        app = PresenterApp(engine, session, devs, args, summary, banner)
        return app.run()
    except KeyboardInterrupt:
        return 0 if app is not None else 130
    finally:
        if app is not None:
            kept = app.close()
            print(f"[mini-omni2] Recordings kept in {kept}" if kept else
                  "[mini-omni2] Ended. (--recordings DIR keeps the transcript, audio and camera frames.)", flush=True)
        else:
            devs.close()


def _stop_like_ctrl_c(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt
