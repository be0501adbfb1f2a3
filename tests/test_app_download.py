"""`python app.py` on a machine without weights: it downloads them (saying the size first), then starts; offline
it says so once and offers --checkpoint tiny; --no-download never touches the network. All against a fake hub on
127.0.0.1 (tests/fake_hub.py) or a closed port: the real hub is never contacted."""

import hashlib
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from fake_hub import FakeHub, closed_port, hub_env, repo_files

ROOT = Path(__file__).resolve().parents[1]

# app.py with two test-only changes: the checksum table knows the tiny files (so the download verifies them as
# it does the official ones), and launching the page only waits for the model and says how loading went
RUN_APP = """
import sys, json
sys.path.insert(0, {root!r})
import omni.checkpoint, webui.gradio_app
omni.checkpoint.KNOWN_FILES.clear()
omni.checkpoint.KNOWN_FILES.update({{k: tuple(v) for k, v in json.loads({known!r}).items()}})
def launch(app, **kw):
    app.ready.wait()
    print("[test] loaded:", app.error or "ok", flush=True)
webui.gradio_app.launch = launch
sys.argv = ["app.py", *json.loads({args!r})]
import app
sys.exit(app.main())
"""


def run_app(args, env, known=None, timeout=180):
    if known is None:  # plain app.py
        cmd = [sys.executable, str(ROOT / "app.py"), *args]
    else:
        cmd = [sys.executable, "-c", RUN_APP.format(root=str(ROOT), known=json.dumps(known), args=json.dumps(args))]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          timeout=timeout)


@pytest.fixture(scope="module")
def hub_files(tmp_path_factory):
    from omni.random_checkpoint import make_tiny_checkpoint

    return repo_files(make_tiny_checkpoint(tmp_path_factory.mktemp("hub") / "tiny", seed=3))


def test_missing_weights_are_downloaded_with_their_size_said_first_then_the_app_starts(hub_files, tmp_path):
    ckpt = tmp_path / "checkpoints"
    known = {k.split("/")[-1]: (len(v), hashlib.sha256(v).hexdigest()) for k, v in hub_files.items()
             if k.endswith(("small.pt", "ViT-B-32.pt"))}
    with FakeHub(hub_files) as hub:
        r = run_app(["--checkpoint", str(ckpt), "--device", "cpu", "--asr", "none"], hub_env(hub.url, tmp_path),
                    known=known)
    assert r.returncode == 0, r.stdout + r.stderr
    for key, data in hub_files.items():  # every file in its place, byte for byte
        name = key.split("/")[-1]
        assert (ckpt / ("snac_24khz" if "snac" in key else "") / name).read_bytes() == data, key
    # the sizes are asked for first, one HEAD per file, and their total said before anything is fetched
    assert sorted(hub.requests[:len(hub_files)]) == sorted(("HEAD", k) for k in hub_files)
    lines = r.stdout.splitlines()
    said = next(i for i, line in enumerate(lines) if "to download" in line)
    assert f"{sum(len(v) for v in hub_files.values()) / 1e6:.2f} MB" in lines[said]
    assert said < min(i for i, line in enumerate(lines) if line.startswith("[omni] downloading"))
    assert "[test] loaded: ok" in r.stdout and "Model ready" in r.stdout


def test_a_download_that_is_not_the_official_file_is_refused(hub_files, tmp_path):
    """The official checksums stay enforced: the hub's tiny small.pt is not OpenAI's Whisper small."""
    ckpt = tmp_path / "checkpoints"
    with FakeHub(hub_files) as hub:
        r = run_app(["--checkpoint", str(ckpt)], hub_env(hub.url, tmp_path))
    assert r.returncode == 2 and "small.pt" in r.stderr and "sha256" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and not (ckpt / "small.pt").exists()


@pytest.mark.parametrize("hub_status, args", [(None, []), (503, ["--download"]), (503, ["--ui", "streamlit"])],
                         ids=["refused", "error-503", "streamlit-error-503"])
def test_a_failed_download_says_so_once_and_offers_the_tiny_checkpoint(tmp_path, hub_status, args):
    with FakeHub(status=hub_status) as hub:  # refused: nothing listens on the port asked
        url = hub.url if hub_status else f"http://127.0.0.1:{closed_port()}"
        r = run_app(["--checkpoint", str(tmp_path / "checkpoints"), *args], hub_env(url, tmp_path), timeout=120)
    assert r.returncode == 2 and "Could not download the weights" in r.stderr, r.stdout + r.stderr
    assert r.stderr.count("--checkpoint tiny") == 1 and "Traceback" not in r.stderr, r.stderr
    assert "Retrying" not in r.stderr  # offline is said at once, not after a minute of retries
    if hub_status:
        assert hub.requests == [("HEAD", "gpt-omni/mini-omni2/lit_model.pth")]  # one question, no retries


@pytest.mark.parametrize("ui", ["gradio", "streamlit"])
def test_no_download_stops_with_the_message_without_any_request(hub_files, tmp_path, ui):
    with FakeHub(hub_files) as hub:
        r = run_app(["--checkpoint", str(tmp_path / "checkpoints"), "--no-download", "--ui", ui],
                    hub_env(hub.url, tmp_path))
    assert r.returncode == 2 and hub.requests == [], r.stderr
    assert "No checkpoint" in r.stderr and "--checkpoint tiny" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "checkpoints").exists()


def test_ctrl_c_during_the_download_says_how_to_resume(hub_files, tmp_path):
    with FakeHub(hub_files, stall=True) as hub:
        proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--checkpoint", str(tmp_path / "ckpt")],
                                cwd=ROOT, env=hub_env(hub.url, tmp_path), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
        for line in proc.stdout:  # the first file is on its way (and stalls there)
            if line.startswith("[omni] downloading"):
                break
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "run the same command again to resume" in err, out + err
    assert "Traceback" not in err
