"""app.py: helpful --help, bad options refused (a missing checkpoint: test_app_download.py)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(*args):
    return subprocess.run([sys.executable, str(ROOT / "app.py"), *args], cwd=ROOT, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=120)


def test_help_lists_the_options():
    r = run("--help")
    assert r.returncode == 0
    for opt in ("--checkpoint", "--download", "--no-download", "--device", "--dtype", "--quantize", "--host", "--port",
                "--share", "--policy", "--asr", "tiny", "127.0.0.1"):
        assert opt in r.stdout, opt


def test_bad_option_values_are_refused():
    r = run("--checkpoint", "tiny", "--end-silence", "-3")
    assert r.returncode == 2 and "Bad option" in r.stderr and "Traceback" not in r.stderr
    # the Streamlit page takes the same options: refused before it starts, not reported on the page
    r = run("--ui", "streamlit", "--checkpoint", "tiny", "--phrases", " , ")
    assert r.returncode == 2 and "Bad option" in r.stderr and "stop phrase" in r.stderr
    r = run("--policy", "sometimes")
    assert r.returncode == 2 and "invalid choice" in r.stderr


def test_an_unusable_device_is_refused_before_the_page_comes_up():
    for device, said in (("gpu", "unknown device"), ("cuda:7", "cuda")):
        r = run("--checkpoint", "tiny", "--device", device)
        assert r.returncode == 2 and "Bad option" in r.stderr and said in r.stderr and "Traceback" not in r.stderr


def test_building_the_page_writes_nothing_into_the_source_tree():
    """Gradio writes a .pyi next to the module of any component subclass: the page must not define one."""
    from webui.gradio_app import OmniApp
    from webui.gradio_page import build_ui
    from webui.startup import parse

    before = sorted(p.name for p in (ROOT / "webui").iterdir())
    build_ui(OmniApp(parse(["--checkpoint", "tiny"])))
    assert sorted(p.name for p in (ROOT / "webui").iterdir()) == before


def test_the_page_may_serve_the_folders_of_open_sessions_only(tmp_path):
    """Gradio serves files from its launched page's allowed_paths: each session's folder while it is open, never
    the recordings folder above them (`--recordings ~` would hand out the home folder)."""
    from types import SimpleNamespace

    from webui_fixtures import Options, ScriptedModel

    from webui.engine import Engine, EngineConfig
    from webui.gradio_app import OmniApp
    from webui.startup import parse

    app = OmniApp(parse(["--recordings", str(tmp_path)]))
    app.engine = Engine(ScriptedModel("hi"), EngineConfig(), recordings_dir=str(tmp_path), options_cls=Options)
    app.page = SimpleNamespace(allowed_paths=[])  # what launch() leaves on the gr.Blocks
    try:
        a, b = app.new_id(), app.new_id()
        sa, sb = app.session(a), app.session(b)
        assert app.page.allowed_paths == [str(sa.dir), str(sb.dir)]
        app.close_session(a)
        assert app.page.allowed_paths == [str(sb.dir)]
    finally:
        app.engine.close()


def test_two_sigterms_close_the_app_without_a_traceback(tmp_path):
    """`timeout` and `pkill` may both signal: the second SIGTERM must not interrupt the orderly close."""
    import signal
    import socket
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(tmp_path / "app.log", "w")
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--checkpoint", "tiny", "--port", str(port)],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        end = time.monotonic() + 120
        while time.monotonic() < end:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
                break
            except OSError:
                assert proc.poll() is None, (tmp_path / "app.log").read_text()
                time.sleep(0.5)
        while "Model ready" not in (tmp_path / "app.log").read_text() and time.monotonic() < end:
            time.sleep(0.2)  # up and loaded (Gradio's own start-up requests are done)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.05)  # the second while the first one's close runs
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    out = (tmp_path / "app.log").read_text()
    assert "closing server" in out and "Traceback" not in out, out[-2000:]
