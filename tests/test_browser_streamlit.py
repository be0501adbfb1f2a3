"""The Streamlit page end to end in headless Debian Chromium: `python app.py --ui streamlit`, a fake microphone
(an espeak-ng question) and webcam, the real model on the tiny random checkpoint.

A webcam photo is taken and a question is recorded with the microphone; the recording is answered as a spoken
question about the photo (IMAGE_A1A2), streamed into the chat. A typed question's answer is stopped with the
stop button and keeps what was shown. A text file named .png gets a message, not a traceback. The export zip
holds both turns with the real recording (speech, not silence), the photo and the answers' speech.
"""

from __future__ import annotations

import io
import json
import os
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from test_browser_e2e import INIT_JS, chromium, free_port, running_app, sh, wait_for

from omni.random_checkpoint import make_endless_tiny_checkpoint

ROOT = Path(__file__).resolve().parents[1]
LEAD_S = 1.0  # silence before the question in the fake microphone's file
LIVE_LEAD_S, LIVE_STOP_AT = 3.0, 13.5  # live: the question, and "stop omni" (the answer is playing by then)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("stmedia")
    sh("espeak-ng", "-v", "en-us", "-s", "150", "-w", str(d / "q.wav"), "what is the capital of france and why is it so famous")
    sh("sox", "-D", str(d / "q.wav"), "-r", "48000", "-c", "1", "-b", "16", str(d / "mic.wav"), "pad", str(LEAD_S), "4")
    sh("ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=320x240:rate=15", "-t", "60",
       "-pix_fmt", "yuv420p", str(d / "cam.y4m"))
    # live: the question, then "stop omni" while the answer plays
    sh("espeak-ng", "-v", "en-us", "-s", "150", "-w", str(d / "stop.wav"), "stop omni")
    sh("sox", "-D", str(d / "q.wav"), "-r", "48000", "-c", "1", "-b", "16", str(d / "q48.wav"))
    sh("sox", "-D", str(d / "stop.wav"), "-r", "48000", "-c", "1", "-b", "16", str(d / "stop48.wav"))
    q, stop = sf.read(d / "q48.wav", dtype="float32")[0], sf.read(d / "stop48.wav", dtype="float32")[0]
    a = np.zeros(int(48000 * (LIVE_STOP_AT + 8)), np.float32)
    a[int(LIVE_LEAD_S * 48000):int(LIVE_LEAD_S * 48000) + len(q)] = q
    a[int(LIVE_STOP_AT * 48000):int(LIVE_STOP_AT * 48000) + len(stop)] = stop
    sf.write(d / "live.wav", a, 48000, subtype="PCM_16")
    return d


@pytest.fixture(scope="module")
def streamlit_app(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stapp")
    ckpt = make_endless_tiny_checkpoint(tmp / "tiny")  # answers run to the budget: 1500 steps take a few seconds
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    with running_app(["--ui", "streamlit", "--checkpoint", str(ckpt), "--port", str(port), "--recordings",
                      str(tmp / "rec"), "--max-new-tokens", "1500"], tmp / "app.log", url + "_stcore/health"):
        yield url, tmp


def open_page(ctx, url: str, app_dir: Path, init_js: str | None = None):
    """A new tab on the page once the model has loaded -> (page, sidebar, main area, the server log's tail)."""
    page = ctx.new_page()
    if init_js:
        page.add_init_script(init_js)
    page.goto(url, wait_until="load")

    def log() -> str:
        return (app_dir / "app.log").read_text()[-3000:]

    wait_for(lambda: page.get_by_text("Random weights").count(), 120, page, "the model to load", log)
    return page, page.locator('[data-testid="stSidebar"]'), page.locator('[data-testid="stMainBlockContainer"]'), log


def test_recorded_question_with_webcam_photo_stop_and_export(streamlit_app, media, tmp_path):
    from playwright.sync_api import sync_playwright

    url, app_dir = streamlit_app
    not_image = tmp_path / "holiday.png"
    not_image.write_text("this is a text file with an image name")
    with sync_playwright() as p:
        ctx = chromium(p, tmp_path / "profile", mic=media / "mic.wav", cam=media / "cam.y4m")
        page, sidebar, main, log = open_page(ctx, url, app_dir)

        def assistant_texts() -> list[str]:
            return main.locator('[data-testid="stChatMessage"]:has([data-testid="stChatMessageAvatarAssistant"])') \
                .all_inner_texts()

        # 1. webcam photo, then a recorded question: answered as a spoken question about the photo
        page.get_by_text("Webcam", exact=True).click()
        video = sidebar.locator('[data-testid="stCameraInput"] video')
        wait_for(lambda: video.count() and video.evaluate("v => v.readyState >= 2"), 20, page, "the webcam preview")
        sidebar.get_by_role("button", name="Take Photo").click()
        wait_for(lambda: sidebar.get_by_role("button", name="Clear photo").count(), 20, page, "the photo")
        sidebar.get_by_role("button", name="Record").click()
        page.wait_for_timeout(int((LEAD_S + 3.5) * 1000))  # the question (espeak: ~3.3 s) after the lead
        sidebar.get_by_role("button", name="Stop recording").click()
        wait_for(lambda: main.get_by_text("spoken question").count(), 30, page, "the recorded question in the chat",
                 lambda: main.inner_text()[:500])
        user_msg = main.locator('[data-testid="stChatMessage"]').filter(has_text="spoken question").first
        wait_for(lambda: user_msg.locator('[data-testid="stImage"] img').count() == 1, 10, page,
                 "the webcam photo shown with the question", lambda: user_msg.inner_html()[:1500])
        stop = main.get_by_role("button", name="Stop answer")
        wait_for(lambda: stop.count() == 0 and "steps/s" in (assistant_texts() or [""])[-1], 90, page,
                 "the answer to finish (its figures under it)", log)
        answer = assistant_texts()[-1]
        assert answer.strip() and "▌" not in answer and "interrupted" not in answer
        assert "first audio" in answer and "steps/s" in answer  # the latency figures under it
        wait_for(lambda: main.locator('[data-testid="stAudio"]').count() >= 1, 10, page, "the answer's speech")
        page.screenshot(path=str(Path(os.environ.get("WEBUI_SCREENSHOT_DIR", tmp_path)) / "streamlit.png"))

        # 2. a typed question, stopped while it is generated: marked, and what was shown stays
        page.get_by_text("Webcam", exact=True).click()  # webcam off: no picture with a typed question
        wait_for(lambda: sidebar.locator('[data-testid="stCameraInput"]').count() == 0, 10, page, "the webcam off")
        page.get_by_placeholder("Type a message").fill("tell me a long story")
        page.get_by_placeholder("Type a message").press("Enter")
        wait_for(lambda: stop.count() == 1, 30, page, "the stop button", log)
        # stopped once some speech exists (the export must keep it); before, a loaded run stopped it too early
        wait_for(lambda: "s of speech" in (assistant_texts() or [""])[-1], 30, page, "the answer's speech so far", log)
        stop.click()
        wait_for(lambda: main.get_by_text("(interrupted)").count(), 20, page, "the answer marked interrupted", log)
        stopped = assistant_texts()[-1]
        assert stopped.replace("(interrupted)", "").strip() not in ("", "(no text)", "…"), stopped
        # the recording was real speech: the stop-command recogniser (Whisper tiny.en) transcribed it for the history
        wait_for(lambda: "capital" in main.inner_text().lower(), 30, page, "the recorded question's transcript")

        # 3. a text file named .png, with a typed question: a message, no traceback, the page keeps working
        sidebar.locator('[data-testid="stFileUploader"]').first.locator("input[type=file]").set_input_files(
            str(not_image))
        wait_for(lambda: sidebar.get_by_text("holiday.png").count(), 20, page, "the upload in the file list")
        page.wait_for_timeout(500)  # the rerun the upload started
        page.get_by_placeholder("Type a message").fill("what is this")
        page.get_by_placeholder("Type a message").press("Enter")
        wait_for(lambda: main.get_by_text("not an image I can read").count(), 30, page, "the not-an-image message")
        assert page.locator('[data-testid="stException"]').count() == 0

        # 4. the export: both turns, the recording (speech, not silence), the photo, the answers' speech
        with page.expect_download(timeout=30000) as dl:
            sidebar.get_by_role("button", name="Export conversation").click()
        data = zipfile.ZipFile(dl.value.path())
        transcript = json.loads(data.read("transcript.json"))
        turns = transcript["turns"]
        assert [(t["kind"], t["task"], t["status"]) for t in turns] == [
            ("voice", "IMAGE_A1A2", "done"), ("text", "T1A2", "interrupted")]
        assert turns[0]["image_source"] == "webcam" and turns[1]["interrupted_by"] == "button"
        assert turns[1]["assistant_text"] == turns[1]["assistant_text_generated"]  # kept, not cut to "played"
        files = turns[0]["files"]
        assert {"user_audio", "image", "assistant_audio"} <= set(files) and "assistant_audio" in turns[1]["files"]
        question, sr = sf.read(io.BytesIO(data.read(files["user_audio"])), dtype="float32")
        assert 3.5 < len(question) / sr < 7, len(question) / sr
        window = int(0.05 * sr)
        loud = [np.sqrt(np.mean(question[i:i + window] ** 2)) for i in range(0, len(question) - window, window)]
        assert max(loud) > 0.05 and min(loud) < 0.01  # the spoken question with the silence before it
        ctx.close()


def test_live_voice_with_webcam_and_stop_omni_barge_in(streamlit_app, media, tmp_path):
    """Start talking (streamlit-webrtc): the spoken question is detected as a turn with the webcam frame, the
    answer's text streams in and its speech is heard, and saying "stop omni" interrupts it and silences it."""
    from playwright.sync_api import sync_playwright

    url, app_dir = streamlit_app
    with sync_playwright() as p:
        ctx = chromium(p, tmp_path / "profile", mic=media / "live.wav", cam=media / "cam.y4m")
        # INIT_JS runs in every frame: the WebRTC widget's iframe records the speech it receives
        page, sidebar, main, log = open_page(ctx, url, app_dir, init_js=INIT_JS)
        page.get_by_text("Webcam", exact=True).click()
        page.wait_for_timeout(1000)
        widget = page.frame_locator('iframe[title*="webrtc"]').first
        widget.get_by_role("button", name="Start talking").click()

        def widget_frame():
            return next(f for f in page.frames if f.evaluate("() => !!window.__pcs && window.__pcs.length > 0"))

        wait_for(lambda: any(f.evaluate("() => (window.__pcs || []).some(pc => ['connected', 'completed']"
                                        ".includes(pc.iceConnectionState))") for f in page.frames), 30, page,
                 "ICE connected", log)
        frame = widget_frame()
        t_connected = time.monotonic()

        # 1. the question is a turn with the webcam frame; the answer streams and is heard
        wait_for(lambda: main.get_by_text("spoken question").count(), 30, page, "the spoken turn", log)
        user_msg = main.locator('[data-testid="stChatMessage"]').filter(has_text="spoken question").first
        wait_for(lambda: user_msg.locator('[data-testid="stImage"] img').count() == 1, 10, page,
                 "the webcam frame shown with the turn")
        wait_for(lambda: "▌" in main.inner_text(), 30, page, "the answer streaming")
        wait_for(lambda: max([v for _, v in frame.evaluate("() => window.__rms")] or [0]) > 0.03, 20, page,
                 "the answer's speech at the browser")

        # 2. "stop omni" (10.5 s after the question starts) interrupts it; the speech stops
        wait_for(lambda: main.get_by_text("(interrupted)").count(), LIVE_STOP_AT + 15, page,
                 "the answer interrupted by 'stop omni'", log)
        assert time.monotonic() - t_connected > LIVE_STOP_AT - 3  # not before the command was said
        assert "Interrupted (command" in main.inner_text()
        page.wait_for_timeout(500)
        t_now = frame.evaluate("() => performance.now()")
        page.wait_for_timeout(2000)
        after = [v for t, v in frame.evaluate("() => window.__rms") if t > t_now]
        assert after and max(after) < 0.01, max(after)  # silent once interrupted
        page.screenshot(path=str(Path(os.environ.get("WEBUI_SCREENSHOT_DIR", tmp_path)) / "streamlit_live.png"))

        # 3. the export (offered as soon as the turn ended, still connected) says what happened
        export = sidebar.get_by_role("button", name="Export conversation")
        wait_for(lambda: export.count(), 10, page, "the export button")
        with page.expect_download(timeout=30000) as dl:
            export.click()
        turn = json.loads(zipfile.ZipFile(dl.value.path()).read("transcript.json"))["turns"][0]
        assert (turn["kind"], turn["task"], turn["status"], turn["image_source"]) == \
            ("voice", "IMAGE_A1A2", "interrupted", "webcam")
        assert turn["interrupted_by"].startswith("command") and 0 < turn["played_s"]
        widget.get_by_role("button", name="Stop talking").click()
        ctx.close()


def test_the_export_holds_every_turn_on_the_page_the_latest_typed_one_too(streamlit_app, tmp_path):
    """Typed questions, exported as soon as the last answer has finished: the zip holds every turn the page shows
    (the page draws the sidebar's export before it answers the question just typed)."""
    from playwright.sync_api import sync_playwright

    url, app_dir = streamlit_app
    with sync_playwright() as p:
        ctx = chromium(p, tmp_path / "profile")
        page, sidebar, main, log = open_page(ctx, url, app_dir)
        sidebar.get_by_text("text", exact=True).click()  # text answers (these questions' end early: greedy)

        def ask(question: str) -> None:
            done = main.get_by_text("steps/s").count()
            page.get_by_placeholder("Type a message").fill(question)
            page.get_by_placeholder("Type a message").press("Enter")
            wait_for(lambda: main.get_by_text("steps/s").count() > done, 120, page, f"the answer to {question!r}",
                     log)

        def exported() -> list[str]:
            export = sidebar.get_by_role("button", name="Export conversation")
            wait_for(lambda: export.count(), 10, page, "the export button", log)
            with page.expect_download(timeout=30000) as dl:
                export.click()
            return [t["user_text"] for t in json.loads(zipfile.ZipFile(dl.value.path()).read("transcript.json"))["turns"]]

        def shown() -> list[str]:
            return main.locator('[data-testid="stChatMessage"]:has([data-testid="stChatMessageAvatarUser"]) '
                                '[data-testid="stChatMessageContent"]').all_inner_texts()

        for question in ("first question", "second question"):
            ask(question)
        assert [q.strip() for q in shown()] == ["first question", "second question"]
        assert exported() == ["first question", "second question"]
        # a new page (a new session): its first typed turn can be exported at once too
        page.close()
        page, sidebar, main, log = open_page(ctx, url, app_dir)
        sidebar.get_by_text("text", exact=True).click()
        ask("first question")
        assert [q.strip() for q in shown()] == ["first question"] and exported() == ["first question"]
        ctx.close()


def test_denied_microphone_is_explained_and_typed_questions_still_work(streamlit_app, tmp_path):
    from playwright.sync_api import sync_playwright

    url, app_dir = streamlit_app
    with sync_playwright() as p:
        ctx = chromium(p, tmp_path / "profile", deny_media=True)
        page, sidebar, main, _ = open_page(ctx, url, app_dir)
        widget = page.frame_locator('iframe[title*="webrtc"]').first
        widget.get_by_role("button", name="Start talking").click()
        wait_for(lambda: "permission denied" in widget.locator("body").inner_text().lower(), 20, page,
                 "the denied-microphone message")
        assert "allow both in its site settings" in main.inner_text()  # and what to do about it
        sidebar.get_by_text("text", exact=True).click()
        page.get_by_placeholder("Type a message").fill("hello")
        page.get_by_placeholder("Type a message").press("Enter")
        wait_for(lambda: "steps/s" in main.inner_text(), 60, page, "the typed answer with its figures")
        assert "hello" in main.inner_text() and "(no text)" not in main.inner_text()
        ctx.close()
