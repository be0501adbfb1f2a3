"""The Streamlit adapter: the page runs a typed turn on the real tiny model, and `streamlit run` serves it."""

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import webui_fixtures  # noqa: F401  (puts the repo root on sys.path)

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "webui" / "streamlit_app.py"


def test_typed_turn_streams_an_answer(monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("OMNI_CHECKPOINT", "tiny")
    monkeypatch.setenv("OMNI_MAX_NEW_TOKENS", "24")
    at = AppTest.from_file(str(APP), default_timeout=120)
    at.run()
    assert not at.exception
    assert "Random weights" in at.warning[0].value
    at.sidebar.radio[0].set_value("text")
    at.chat_input[0].set_value("hello omni").run()
    assert not at.exception and not at.error
    texts = [m.markdown[0].value for m in at.chat_message if m.name == "assistant" and m.markdown]
    assert texts and texts[-1].strip() and "▌" not in texts[-1]  # the finished answer, not a placeholder
    at.run()  # the next run shows the turn in the history and offers the export
    assert [m.name for m in at.chat_message][:2] == ["user", "assistant"]
    figures = " ".join(c.value for c in at.caption)
    assert "ms/step" in figures and "steps/s" in figures and "peak RSS" in figures  # the latency figures
    assert any("Export" in b.label for b in at.sidebar.get("download_button"))


def test_streamlit_run_serves_the_page():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(APP), "--server.address", "127.0.0.1",
                             "--server.port", str(port), "--server.headless", "true",
                             "--browser.gatherUsageStats", "false", "--", "--checkpoint", "tiny"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ})
    try:
        end = time.monotonic() + 60
        while True:
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2).read()
                break
            except Exception:
                assert proc.poll() is None, proc.stdout.read().decode()
                assert time.monotonic() < end, "streamlit did not start"
                time.sleep(0.5)
        assert body == b"ok"
        assert b"<title>" in urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read()
    finally:
        proc.terminate()
        proc.wait(10)


def test_app_py_starts_the_streamlit_page_in_its_own_process():
    """`python app.py --ui streamlit`: Gradio-only options are named as ignored, the page is served, and stopping
    app.py stops the server (it used to leave streamlit running and holding the port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--ui", "streamlit", "--checkpoint", "tiny",
                             "--port", str(port), "--max-voice", "2", "--max-new-tokens", "32"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ})
    try:
        end = time.monotonic() + 60
        while True:
            try:
                assert urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2).read() == b"ok"
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read().decode()
                assert time.monotonic() < end, "streamlit did not start"
                time.sleep(0.5)
    finally:
        proc.terminate()
        try:  # the output pipes close only when every process holding them has ended
            _, err = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            subprocess.run(["pkill", "-f", f"server.port {port}"])
            raise AssertionError("stopping app.py left the streamlit server running") from None
    assert "--max-voice only apply to the Gradio page" in err.decode()
    with socket.socket() as s:  # the port is free again: no server left behind (REUSEADDR: TIME_WAIT is fine)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen()


def test_sessions_of_pages_gone_for_the_grace_period_are_closed(tmp_path):
    """A closed tab's session (its memory; its temp files) is closed once the page has been gone for the grace
    period; a page that comes back in time keeps its session."""
    from webui_fixtures import Options, ScriptedModel

    from webui.engine import Engine, EngineConfig, close_abandoned

    engine = Engine(ScriptedModel("hi"), EngineConfig(), recordings_dir=None, options_cls=Options)
    try:
        gone, blip, here = engine.new_session(), engine.new_session(), engine.new_session()
        owners = {gone.id: ["page-a", None], blip.id: ["page-b", None], here.id: ["page-c", None]}
        active = {"page-a": False, "page-b": False, "page-c": True}
        assert close_abandoned(engine, owners, active.get, now=0.0, grace_s=60) == []
        active["page-b"] = True  # reconnected after a blip
        assert close_abandoned(engine, owners, active.get, now=30.0, grace_s=60) == []
        assert close_abandoned(engine, owners, active.get, now=61.0, grace_s=60) == [gone.id]
        assert gone.closed and not gone.dir.exists() and engine.get(gone.id) is None
        assert not blip.closed and not here.closed and set(owners) == {blip.id, here.id}
    finally:
        engine.close()
