"""The Realtime API (`/v1/realtime`) driven by the official `openai` package, unmodified, in both flavours (GA and
beta): typed and spoken turns (server VAD and manual), text or speech out, a picture with a spoken question,
cancel, the "stop omni" barge-in, and the API key beside the Gradio page. The tiny checkpoint, offline; answers run
to the token budget (the end-of-audio rows zeroed, as in the browser test), so an answer is playing when a test
interrupts it."""

from __future__ import annotations

import asyncio
import base64
import io
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from realtime_fixtures import api_server_fixture, audio_of, connect, free_port, spoken
from omni.random_checkpoint import make_endless_tiny_checkpoint

ROOT = Path(__file__).resolve().parents[1]
TOKENS = 80  # an answer of ~6 s of speech


server = api_server_fixture("api", TOKENS)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 120))


async def ask_typed(c, text="what is the capital of france"):
    start = len(c.events)
    await c.send({"type": "conversation.item.create",
                  "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}})
    await c.send({"type": "response.create"})
    return start


def png(color=(200, 30, 30), size=64) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


@pytest.mark.parametrize("beta", [False, True], ids=["ga", "beta"])
def test_a_typed_question_is_answered_in_speech_with_its_transcript(server, beta):
    async def go():
        async with connect(server.url, beta=beta) as c:
            start = await ask_typed(c)
            done = await c.wait("response.done", start)
            kinds = c.types(start)
            audio_delta = "response.audio.delta" if beta else "response.output_audio.delta"
            transcript = "response.audio_transcript" if beta else "response.output_audio_transcript"
            assert kinds.index("response.created") < kinds.index(audio_delta) < kinds.index("response.done")
            other = "response.output_audio.delta" if beta else "response.audio.delta"
            assert other not in kinds  # each client hears its own flavour only
            text = "".join(e.delta for e in c.of(f"{transcript}.delta", start))
            assert text and c.of(f"{transcript}.done", start)[0].transcript == text
            r = done.response
            assert r.status == "completed" and r.id == c.of("response.created", start)[0].response.id
            assert r.output[0].content[0].transcript == text
            pcm = audio_of(c.of(audio_delta, start))
            assert len(pcm) / 24000 == pytest.approx(r.metadata["audio_sent_s"], abs=0.01) and len(pcm) > 24000
            assert np.abs(pcm).max() > 0
            lat = r.metadata["latency"]
            assert r.metadata["task"] == "T1A2" and lat["first_audio_s"] > 0 and lat["model"]["steps"] > 0
            assert r.usage.output_tokens > 0 and kinds.count("response.done") == 1

    run(go())


@pytest.mark.parametrize("beta", [False, True], ids=["ga", "beta"])
def test_text_only_output(server, beta):
    async def go():
        async with connect(server.url, beta=beta) as c:
            session = {"modalities": ["text"]} if beta else {"type": "realtime", "output_modalities": ["text"]}
            await c.send({"type": "session.update", "session": session})
            upd = await c.wait("session.updated")
            assert (upd.session.modalities if beta else upd.session.output_modalities) == ["text"]
            start = await ask_typed(c)
            done = await c.wait("response.done", start)
            delta = "response.text.delta" if beta else "response.output_text.delta"
            text = "".join(e.delta for e in c.of(delta, start))
            assert text and done.response.status == "completed" and done.response.metadata["task"] == "T1T2"
            assert not [k for k in c.types(start) if "audio" in k]
            if not beta:  # a spoken question is answered in text only too: A1T2, no speech made and thrown away
                start = len(c.events)
                await c.stream(spoken("what is the capital of france", tail_s=1.0))
                done = await c.wait("response.done", start)
                assert done.response.status == "completed" and done.response.metadata["task"] == "A1T2"
                assert not [k for k in c.types(start) if k.startswith("response.output_audio")]

    run(go())


def test_a_spoken_turn_with_server_vad(server):
    async def go():
        async with connect(server.url) as c:
            await c.send({"type": "session.update", "session": {"type": "realtime", "audio": {"input": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "turn_detection": {"type": "server_vad", "silence_duration_ms": 500}}}}})
            upd = await c.wait("session.updated")
            assert upd.session.audio.input.turn_detection.silence_duration_ms == 500
            await c.stream(spoken("what is the capital of france", tail_s=1.0))
            done = await c.wait("response.done")
            kinds = c.types()
            order = ["input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped",
                     "input_audio_buffer.committed", "response.created", "response.output_audio.delta"]
            assert [kinds.index(k) for k in order] == sorted(kinds.index(k) for k in order)
            assert done.response.status == "completed" and done.response.metadata["task"] == "A1A2"
            started = c.of("input_audio_buffer.speech_started")[0]
            assert 100 < started.audio_start_ms < 800  # the speech starts 0.3 s into the audio
            assert kinds.count("response.created") == 1

    run(go())


def test_manual_turns_and_a_picture(server):
    async def go():
        async with connect(server.url, beta=True) as c:
            await c.send({"type": "session.update", "session": {"turn_detection": None}})
            upd = await c.wait("session.updated")
            assert upd.session.turn_detection is None
            await c.send({"type": "input_audio_buffer.commit"})
            err = await c.wait("error")
            assert err.error.code == "input_audio_buffer_commit_empty"
            await c.stream(spoken("what do you see in this picture"), realtime=False)
            await asyncio.sleep(1.0)
            assert "input_audio_buffer.speech_started" not in c.types()  # no VAD in manual mode
            await c.send({"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": [
                {"type": "input_image", "image_url": png()}]}})
            await c.send({"type": "input_audio_buffer.commit"})
            await c.wait("input_audio_buffer.committed")
            assert "response.created" not in c.types()  # the client asks for the answer
            await c.send({"type": "response.create"})
            done = await c.wait("response.done")
            assert done.response.status == "completed" and done.response.metadata["task"] == "IMAGE_A1A2"
            sid = c.of("session.updated")[0].session.id
            assert (Path(server.engine.recordings_dir) / sid / "turn_001_image.jpg").exists()

    run(go())


def test_a_picture_goes_with_the_next_spoken_turn_only(server):
    async def go():
        async with connect(server.url) as c:
            await c.send({"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": [
                {"type": "input_image", "image_url": png((20, 200, 40))}]}})
            await c.wait("conversation.item.added")
            await c.stream(spoken("what colour is this"))
            first = await c.wait("response.done")
            await c.stream(spoken("and now what"))
            second = await c.wait("response.done", count=2)
            assert first.response.metadata["task"] == "IMAGE_A1A2" and second.response.metadata["task"] == "A1A2"

    run(go())


@pytest.mark.parametrize("beta", [False, True], ids=["ga", "beta"])
def test_cancel_stops_the_answer_once(server, beta):
    async def go():
        async with connect(server.url, beta=beta) as c:
            start = await ask_typed(c)
            await c.wait("response.audio.delta" if beta else "response.output_audio.delta", start)
            t0 = time.monotonic()
            await c.send({"type": "response.cancel"})
            done = await c.wait("response.done", start)
            assert time.monotonic() - t0 < 3.0  # stopped, not played to the end (~6 s)
            assert done.response.status == "cancelled" and done.response.status_details.reason == "client_cancelled"
            assert done.response.metadata["played_s"] < 4.0
            n = len(c.events)
            await c.send({"type": "response.cancel"})
            err = await c.wait("error", n)
            assert err.error.code == "response_cancel_not_active"
            await asyncio.sleep(0.5)
            assert c.types().count("response.done") == 1 and c.types().count("response.created") == 1

    run(go())


async def speak_over_an_answer(c, question: str, words: str, pause_s: float, tail_s: float, timeout: float = 60):
    """A spoken question, then `words` said over its answer `pause_s` after the answer's speech began: that answer
    is cancelled. Returns its response.created, its response.done and when `words` began."""
    await c.stream(spoken(question, tail_s=0.8))
    created = await c.wait("response.created")
    await c.wait("response.output_audio.delta")
    await asyncio.sleep(pause_s)
    said = time.monotonic()
    await c.stream(spoken(words, lead_s=0.0, tail_s=tail_s))
    done = await c.wait("response.done", timeout=timeout)
    assert done.response.id == created.response.id and done.response.status == "cancelled"
    return created, done, said


async def set_policy(c, policy: str) -> None:
    await c.send({"type": "session.update", "session": {"interrupt_policy": policy}})
    assert (await c.wait("session.updated")).session.interrupt_policy == policy


def test_stop_omni_over_the_answer_cancels_it(server):
    async def go():
        async with connect(server.url) as c:
            # 0.8 s: past the echo guard, the answer is playing
            _, done, t_stop = await speak_over_an_answer(c, "tell me a long story about the sea", "stop omni", 0.8,
                                                         1.0, timeout=20)
            assert done.response.status_details.reason == "turn_detected"
            assert "stop" in done.response.metadata["latency"]["command_transcript"].lower()
            assert time.monotonic() - t_stop < 6.0  # within the stop command and its check, not the ~6 s answer
            await asyncio.sleep(1.5)
            assert c.types().count("response.created") == 1  # "stop omni" is never a question

    run(go())


def test_any_speech_interrupts_with_interrupt_policy_any(server):
    async def go():
        async with connect(server.url) as c:
            await set_policy(c, "any")
            first, _, _ = await speak_over_an_answer(c, "tell me about the moon", "what about mars", 0.8, 1.2)
            second = await c.wait("response.created", count=2)  # the new question takes the turn
            assert second.response.id != first.response.id

    run(go())


class HearsTheEndOfSpeech:
    """Stands in for a checkpoint trained with `omni train --stage irq` (the trained listener is tested in
    test_train.py): P(irq) = 1 from the first quiet 85 ms frame after 3 loud ones."""

    def __init__(self):
        self.buffer, self.loud, self.fired = np.zeros(0, np.float32), 0, False

    def add(self, samples24k):
        self.buffer, out = np.concatenate([self.buffer, samples24k]), []
        while len(self.buffer) >= 2048:
            frame, self.buffer = self.buffer[:2048], self.buffer[2048:]
            loud = np.sqrt(np.mean(frame ** 2)) > 0.02
            self.loud += loud
            self.fired = self.fired or (not loud and self.loud >= 3)
            out.append(1.0 if self.fired else 0.0)
        return out


def test_the_models_own_stop_signal_with_interrupt_policy_model(server, monkeypatch):
    from omni.inference import Omni

    monkeypatch.setattr(Omni, "has_interrupt", True)
    monkeypatch.setattr(server.engine.model, "interrupt_listener", HearsTheEndOfSpeech, raising=False)

    async def go():
        async with connect(server.url) as c:
            await set_policy(c, "model")
            _, done, _ = await speak_over_an_answer(c, "tell me about the moon", "stop omni", 0.5, 1.5)
            assert done.response.status_details.interrupted_by == "model: irq"
            await asyncio.sleep(1.5)
            assert c.types().count("response.created") == 1  # the command is never a question

    run(go())


def test_policy_model_on_a_checkpoint_without_the_signal_is_taken_with_a_warning(server):
    async def go():
        async with connect(server.url) as c:
            await c.send({"type": "session.update", "session": {"interrupt_policy": "model"}})
            warn = await c.wait("error")
            assert warn.error.type == "warning" and warn.error.code == "policy_unavailable"
            assert "omni train --stage irq" in warn.error.message
            assert (await c.wait("session.updated")).session.interrupt_policy == "model"

    run(go())


def test_instructions_are_ignored_with_a_warning(server):
    async def go():
        async with connect(server.url) as c:
            await c.send({"type": "session.update", "session": {"instructions": "be brief", "interrupt_policy": "off"}})
            warn = await c.wait("error")
            assert warn.error.type == "warning" and warn.error.code == "instructions_ignored"
            assert (await c.wait("session.updated")).session.interrupt_policy == "off"

    run(go())


def test_the_api_beside_the_gradio_page_needs_its_key(tmp_path):
    """`python app.py --api --api-key KEY`: the page still served, the API only with the key (401 otherwise)."""
    port = free_port()
    log = open(tmp_path / "app.log", "w")
    env = {**os.environ, "OMNI_API_KEY": "", "NO_PROXY": "*"}
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--checkpoint", "tiny", "--api", "--api-key",
                             "sesame", "--port", str(port), "--max-new-tokens", "20"], cwd=ROOT, stdout=log,
                            stderr=subprocess.STDOUT, env=env)
    try:
        t0 = time.monotonic()
        while True:
            try:
                page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).read().decode()
                break
            except Exception:
                assert proc.poll() is None and time.monotonic() - t0 < 120, (tmp_path / "app.log").read_text()
                time.sleep(0.5)
        assert "gradio" in page.lower()

        async def go():
            url = f"ws://127.0.0.1:{port}/v1"
            with pytest.raises(Exception, match="401"):
                async with connect(url, key="wrong"):
                    pass
            async with connect(url, key="sesame") as c:
                start = await ask_typed(c, "hi")
                assert (await c.wait("response.done", start, timeout=90)).response.status == "completed"

        run(go())
    finally:
        proc.terminate()
        proc.wait(20)
        log.close()


def test_the_api_options_are_checked_before_anything_loads():
    for args in (["--ui", "none"], ["--ui", "streamlit", "--api"]):
        r = subprocess.run([sys.executable, str(ROOT / "app.py"), "--checkpoint", "tiny", *args], cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and "--ui none --api" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, str(ROOT / "app.py"), "--help"], cwd=ROOT, capture_output=True, text=True,
                       timeout=60)
    assert "--api" in r.stdout and "--api-key" in r.stdout and "OMNI_API_KEY" in r.stdout


def test_the_key_comes_from_the_option_or_the_environment(monkeypatch):
    from webui.realtime_server import api_key
    from webui.startup import parse

    monkeypatch.delenv("OMNI_API_KEY", raising=False)
    assert api_key(parse([])) is None  # open, and bound to 127.0.0.1 by default
    assert parse([]).host == "127.0.0.1"
    monkeypatch.setenv("OMNI_API_KEY", "from-env")
    assert api_key(parse([])) == "from-env"
    assert api_key(parse(["--api-key", "given"])) == "given"


def test_web_pages_from_other_sites_are_refused(server):
    """A browser sends its page's Origin: a site the user visits must not reach the local assistant."""
    from websockets.asyncio.client import connect as ws_connect
    from websockets.exceptions import InvalidStatus

    async def go():
        with pytest.raises(InvalidStatus, match="403"):
            async with ws_connect(f"{server.url}/realtime", origin="https://evil.example", proxy=None):
                pass
        async with ws_connect(f"{server.url}/realtime", origin=f"http://127.0.0.1:{server.port}", proxy=None) as ws:
            assert '"session.created"' in await asyncio.wait_for(ws.recv(), 30)

    run(go())


@pytest.mark.parametrize("ui", ["none", "gradio"])
def test_sigterm_lets_the_answer_finish_tells_the_client_and_stops_cleanly(tmp_path, ui):
    """`python app.py --ui none --api` and the page with `--api`: SIGTERM (docker stop, systemd) mid-answer lets
    the answer finish (within 5 s), tells the client why (`session_ended`, then a 1012 close), and ends like
    Ctrl-C, without a traceback, the open conversation's transcript written to --recordings."""
    port = free_port()
    log = tmp_path / "app.log"
    ckpt = make_endless_tiny_checkpoint(tmp_path / "tiny")  # an answer that surely speaks for 20 tokens
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--checkpoint", str(ckpt), "--ui", ui, "--api",
                                 "--port", str(port), "--recordings", str(tmp_path / "rec"), "--max-new-tokens", "20",
                                 "--asr", "none"], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        try:
            t0 = time.monotonic()
            while True:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
                    break
                except Exception:
                    assert proc.poll() is None and time.monotonic() - t0 < 120, log.read_text()
                    time.sleep(0.5)

            async def go():
                async with connect(f"ws://127.0.0.1:{port}/v1") as c:
                    start = await ask_typed(c, "hi")
                    await c.wait("response.output_audio.delta", start, timeout=120)
                    proc.terminate()
                    done = await c.wait("response.done", start, timeout=30)
                    bye = await c.wait("error", start, timeout=30)
                    t1 = time.monotonic()
                    while not c.closed and time.monotonic() < t1 + 10:
                        await asyncio.sleep(0.05)
                    assert await asyncio.to_thread(proc.wait, 30) == 0
                    return c, done, bye

            c, done, bye = run(go())
        finally:
            if proc.poll() is None:
                proc.kill()
    assert done.response.status == "completed"  # 20 tokens: well within the 5 s it may take
    assert bye.error.code == "session_ended" and "shutting down" in bye.error.message
    assert c.types()[-1] == "error" and getattr(getattr(c.closed, "rcvd", None), "code", None) == 1012
    assert "Traceback" not in log.read_text()
    assert list((tmp_path / "rec").glob("*/transcript.json"))


def test_the_session_task_picks_the_inputs_and_the_answer(server):
    async def go():
        async with connect(server.url) as c:
            await c.send({"type": "session.update", "session": {"task": "A1T2", "audio": {"input": {
                "turn_detection": None}}}})
            await c.wait("session.updated")
            await ask_typed(c, "typed, but the task wants speech")  # its response.create is refused
            err = await c.wait("error")
            assert err.error.code == "invalid_request" and "A1T2 needs a spoken question" in err.error.message
            await c.stream(spoken("what is the capital of france"), realtime=False)
            await c.send({"type": "input_audio_buffer.commit"})
            start = await ask_typed(c, "this text is left out")
            done = await c.wait("response.done", start)
            assert done.response.metadata["task"] == "A1T2" and c.of("response.output_text.delta", start)
            assert not [k for k in c.types(start) if "audio" in k and k.startswith("response.")]
            await c.send({"type": "session.update", "session": {"task": "T1T2"}})
            await c.wait("session.updated", count=2)
            start = await ask_typed(c, "and now a typed one")
            assert (await c.wait("response.done", start)).response.metadata["task"] == "T1T2"

    run(go())


def test_server_vad_without_create_response_waits_for_the_client(server):
    async def go():
        async with connect(server.url) as c:
            await c.send({"type": "session.update", "session": {"audio": {"input": {"turn_detection": {
                "type": "server_vad", "create_response": False, "interrupt_response": True}}}}})
            td = (await c.wait("session.updated")).session.audio.input.turn_detection
            assert td.create_response is False
            await c.stream(spoken("what is the capital of france"))
            await c.wait("input_audio_buffer.committed")
            await asyncio.sleep(1.0)
            assert "response.created" not in c.types()  # detected, not answered
            await c.send({"type": "response.create"})
            first = await c.wait("response.created")
            await c.wait("response.output_audio.delta")
            await c.stream(spoken("wait a moment", lead_s=0.0))  # speech over the answer cancels it
            done = await c.wait("response.done")
            assert done.response.id == first.response.id and done.response.status == "cancelled"
            assert done.response.metadata["task"] == "A1A2"
            await c.send({"type": "response.create"})  # the interrupting question, detected meanwhile
            second = await c.wait("response.done", count=2)
            assert second.response.status == "completed" and c.types().count("response.created") == 2

    run(go())
