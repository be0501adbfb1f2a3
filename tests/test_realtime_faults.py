"""The Realtime API under faults and bad input: each gets that session a clear `error` event (or a clean close), the
other sessions go on, the server keeps serving, and what was recorded stays intact. Driven by the official
`openai` client (its `send_raw` for what no well-behaved client sends)."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time

import numpy as np
import pytest
from realtime_fixtures import api_server_fixture, b64, connect, spoken

from webui import realtime_protocol as rp

FAIL_TEXT = "please fail now"  # a typed question the injected fault recognises


server = api_server_fixture("faults", 60, "--asr", "none")


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 150))


async def typed(c, text="what is the capital of france", create=True):
    start = len(c.events)
    await c.send({"type": "conversation.item.create",
                  "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}})
    if create:
        await c.send({"type": "response.create"})
    return start


async def expect_error(c, raw, code: str, match: str = ""):
    start = len(c.events)
    await c.conn.send_raw(raw if isinstance(raw, (str, bytes)) else json.dumps(raw))
    err = await c.wait("error", start, timeout=20)
    assert err.error.code == code, err
    assert match.lower() in err.error.message.lower(), err.error.message
    return err


async def answered(c, text="hello") -> None:
    """The connection still works: a typed question is answered."""
    start = await typed(c, text)
    done = await c.wait("response.done", start, timeout=60)
    assert done.response.status == "completed"


def test_malformed_unknown_and_oversized_events_get_errors_and_the_session_goes_on(server):
    async def go():
        async with connect(server.url) as c:
            await expect_error(c, "{not json", "invalid_json")
            await expect_error(c, "[1, 2]", "invalid_event")
            await expect_error(c, {"type": 7}, "invalid_event")
            await expect_error(c, {"type": "response.fly", "event_id": "e1"}, "unknown_event", "response.create")
            err = await expect_error(c, "x" * (rp.MAX_EVENT_BYTES + 10), "event_too_large", "limit")
            assert str(rp.MAX_EVENT_BYTES) in err.error.message
            await expect_error(c, {"type": "input_audio_buffer.append", "audio": "@@not base64@@"}, "invalid_audio")
            await expect_error(c, {"type": "input_audio_buffer.append", "audio": base64.b64encode(b"abc").decode()},
                               "invalid_audio", "odd")
            await expect_error(c, {"type": "input_audio_buffer.append", "audio": b64(np.zeros(24000 * 11, np.int16))},
                               "invalid_audio", "limit")
            for fmt in ({"type": "audio/pcm", "rate": 16000}, {"type": "audio/pcmu"}, "g711_ulaw"):
                key = {"input_audio_format": fmt} if isinstance(fmt, str) else \
                    {"audio": {"input": {"format": fmt}}}
                await expect_error(c, {"type": "session.update", "session": key}, "unsupported_format", "24000")
            await expect_error(c, {"type": "session.update", "session": {"output_modalities": ["video"]}},
                               "invalid_value")
            await expect_error(c, {"type": "session.update", "session": {"interrupt_policy": "sometimes"}},
                               "invalid_value")
            await expect_error(c, {"type": "session.update", "session": {"audio": {"input": {
                "turn_detection": {"type": "semantic_vad"}}}}}, "invalid_value", "server_vad")
            await answered(c)

    run(go())


def test_a_frame_over_the_transport_limit_closes_only_that_connection(server):
    async def go():
        async with connect(server.url) as other:
            from websockets.exceptions import ConnectionClosedError

            with pytest.raises(ConnectionClosedError, match="1009"):  # closing it again says how it was closed
                async with connect(server.url) as c:
                    await c.conn.send_raw("y" * (17 * 1024 * 1024))
                    t0 = time.monotonic()
                    while not c.closed:
                        assert time.monotonic() - t0 < 20, "the oversized frame did not close the connection"
                        await asyncio.sleep(0.1)
            await answered(other)
        async with connect(server.url) as again:
            await answered(again)

    run(go())


def test_bad_questions_get_clear_messages(server):
    async def go():
        async with connect(server.url) as c:
            item = {"type": "conversation.item.create", "item": {"type": "message", "role": "user"}}
            await expect_error(c, {**item, "item": {**item["item"], "content": []}}, "invalid_value")
            await expect_error(c, {**item, "item": {**item["item"], "content": [{"type": "input_text", "text": ""}]}},
                               "invalid_value", "non-empty")
            long = {"type": "input_text", "text": "x" * 10_000}
            await expect_error(c, {**item, "item": {**item["item"], "content": [long]}}, "text_too_long", "10000")
            for url, message in (("http://example.com/cat.png", "data url"),
                                 ("data:image/png;base64,%%%%", "base64"),
                                 ("data:image/png;base64," + base64.b64encode(b"\x89PNG broken").decode(),
                                  "not an image"),
                                 ("data:image/png;base64," + base64.b64encode(b"RIFF....WAVEfmt ").decode(),
                                  "not an image"),
                                 ("data:image/png;base64," + huge_png(), "too large")):
                part = {"type": "input_image", "image_url": url}
                code = "invalid_request" if message in ("not an image", "too large") else "invalid_image"
                await expect_error(c, {**item, "item": {**item["item"], "content": [part]}}, code, message)
            await expect_error(c, {"type": "response.create"}, "invalid_request", "nothing to answer")
            # a silent manual turn, and a typed question with a picture (the model needs it spoken)
            await c.send({"type": "session.update", "session": {"audio": {"input": {"turn_detection": None}}}})
            await c.wait("session.updated")
            await c.send({"type": "input_audio_buffer.append", "audio": b64(np.zeros(24000, np.int16))})
            await c.send({"type": "input_audio_buffer.commit"})
            await expect_error(c, {"type": "response.create"}, "invalid_request", "silent")
            # beyond the context: 2000 characters of many tokens each, plus the answer budget
            start = await typed(c, "𝔘𝔫" * 1000)
            err = await c.wait("error", start, timeout=30)
            assert "context" in err.error.message and "Traceback" not in err.error.message
            assert (await c.wait("response.done", start)).response.status == "failed"
            await answered(c)

    run(go())


def huge_png() -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("1", (5000, 5000)).save(buf, "PNG")  # 25 MP: small as a file, refused from its header
    return base64.b64encode(buf.getvalue()).decode()


def test_a_client_gone_mid_answer_and_cancel_storms_leave_the_others_served(server):
    async def go():
        rec = server.engine.recordings_dir
        async with connect(server.url) as steady:
            steady_start = await typed(steady, "tell me about the sea")
            # 1. a client that vanishes while its answer plays
            async with connect(server.url) as gone:
                sid = (await gone.wait("session.created")).session.id
                await gone.stream(spoken("what is the capital of france"))
                await gone.wait("response.output_audio.delta", timeout=30)
                await gone.conn.close()
            t0 = time.monotonic()
            while server.engine.get(sid) is not None:
                assert time.monotonic() - t0 < 10, "the session of a closed connection was not closed"
                await asyncio.sleep(0.1)
            data = json.loads((rec / sid / "transcript.json").read_text())
            assert data["turns"][0]["kind"] == "voice"
            import soundfile as sf

            assert len(sf.read(rec / sid / "turn_001_user.wav")[0]) > 16000  # the question as recorded
            # 2. a storm of cancels over an answer and over nothing
            async with connect(server.url) as storm:
                start = await typed(storm)
                await storm.wait("response.output_audio.delta", start)
                for _ in range(40):
                    await storm.send({"type": "response.cancel"})
                done = await storm.wait("response.done", start)
                assert done.response.status == "cancelled"
                await asyncio.sleep(1.0)
                assert storm.types(start).count("response.done") == 1
                assert [e.error.code for e in storm.of("error", start)] == ["response_cancel_not_active"] * 39
                await answered(storm)
            done = await steady.wait("response.done", steady_start, timeout=60)
            assert done.response.status == "completed"  # untouched by the others

    run(go())


@pytest.mark.parametrize("fault", ["RuntimeError", "OutOfMemoryError"])
def test_a_model_failure_mid_answer_is_an_error_for_that_session_only(server, fault, monkeypatch):
    import torch

    model = server.engine.worker.model
    real = model.stream

    def failing(task, text=None, **kw):
        events = real(task, text=text, **kw)
        if text != FAIL_TEXT:
            yield from events
            return
        for i, ev in enumerate(events):
            if i == 6:  # mid-stream: some text and speech were sent already
                events.close()
                raise torch.OutOfMemoryError("CUDA out of memory (injected)") if fault == "OutOfMemoryError" \
                    else RuntimeError("injected failure")
            yield ev

    monkeypatch.setattr(model, "stream", failing)

    async def go():
        async with connect(server.url) as other, connect(server.url) as c:
            other_start = await typed(other, "tell me about the sea")
            start = await typed(c, FAIL_TEXT)
            err = await c.wait("error", start, timeout=30)
            assert err.error.code == "generation_failed" and fault in err.error.message
            assert "conversation can go on" in err.error.message
            done = await c.wait("response.done", start)
            assert done.response.status == "failed" and fault in done.response.status_details.error.message
            assert (await other.wait("response.done", other_start, timeout=60)).response.status == "completed"
            assert not other.of("error", other_start)
            await answered(c)  # the same session goes on

    run(go())


def test_a_full_server_refuses_a_connection_with_a_message(server, monkeypatch):
    async def go():
        async with connect(server.url) as first:
            monkeypatch.setattr(server.engine.config, "max_sessions", server.engine.sessions)
            from openai import AsyncOpenAI

            client = AsyncOpenAI(api_key="k", websocket_base_url=server.url)
            async with client.realtime.connect(model="m", websocket_connection_options={"proxy": None}) as conn:
                ev = await asyncio.wait_for(conn.recv(), 20)
                assert ev.type == "error" and ev.error.code == "server_busy" and "busy" in ev.error.message
                from websockets.exceptions import ConnectionClosed

                with pytest.raises(ConnectionClosed):
                    await asyncio.wait_for(conn.recv(), 20)
            monkeypatch.undo()
            await answered(first)  # the open session is not disturbed

    run(go())


@pytest.mark.parametrize("within_s", [60.0, 0.5])
def test_a_server_going_away_ends_a_conversation_after_its_answer_and_says_why(server, within_s, monkeypatch):
    """What a Ray replica being stopped does to each conversation (webui/serve_replica.py): no new turn, the
    answer under way is finished (or, past the time allowed, stopped) with its response.done, then an `error`
    and a close with 1012."""
    import threading

    import webui.realtime_server as rs

    live: list = []

    class Kept(rs.RealtimeConnection):
        async def serve(self):
            live.append((self, asyncio.get_running_loop()))
            await super().serve()

    monkeypatch.setattr(rs, "RealtimeConnection", Kept)
    ended = threading.Event()

    async def go():
        async with connect(server.url) as c:
            start = await typed(c, "tell me about the sea")
            await c.wait("response.output_audio.delta", start, timeout=60)
            conn, loop = live[-1]
            asyncio.run_coroutine_threadsafe(conn.end_after_answer("session_ended", "going away", within_s),
                                             loop).add_done_callback(lambda _: ended.set())
            while not conn.ending:
                await asyncio.sleep(0.01)
            await c.send({"type": "response.create"})  # a new turn is refused while the conversation ends
            err = await c.wait("error", start, timeout=30)
            assert err.error.code == "session_ending", err
            done = await c.wait("response.done", start, timeout=60)
            bye = await c.wait("error", start, timeout=30, count=2)
            t0 = time.monotonic()
            while not c.closed and time.monotonic() < t0 + 10:
                await asyncio.sleep(0.05)
            return c, done, bye

    c, done, bye = run(go())
    assert ended.wait(10)
    kinds = c.types()
    assert kinds.index("response.done") < len(kinds) - 1 and kinds[-1] == "error"  # the goodbye comes last
    assert bye.error.code == "session_ended" and bye.error.message == "going away"
    assert getattr(getattr(c.closed, "rcvd", None), "code", None) == 1012, repr(c.closed)
    assert kinds.count("response.done") == 1 and kinds.count("response.created") == 1
    if within_s > 10:  # time enough: the answer was played to its end
        assert done.response.status == "completed", done.response
        assert done.response.metadata["audio_sent_s"] > 1.0
    else:  # past the time allowed: stopped, and said so
        assert done.response.status == "cancelled"
        assert done.response.status_details.reason == "server_shutdown"
