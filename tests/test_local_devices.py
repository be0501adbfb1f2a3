"""The presenter mode's devices (`--ui local`) on a private PulseAudio server: --list-devices, and every bad
condition as one line with exit code 2 at start-up (before the model loads), or as a notice mid-session while the
app goes on without the lost part."""

import os
import subprocess
import sys
import time

from local_fixtures import ROOT, App, app_cmd, endless_ckpt, pulse  # noqa: F401  (pytest fixtures)

from webui.simulate import silence, speech, timeline


def run(env, *args, timeout=60):
    return subprocess.run(app_cmd("--checkpoint", "tiny", *args), env=env, cwd=ROOT, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=timeout)


def one_line(r) -> str:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr + r.stdout
    assert "Loading the model" not in r.stdout  # said before the model loads
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    return lines[0]


def test_list_devices_shows_inputs_outputs_and_cameras(pulse):
    r = subprocess.run([sys.executable, str(ROOT / "app.py"), "--list-devices"], env=pulse.env(), cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    mics = out.split("Microphones (--mic):")[1].split("Speakers")[0]
    speakers = out.split("Speakers (--speaker):")[1].split("Cameras")[0]
    # the private server's devices, through ALSA's pulse plugin: index, name, rate, channels
    for section in (mics, speakers):
        assert "(default)" in section and "Hz" in section and "channels" in section
    assert "Cameras" in out and "Traceback" not in r.stderr


def test_bad_devices_are_one_line_and_exit_2_before_the_model_loads(pulse, tmp_path):
    env = pulse.env()
    assert "no microphone has that name" in one_line(run(env, "--mic", "no-such-mic"))
    assert "--speaker 99: no such device" in one_line(run(env, "--speaker", "99"))
    line = one_line(run(env, "--camera", str(tmp_path / "missing.y4m")))
    assert "could not be opened" in line and "--camera none" in line
    os.mkfifo(tmp_path / "nobody-writes.y4m")  # opening it would wait for a writer for ever
    line = one_line(run(env, "--camera", str(tmp_path / "nobody-writes.y4m")))
    assert "did not open within" in line
    line = one_line(run(env, "--audio-rate", "1"))
    assert "refuses 1 Hz" in line and "--list-devices" in line


def test_no_sound_server_means_no_microphone(tmp_path, pulse):
    env = dict(pulse.env(), PULSE_SERVER=f"unix:{tmp_path / 'nothing-here'}")
    line = one_line(run(env))
    assert line.startswith("No microphone found") and "--list-devices" in line and "browser" in line


def test_devices_lost_mid_answer_leave_the_app_running(pulse, endless_ckpt, tmp_path):
    """The sound server dies while an answer plays (an audio interface unplugged): the app says what was lost
    and goes on without it; q still ends it cleanly and writes the transcript."""
    app = App(["--checkpoint", str(endless_ckpt), "--camera", "none", "--max-new-tokens", "300",
               "--recordings", str(tmp_path / "rec")], pulse.env(), tmp_path / "app.log")
    try:
        app.wait_for("[state] listening")
        q = speech("What is the capital of France?")
        pulse.say(timeline(silence(0.3), q, silence(1.0)), 16000)
        app.wait_for("[state] speaking", 60)
        time.sleep(1.0)
        pulse.kill()
        text = app.wait_for("stopped (unplugged?)", 20)
        time.sleep(2.0)
        assert app.proc.poll() is None, "the app ended when its devices went away"
        assert "going on without" in text
        app.key("q")
        assert app.end() == 0
    finally:
        app.end(5)
    log = app.text()
    assert "Traceback" not in log
    transcripts = list((tmp_path / "rec").glob("*/transcript.json"))
    assert len(transcripts) == 1
