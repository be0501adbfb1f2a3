"""End to end in headless Debian Chromium: `python app.py --checkpoint tiny`, fake microphone and webcam over
WebRTC, the real model on the tiny random checkpoint.

The fake microphone plays "question, pause, stop omni"; the test checks that the turn is detected (with
the webcam frame), that text and speech stream into the page, that "stop omni" silences playback, and
that the export downloads a zip with the expected files. Needs: apt chromium, espeak-ng, sox, ffmpeg.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from webui_fixtures import SR

from omni.random_checkpoint import make_endless_tiny_checkpoint
from webui.vad import TurnDetector, TurnEnded

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
LEAD_S = 3.0  # silence before the question: the file starts at getUserMedia, before WebRTC is connected
STOP_AT = 13.5  # where "stop omni" starts in the file (the answer is playing by then)

FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--use-fake-ui-for-media-stream",
         "--use-fake-device-for-media-stream", "--autoplay-policy=no-user-gesture-required",
         "--allow-loopback-in-peer-connection"]  # CI sandboxes may have no other interface

# Record every RTCPeerConnection, when getUserMedia ran, and the loudness of the assistant's speech as the
# page receives it (WebAudio analyser on the WebRTC stream; works with Playwright's --mute-audio).
INIT_JS = """(() => {
  const O = window.RTCPeerConnection; window.__pcs = [];
  window.RTCPeerConnection = function (...a) { const pc = new O(...a); window.__pcs.push(pc); return pc; };
  window.RTCPeerConnection.prototype = O.prototype;
  window.__gum = [];
  const md = navigator.mediaDevices, g = md.getUserMedia.bind(md);
  md.getUserMedia = async (c) => { const s = await g(c); window.__gum.push({t: performance.now(), audio: !!(c && c.audio)}); return s; };
  window.__rms = [];
  setInterval(() => {
    const el = [...document.querySelectorAll('audio')].find(a => a.srcObject && a.srcObject.getAudioTracks().length);
    if (!el) return;
    if (!window.__an || window.__anSrc !== el.srcObject) {
      const ctx = window.__ctx || (window.__ctx = new AudioContext());
      ctx.resume();
      const src = ctx.createMediaStreamSource(el.srcObject);
      window.__an = ctx.createAnalyser(); window.__an.fftSize = 1024; src.connect(window.__an);
      window.__anSrc = el.srcObject; window.__buf = new Float32Array(1024);
    }
    window.__an.getFloatTimeDomainData(window.__buf);
    let s = 0; for (const v of window.__buf) s += v * v;
    window.__rms.push([performance.now(), Math.sqrt(s / window.__buf.length)]);
  }, 20);
})();"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("media")
    sh("espeak-ng", "-v", "en-us", "-s", "150", "-w", str(d / "q.wav"), "what is the capital of france and why is it so famous")
    sh("espeak-ng", "-v", "en-us", "-s", "150", "-w", str(d / "stop.wav"), "stop omni")
    sh("sox", "-D", str(d / "q.wav"), "-r", "48000", "-c", "1", "-b", "16", str(d / "q48.wav"))
    sh("sox", "-D", str(d / "stop.wav"), "-r", "48000", "-c", "1", "-b", "16", str(d / "stop48.wav"))
    q = sf.read(d / "q48.wav", dtype="float32")[0]
    stop = sf.read(d / "stop48.wav", dtype="float32")[0]
    a = np.zeros(int(48000 * (STOP_AT + 8.0)), np.float32)
    a[int(LEAD_S * 48000) : int(LEAD_S * 48000) + len(q)] = q
    a[int(STOP_AT * 48000) : int(STOP_AT * 48000) + len(stop)] = stop
    sf.write(d / "question_then_stop.wav", a, 48000, subtype="PCM_16")
    sh("ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=320x240:rate=15", "-t", "40",
       "-pix_fmt", "yuv420p", str(d / "cam.y4m"))
    # where speech really starts in the file (espeak pads its output), found by the same VAD
    det = TurnDetector()
    ev = [e for e in det.push(48000, a) + det.flush() if isinstance(e, TurnEnded)]
    assert len(ev) == 2
    return d, ev[1].t_start


def chromium(p, profile: Path, mic: Path | None = None, cam: Path | None = None, deny_media: bool = False):
    """Headless Debian Chromium whose fake microphone and webcam play `mic` and `cam` (or that is refused media)."""
    args = [f for f in FLAGS if not (deny_media and f == "--use-fake-ui-for-media-stream")]
    args += ["--deny-permission-prompts"] if deny_media else []
    args += [f"--use-file-for-fake-audio-capture={mic}%noloop"] if mic else []
    args += [f"--use-file-for-fake-video-capture={cam}"] if cam else []
    return p.chromium.launch_persistent_context(str(profile), executable_path=CHROMIUM, headless=True,
                                                accept_downloads=True, viewport={"width": 1400, "height": 1100},
                                                args=args)


@contextmanager
def running_app(args: list[str], log_path: Path, ready_url: str, env: dict | None = None):
    """`python app.py ARGS` for the duration of the block, once `ready_url` answers; stopped with SIGTERM."""
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), *args], cwd=ROOT, stdout=log,
                            stderr=subprocess.STDOUT, env=env)
    try:
        t0 = time.monotonic()
        while True:
            try:
                urllib.request.urlopen(ready_url, timeout=2)
                break
            except Exception:
                assert proc.poll() is None, log_path.read_text()
                assert time.monotonic() - t0 < 120, "the app did not come up"
                time.sleep(0.5)
        yield proc
    finally:
        proc.terminate()  # SIGTERM ends the app like Ctrl-C: open sessions are closed and their transcripts written
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise AssertionError("the app did not stop on SIGTERM") from None
        finally:
            log.close()


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("app")
    ckpt = make_endless_tiny_checkpoint(tmp / "tiny")
    port, events = free_port(), tmp / "events.jsonl"
    url = f"http://127.0.0.1:{port}/"
    # the app's temp folder apart from --recordings, as for `--recordings ~/rec`: Gradio hands out only files from
    # its temp folder, the working folder and the paths it is allowed, so the page works only if the session
    # folders are allowed
    (tmp / "apptmp").mkdir()
    with running_app(["--checkpoint", str(ckpt), "--port", str(port), "--events", str(events), "--recordings",
                      str(tmp / "rec"), "--max-new-tokens", "400"], tmp / "app.log", url,
                     env={**os.environ, "TMPDIR": str(tmp / "apptmp")}):
        yield url, events, tmp
    folders = [d for d in (tmp / "rec").iterdir() if d.is_dir() and any(d.glob("turn_*"))]
    assert folders and all((d / "transcript.json").exists() for d in folders), "sessions without a transcript"


def read_events(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_for(fn, timeout: float, page, what: str, explain=None):
    """Poll fn until truthy; on timeout fail with a screenshot and `explain()` (what the server logged)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = fn()
        if v:
            return v
        page.wait_for_timeout(200)  # keeps Playwright's event loop running
    shot = Path(os.environ.get("WEBUI_SCREENSHOT_DIR", "/tmp")) / "failure.png"
    page.screenshot(path=str(shot), full_page=True)
    detail = f"; {explain()}" if explain is not None else ""
    raise AssertionError(f"timed out waiting for {what} (page: {shot}){detail}")


def test_voice_turn_stream_barge_in_and_export(app, media, tmp_path):
    from playwright.sync_api import sync_playwright

    url, events_path, app_dir = app
    mdir, stop_onset_in_file = media
    shot_dir = Path(os.environ.get("WEBUI_SCREENSHOT_DIR", tmp_path))
    with sync_playwright() as p:
        ctx = chromium(p, tmp_path / "profile", mic=mdir / "question_then_stop.wav", cam=mdir / "cam.y4m")
        page = ctx.new_page()
        page.add_init_script(INIT_JS)
        page.goto(url, wait_until="load")
        status = page.locator("#status-line")
        wait_for(lambda: "Model ready" in status.inner_text(), 120, page, "the page to say the model is ready")
        assert "Random weights" in page.locator("#banner-random").inner_text()

        # webcam on (Gradio streaming image), then the voice connection (fastrtc)
        page.get_by_text("Click to Access Webcam").click()
        wait_for(lambda: page.evaluate("() => { const v = document.querySelector('#webcam video');"
                                       " return !!(v && v.readyState >= 2); }"), 15, page, "the webcam preview")
        page.locator("#webcam").get_by_role("button", name="capture photo").click()
        wait_for(lambda: "camera on" in status.inner_text(), 15, page, "webcam frames at the server")

        page.locator("#voice").get_by_text("Click to Access Microphone").click(timeout=5000) \
            if page.locator("#voice").get_by_text("Click to Access Microphone").count() else None
        page.locator("#voice").get_by_role("button", name="start stream").dispatch_event("click")
        wait_for(lambda: page.evaluate("() => window.__pcs.some(pc => ['connected','completed']"
                                       ".includes(pc.iceConnectionState))"), 20, page, "ICE connected")
        gum = page.evaluate("() => window.__gum.filter(g => g.audio).map(g => g.t)")
        assert gum, "getUserMedia for the microphone was not called"
        file_t0 = gum[-1]  # the fake microphone file starts here (browser clock, ms)

        # 1. the spoken question is detected as one turn and sent with the webcam frame
        sub = wait_for(lambda: [e for e in read_events(events_path) if e["ev"] == "turn_submitted"], 30, page,
                       "the user's turn")
        assert sub[0]["task"] == "IMAGE_A1A2"
        det = [e for e in read_events(events_path) if e["ev"] == "turn_detected"][0]
        assert 2.5 < det["end"] - det["start"] < 4.5  # the whole question, not a fragment

        # 2. text streams into the chat while the answer is being produced, and speech plays
        chat = page.locator("#chat")
        seen = set()

        def streaming():
            t = chat.inner_text()
            if "▌" in t:
                seen.add(t)
            return len(seen) >= 2
        wait_for(streaming, 30, page, "streamed answer text")
        loud = wait_for(lambda: [r for r in page.evaluate("() => window.__rms") if r[1] > 0.01], 30, page,
                        "answer audio in the page")
        page.screenshot(path=str(shot_dir / "screenshot_answering.png"), full_page=False)

        # 3. "stop omni" interrupts: exactly once, playback goes quiet and stays quiet
        def barge_events():  # why no interruption came, should it not
            return [e for e in read_events(events_path) if e["ev"] not in ("camera_on",)][-12:]
        inter = wait_for(lambda: [e for e in read_events(events_path) if e["ev"] == "interrupted"], 30, page,
                         "the stop command", explain=barge_events)
        page.wait_for_timeout(2500)
        evs = read_events(events_path)
        assert len([e for e in evs if e["ev"] == "interrupted"]) == 1
        assert inter[0]["reason"].startswith("command")
        rms = page.evaluate("() => window.__rms")
        stop_onset = file_t0 + stop_onset_in_file * 1000
        (shot_dir / "rms.json").write_text(json.dumps({"file_t0": file_t0, "stop_onset": stop_onset, "rms": rms,
                                                       "gum": page.evaluate("() => window.__gum")}))
        # the answer was playing shortly before the stop (a stall of the tiny model under CPU load can leave a
        # short gap right at the onset, so look back a few seconds)
        before = [r for r in rms if stop_onset - 4000 < r[0] < stop_onset + 300]
        assert before and max(r[1] for r in before) > 0.01, "the answer was not playing when the user said stop"
        after = [r for r in rms if r[0] > stop_onset]
        quiet_from = next(r[0] for r in after if all(x[1] < 0.003 for x in after if x[0] >= r[0]))
        onset_to_silence = (quiet_from - stop_onset) / 1000
        checks = [e for e in evs if e["ev"] == "command_check" and e["is_command"]]
        print(f"\nbrowser: speech onset -> silence in the page {onset_to_silence:.3f} s; "
              f"command check {checks[0]['seconds']:.3f} s ({checks[0]['transcript']!r})")
        # the target: onset -> silence within 250 ms plus the command check's own time. Playback pauses at
        # speech onset, so the page goes quiet before the check has even finished; what remains is transport
        # (mic -> server and server -> page over WebRTC).
        assert onset_to_silence <= 0.25 + checks[0]["seconds"], onset_to_silence
        # and sooner than the phrase itself lasts (~1 s): it was the pause at onset, not the later cancel
        assert onset_to_silence < 1.5, onset_to_silence
        wait_for(lambda: "interrupted" in chat.inner_text(), 10, page, "the interrupted mark in the chat")
        # the latency panel shows the new status whole, although the column was first drawn for "running"
        wait_for(lambda: [r for r in latency_cells(page) if r.get("status", {}).get("text") == "interrupted"], 10,
                 page, "the interrupted status in the latency panel", explain=lambda: latency_cells(page))
        cells = latency_cells(page)
        clipped = [c for row in cells for c in row.values() if c["clipped"]]
        assert not clipped, clipped
        page.locator("#voice").get_by_role("button", name="start stream").dispatch_event("click")  # free the slot
        page.wait_for_timeout(500)
        page.screenshot(path=str(shot_dir / "screenshot.png"), full_page=True)

        # 4. export downloads a zip with transcript, audio and the webcam frame
        page.locator("#export").click()
        link = page.locator("#export-file a").first
        link.wait_for(timeout=15000)
        with page.expect_download() as dl:
            link.click()
        zpath = tmp_path / "export.zip"
        dl.value.save_as(zpath)

        # 5. over HTTP, the server hands out this session's files and nothing else of the recordings folder
        rec = app_dir / "rec"
        session_dir = next(d for d in rec.iterdir() if (d / "turn_001_assistant.wav").exists())
        answer = (session_dir / "turn_001_assistant.wav").read_bytes()
        urls = page.evaluate("""() => [...document.querySelectorAll('#chat [src], #chat [href]')]
            .map(e => e.getAttribute('src') || e.getAttribute('href'))""")
        played = [u for u in urls if "turn_001_assistant.wav" in u]
        assert played, urls
        assert fetch(url, played[0]) == (200, answer)  # the answer's speech as the chat plays it
        # Gradio plays a copy from its cache: in a folder only this user can open, not the shared /tmp/gradio
        copy = Path(urllib.parse.unquote(played[0].split("file=", 1)[1]))
        above = [d for d in copy.parents if d.is_relative_to(app_dir / "apptmp") and d != app_dir / "apptmp"]
        assert copy.read_bytes() == answer and any(stat.S_IMODE(d.stat().st_mode) & 0o077 == 0 for d in above), \
            [(str(d), oct(d.stat().st_mode)) for d in above]
        assert fetch(url, file_url(session_dir / "turn_001_assistant.wav")) == (200, answer)
        (rec / "secret.txt").write_text("not a session file")
        assert fetch(url, file_url(rec / "secret.txt"))[0] == 403
        assert fetch(url, file_url(session_dir) + "/%2E%2E/secret.txt")[0] == 403  # not out of it with ".." either
        ctx.close()

    with zipfile.ZipFile(zpath) as z:
        names = set(z.namelist())
        assert {"transcript.json", "transcript.md", "turn_001_user.wav", "turn_001_image.jpg",
                "turn_001_assistant.wav"} <= names, names
        data = json.loads(z.read("transcript.json"))
        turn = data["turns"][0]
        assert turn["status"] == "interrupted" and turn["image_source"] == "webcam"
        assert turn["played_s"] > 0.5 and "interrupted" in z.read("transcript.md").decode()
        with z.open("turn_001_assistant.wav") as f:
            a, sr = sf.read(f)
        assert sr == 24000 and abs(len(a) / sr - turn["played_s"]) < 0.1  # only what was heard
        with z.open("turn_001_user.wav") as f:
            u, usr = sf.read(f)
        assert usr == SR and 3.0 < len(u) / usr < 5.0


def file_url(path: Path) -> str:
    return "gradio_api/file=" + urllib.parse.quote(str(path))


def fetch(base: str, url: str) -> tuple[int, bytes]:
    """(HTTP status, body) of GET `url` (relative to the page's `base`, or absolute)."""
    try:
        with urllib.request.urlopen(urllib.parse.urljoin(base, url), timeout=15) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, b""


def latency_rows(page) -> list[dict]:
    """The latency table as rendered in the page: one dict per turn, keyed by the column headers."""
    table = page.evaluate("""() => {
        const cells = el => [...el.querySelectorAll('th, td')].map(c => c.innerText.trim());
        const rows = [...document.querySelectorAll('#latency table tr')].map(cells);
        return rows.filter(r => r.length);
    }""")
    header, body = table[0], table[1:]
    return [dict(zip(header, r)) for r in body if len(r) == len(header)]


# Each visible cell of the latency panel: its text, and whether any of it is cut off (the text runs past the
# cell's box, or an element inside it scrolls: clipped by overflow hidden). Tables hidden from view are skipped.
LATENCY_CELLS = """() => {
  const shown = el => el.checkVisibility({opacityProperty: true, visibilityProperty: true});
  const clipped = td => {
    const range = document.createRange(); range.selectNodeContents(td);
    const t = range.getBoundingClientRect(), c = td.getBoundingClientRect();
    const spills = t.width > 0 && (t.left < c.left - 0.5 || t.right > c.right + 0.5);
    const scrolls = [td, ...td.querySelectorAll('*')].some(e => e.clientWidth > 0 && e.scrollWidth > e.clientWidth + 1);
    return spills || scrolls;
  };
  return [...document.querySelectorAll('#latency table')].filter(shown).map(tb => {
    const rows = [...tb.querySelectorAll('tr')].map(tr => [...tr.querySelectorAll('th, td')]);
    const header = rows[0].map(c => c.innerText.trim());
    return rows.slice(1).filter(r => r.length === header.length).map(r =>
      Object.fromEntries(r.map((c, i) => [header[i], {text: c.innerText.trim(), clipped: clipped(c)}])));
  }).flat();
}"""


def latency_cells(page) -> list[dict]:
    """The latency panel's rows as shown: {column header: {"text", "clipped"}} per turn."""
    return page.evaluate(LATENCY_CELLS)


def test_denied_microphone_and_camera_show_a_clear_message(app, tmp_path):
    """Without the fake-UI flag headless Chromium refuses media permission; the page must say so and keep working."""
    from playwright.sync_api import sync_playwright

    url, _, _ = app
    with sync_playwright() as p:
        ctx = chromium(p, tmp_path / "profile", deny_media=True)
        page = ctx.new_page()
        page.goto(url, wait_until="load")
        status = page.locator("#status-line")
        wait_for(lambda: "Model ready" in status.inner_text(), 120, page, "the model to be ready")
        page.get_by_text("Click to Access Webcam").click()
        err = page.locator("#media-error")
        wait_for(lambda: err.is_visible() and "permission was denied" in err.inner_text(), 15, page, "the message")
        assert "Camera" in err.inner_text()
        # the session still works: a typed question is answered
        page.locator("#mode").get_by_text("text").click()
        page.locator("#text-in textarea").fill("hello")
        page.locator("#send").click()
        latency = page.locator("#latency")
        wait_for(lambda: "hello" in page.locator("#chat").inner_text() and "T1T2" in latency.inner_text()
                 and "done" in latency.inner_text(), 60, page, "the typed turn to finish")
        # the latency panel carries the bench's figures for the turn
        row = latency_rows(page)[0]
        assert row["task"] == "T1T2" and float(row["ms/step"]) > 0 and float(row["steps/s"]) > 0
        assert abs(float(row["ms/step"]) * float(row["steps/s"]) - 1000) < 0.1 * 1000  # the same rate twice
        assert float(row["prefill ms"]) > 0 and 100 < float(row["peak RSS MB"]) < 64_000
        assert row["GPU MB"] == ""  # a CPU run has no GPU figure
        # and an uploaded question with a picture (the example files) is answered too
        page.get_by_text("Upload audio / image").click()
        page.locator("#upload-audio input[type=file]").set_input_files(str(ROOT / "assets/examples/describe_the_image.wav"))
        page.locator("#upload-image input[type=file]").set_input_files(str(ROOT / "assets/examples/house.png"))
        page.wait_for_timeout(1000)
        page.locator("#upload-send").click()
        wait_for(lambda: "IMAGE_A1A2" in latency.inner_text() and latency.inner_text().count("done") >= 2, 60, page,
                 "the upload turn to finish")
        assert "audio upload" in page.locator("#chat").inner_text()
        rows = latency_cells(page)  # every value whole, the longest task name (IMAGE_A1A2) too
        assert [r["task"]["text"] for r in rows] == ["T1T2", "IMAGE_A1A2"]
        assert not [c for r in rows for c in r.values() if c["clipped"]], rows
        # settings apply to this session; a bad phrase list is refused with a message
        page.get_by_text("Interruption and turn-taking settings").click()
        page.get_by_text("off", exact=True).click()
        page.locator("#prebuffer input[type=number]").fill("0.5")
        page.locator("#prebuffer input[type=number]").press("Enter")
        page.locator("#apply").click()
        wait_for(lambda: "policy off" in page.locator("#settings-note").inner_text(), 15, page, "settings applied")
        assert "prebuffer 0.5 s" in page.locator("#settings-note").inner_text()
        page.locator("#phrases textarea").fill(" , ")
        page.locator("#apply").click()
        wait_for(lambda: "at least one stop phrase" in page.locator("body").inner_text(), 15, page, "the error")
        ctx.close()


def test_input_mistakes_are_explained_and_stop_pauses_the_recorded_answer(app, tmp_path):
    """Without a voice connection: a typed spoken answer plays in the "Last answer" player and the stop button
    pauses it; a non-image upload, a picture with a typed question and an overlong message each get a message
    (a toast), and what the user typed stays in the box, with no error mark over it."""
    from playwright.sync_api import sync_playwright

    url, _, _ = app
    not_image = tmp_path / "holiday.png"
    not_image.write_text("this is a text file with an image name")
    with sync_playwright() as p:
        ctx = chromium(p, tmp_path / "profile")
        page = ctx.new_page()
        page.goto(url, wait_until="load")
        wait_for(lambda: "Model ready" in page.locator("#status-line").inner_text(), 120, page, "the model")
        box = page.locator("#text-in textarea")

        def toasts() -> str:
            return " ".join(page.locator(".toast-body").all_inner_texts())

        # 1. the recorded answer plays (the endless checkpoint: 400 steps, ~34 s of speech) and "Stop" pauses it
        box.fill("tell me a long story")
        page.locator("#send").click()
        pause = page.locator('#last-answer [data-testid="waveform-controls"] button[aria-label="Pause"]')
        wait_for(lambda: pause.count() == 1, 90, page, "the answer playing in the Last answer player")
        clock = page.locator("#last-answer #time")
        page.wait_for_timeout(1200)
        page.locator("#stop").click()
        page.wait_for_timeout(500)
        at_stop = clock.inner_text()
        page.wait_for_timeout(1500)
        assert pause.count() == 0 and clock.inner_text() == at_stop, "the recorded answer kept playing after Stop"

        # 2. a text file named .png with an audio question: said, not a traceback
        page.get_by_text("Upload audio / image").click()
        page.locator("#upload-audio input[type=file]").set_input_files(str(ROOT / "assets/examples/describe_the_image.wav"))
        page.locator("#upload-image input[type=file]").set_input_files(str(not_image))
        page.wait_for_timeout(1000)
        page.locator("#upload-send").click()
        wait_for(lambda: "not an image I can read" in toasts(), 15, page, "the not-an-image message")

        # 3. a picture with a typed question: the model takes pictures only with a spoken question
        page.locator("#upload-image").get_by_role("button", name="Remove Image").click()
        page.locator("#upload-image input[type=file]").set_input_files(str(ROOT / "assets/examples/house.png"))
        page.wait_for_timeout(1000)
        box.fill("what is in this picture?")
        page.locator("#send").click()
        wait_for(lambda: "spoken" in toasts(), 15, page, "the picture-needs-a-spoken-question message")
        assert box.input_value() == "what is in this picture?"  # kept, to edit or resend
        page.locator("#upload-image").get_by_role("button", name="Remove Image").click()

        # 4. an overlong message is refused whole (not cut to a fragment and sent)
        long_text = "word " * 600
        box.fill(long_text)
        page.locator("#send").click()
        wait_for(lambda: "too long" in toasts(), 15, page, "the too-long message")
        assert box.input_value() == long_text
        assert "Error" not in page.locator("#text-in").inner_text()  # no error mark covering the box
        said = page.locator("#chat").inner_text()
        assert "what is in this picture" not in said and "word word" not in said  # nothing refused was sent
        ctx.close()


def test_a_full_app_says_busy_and_a_typed_stop_phrase_is_never_asked(tmp_path):
    """With --max-sessions 1 a second page is told the assistant is busy (and its messages are refused with that
    message); on the first page, "stop omni" typed while nothing plays is not sent, and the next question is."""
    from playwright.sync_api import sync_playwright

    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    with running_app(["--checkpoint", "tiny", "--port", str(port), "--max-sessions", "1", "--max-new-tokens", "16"],
                     tmp_path / "app.log", url), sync_playwright() as p:
        first = chromium(p, tmp_path / "profile1").new_page()
        first.goto(url, wait_until="load")
        wait_for(lambda: "✅ ready" in first.locator("#status-line").inner_text(), 120, first, "the first session")
        first.locator("#mode").get_by_text("text").click()
        box, chat = first.locator("#text-in textarea"), first.locator("#chat")
        box.fill("stop omni")
        first.locator("#send").click()
        wait_for(lambda: box.input_value() == "", 10, first, "the stop phrase to be taken")
        first.wait_for_timeout(1500)
        assert "stop omni" not in chat.inner_text().lower()  # never became a question
        box.fill("hello there")
        first.locator("#send").click()
        wait_for(lambda: "hello there" in chat.inner_text(), 30, first, "the question after it")

        second = chromium(p, tmp_path / "profile2").new_page()
        second.goto(url, wait_until="load")
        status = second.locator("#status-line")
        wait_for(lambda: "busy" in status.inner_text(), 30, second, "the busy message")
        assert "Try again" in status.inner_text()
        second.locator("#text-in textarea").fill("am I in?")
        second.locator("#send").click()
        wait_for(lambda: "busy" in " ".join(second.locator(".toast-body").all_inner_texts()), 10, second,
                 "the refusal")
