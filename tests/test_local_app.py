"""The presenter mode end to end (`python app.py --ui local`) through PyAudio and OpenCV: a private PulseAudio
server's virtual microphone (fed by paplay) and speaker (its monitor listened to), a y4m FIFO at camera pace as the
camera, the real model on a tiny checkpoint. A spoken question with the camera on is answered with the frame and
heard on the speaker; "stop omni" silences the speaker; push-to-talk; Ctrl-C writes the transcript; the terminal
view driven in tmux."""

import json
import os
import shutil
import signal
import subprocess
import time

from local_fixtures import ROOT, App, SpeakerMonitor, app_cmd, camera, endless_ckpt, pulse, speech_span  # noqa: F401  (pytest fixtures)

from webui.simulate import silence, speech, timeline

QUESTION = "What do you see in this picture?"


def say(pulse, words: str, lead: float = 0.3) -> tuple[float, float]:
    """Speak into the virtual microphone; (when the speech starts, when it ends), on the monotonic clock."""
    audio = timeline(silence(lead), speech(words), silence(0.8))
    start, end = speech_span(audio)
    _, t = pulse.say(audio, 16000)
    return t + start, t + end


def test_question_with_camera_then_stop_omni_then_ctrl_c(pulse, camera, endless_ckpt, tmp_path):
    monitor = SpeakerMonitor(pulse)
    app = App(["--checkpoint", str(endless_ckpt), "--camera", str(camera.path), "--max-new-tokens", "400",
               "--recordings", str(tmp_path / "rec")], pulse.env(), tmp_path / "app.log")
    try:
        app.wait_for("[state] listening (camera on 320x240)")
        _, spoken_end = say(pulse, QUESTION)
        deadline = time.monotonic() + 60
        while not monitor.loud(since=spoken_end) and time.monotonic() < deadline:
            time.sleep(0.05)
        heard = monitor.loud(since=spoken_end)
        assert heard, f"no answer on the speaker:\n{app.text()[-2000:]}"
        # the echo canceller learns for a few seconds that this microphone hears no speaker (see docs/app.md)
        time.sleep(7.0)
        onset, _ = say(pulse, "stop omni", lead=0.2)
        turn = app.wait_turns(1, 30)[0]
        time.sleep(1.5)
        assert turn["status"] == "interrupted" and "command" in turn["interrupted_by"], turn
        assert turn["task"] == "IMAGE_A1A2" and turn["frame"] == "320x240", turn
        assert turn["onset_to_silence_at_speaker_s"] is not None and 0 < turn["onset_to_silence_at_speaker_s"] < 3
        assert turn["speech_end_to_first_audio_at_speaker_s"] is not None
        before = [t for t in monitor.loud(since=heard[0]) if t < onset]
        assert before and before[-1] > onset - 1.0, "the answer was not playing when the user said stop"
        assert not monitor.loud(since=onset + 2.0), "the speaker went on after 'stop omni'"
        app.proc.send_signal(signal.SIGINT)
        assert app.end() == 0
    finally:
        monitor.stop()
        app.end(5)
    assert "Traceback" not in app.text()
    folder = next((tmp_path / "rec").iterdir())
    data = json.loads((folder / "transcript.json").read_text())
    assert [t["status"] for t in data["turns"]] == ["interrupted"]
    assert (folder / "transcript.md").exists() and list(folder.glob("*.zip"))
    assert list(folder.glob("turn_001_image.*")) and list(folder.glob("turn_001_user.wav"))


def test_push_to_talk(pulse, tmp_path):
    """Space starts a recording (the live detector hears nothing meanwhile), space again sends it as a question.
    (--preview, where OpenCV has no GUI, is said once.)"""
    app = App(["--checkpoint", "tiny", "--camera", "none", "--max-new-tokens", "16", "--preview"], pulse.env(),
              tmp_path / "app.log")
    try:
        text = app.wait_for("[state] listening")
        assert "--preview: this OpenCV has no GUI support" in text  # opencv-python-headless: said, not a crash
        app.key(" ")
        app.wait_for("[state] recording")
        proc, _ = pulse.say(timeline(silence(0.3), speech(QUESTION), silence(1.2)), 16000)
        proc.wait(20)
        assert "[state] thinking" not in app.text()  # no live turn while recording
        app.key(" ")
        turns = app.wait_turns(1, 60)
        assert turns[0]["kind"] == "voice" and turns[0]["status"] == "done", turns
        time.sleep(1.0)
        assert len(app.turns()) == 1
        app.key("q")
        assert app.end() == 0
    finally:
        app.end(5)


def tmux(sock: str, *args: str) -> str:
    return subprocess.run(["tmux", "-L", sock, *args], capture_output=True, text=True, timeout=20).stdout


def test_terminal_view_in_tmux(pulse, camera, tmp_path):
    """The rich view on a real terminal: state, devices, echo canceller, camera, the barge-in policy (`model`, which
    the tiny checkpoint lacks: the view says so); keys m, c and q."""
    assert shutil.which("tmux"), "tmux is installed by scripts/setup.sh"
    sock = f"omni-{os.getpid()}"
    env = pulse.env()
    cmd = " ".join(app_cmd("--checkpoint", "tiny", "--camera", str(camera.path), "--recordings",
                           str(tmp_path / "rec"), "--policy", "model")) + f" ; echo EXIT=$? > {tmp_path / 'rc'}"
    keep = ["PULSE_SERVER", "ALSA_CONFIG_PATH", "HOME", "XDG_RUNTIME_DIR"]
    tmux(sock, "new-session", "-d", "-x", "110", "-y", "50", *sum((["-e", f"{k}={env[k]}"] for k in keep), []),
         "-c", str(ROOT), cmd)

    def screen_with(*needles: str, timeout: float = 90.0) -> str:
        """The screen once it shows every one of `needles` at once (rich redraws the view while it is captured)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            screen = tmux(sock, "capture-pane", "-p")
            if all(n in screen for n in needles):
                return screen
            time.sleep(0.2)
        raise AssertionError(f"not all of {needles!r} on the screen:\n{screen}")

    try:
        screen_with("LISTENING", "presenter mode", "WebRTC AEC3", "on 320x240", "space push-to-talk",
                    "which this checkpoint lacks")
        tmux(sock, "send-keys", "m")
        screen_with("MUTED")
        tmux(sock, "send-keys", "m")
        screen_with("LISTENING")
        tmux(sock, "send-keys", "c")
        screen_with("off 320x240")
        tmux(sock, "send-keys", "q")
        end = time.monotonic() + 30
        while not (tmp_path / "rc").exists() and time.monotonic() < end:
            time.sleep(0.2)
        assert (tmp_path / "rc").read_text().strip() == "EXIT=0"
    finally:
        tmux(sock, "kill-server")
