"""Helpers for the Realtime API tests: the API served in this process on the tiny checkpoint (so a test can reach
the engine: inject a fault, read a session), and the official `openai` client connected to it, unmodified."""

from __future__ import annotations

import asyncio
import base64
import threading
import time
from contextlib import asynccontextmanager

import numpy as np
import pytest

from webui_fixtures import silence, speech  # noqa: F401  (tests import them from here)

RATE = 24000


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ApiServer:
    """`python app.py --ui none --api ARGS` in this process: the app's own loading thread, engine and routes."""

    def __init__(self, argv: list[str], key: str | None = None):
        import uvicorn

        from webui.gradio_app import OmniApp
        from webui.realtime_server import api_only_app, server_config
        from webui.startup import parse

        self.app = OmniApp(parse(argv))
        self.app.load_in_background()  # as app.py does: torch's thread team stays on a thread that ends
        assert self.app.ready.wait(300) and self.app.engine is not None, self.app.error
        self.port = free_port()
        self.server = uvicorn.Server(server_config(api_only_app(self.app, key), "127.0.0.1", self.port))
        self.thread = threading.Thread(target=self.server.run, name="uvicorn", daemon=True)
        self.thread.start()
        t0 = time.monotonic()
        while not self.server.started:
            assert time.monotonic() - t0 < 30, "the API server did not start"
            time.sleep(0.05)
        self.url = f"ws://127.0.0.1:{self.port}/v1"

    @property
    def engine(self):
        return self.app.engine

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)
        self.app.engine.close()


def api_server_fixture(name: str, tokens: int, *extra: str):
    """A module's `server` fixture: ApiServer on a tiny checkpoint whose answers run to `tokens`, recording into a
    folder of its own (`server = api_server_fixture("api", 80)`)."""
    from omni.random_checkpoint import make_endless_tiny_checkpoint

    @pytest.fixture(scope="module")
    def server(tmp_path_factory):
        tmp = tmp_path_factory.mktemp(name)
        srv = ApiServer(["--checkpoint", str(make_endless_tiny_checkpoint(tmp / "tiny")), "--max-new-tokens",
                         str(tokens), "--recordings", str(tmp / "rec"), *extra])
        yield srv
        srv.close()

    return server


def pcm16(audio: np.ndarray) -> np.ndarray:
    return (np.clip(audio, -1, 1) * 32767).astype(np.int16)


def b64(pcm: np.ndarray) -> str:
    return base64.b64encode(pcm.astype("<i2").tobytes()).decode()


def spoken(text: str, lead_s: float = 0.3, tail_s: float = 1.2) -> np.ndarray:
    """espeak-ng speech at 24 kHz with silence around it, as int16."""
    return pcm16(np.concatenate([silence(lead_s, RATE), speech(text, RATE), silence(tail_s, RATE)]))


class Client:
    """The official SDK's connection, with every event it receives kept in order (read by a background task), so a
    test can send audio at real-time pace while answers arrive."""

    def __init__(self, conn):
        self.conn = conn
        self.events: list = []
        self._new = asyncio.Event()
        self._reader = asyncio.create_task(self._read())
        self.closed = False

    async def _read(self):
        try:
            async for ev in self.conn:
                self.events.append(ev)
                self._new.set()
        except Exception as e:  # the server closed the connection
            self.closed = e
        self.closed = self.closed or True
        self._new.set()

    def types(self, start: int = 0) -> list[str]:
        return [e.type for e in self.events[start:]]

    def of(self, kind: str, start: int = 0) -> list:
        return [e for e in self.events[start:] if e.type == kind]

    async def wait(self, kind: str, start: int = 0, timeout: float = 60.0, count: int = 1):
        """The `count`-th event of type `kind` from index `start` on."""
        end = time.monotonic() + timeout
        while True:
            found = self.of(kind, start)
            if len(found) >= count:
                return found[count - 1]
            if self.closed:
                raise AssertionError(f"connection closed ({self.closed!r}) before {kind}; got {self.types(start)}")
            left = end - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {kind} within {timeout} s; got {self.types(start)}")
            self._new.clear()
            try:
                await asyncio.wait_for(self._new.wait(), min(left, 0.5))
            except asyncio.TimeoutError:
                pass

    async def send(self, event: dict) -> None:
        await self.conn.send(event)

    async def stream(self, pcm: np.ndarray, chunk_s: float = 0.04, realtime: bool = True) -> None:
        """input_audio_buffer.append at the pace a microphone produces it."""
        n = int(chunk_s * RATE)
        t0 = time.monotonic()
        for k, i in enumerate(range(0, len(pcm), n)):
            if realtime:
                await asyncio.sleep(max(0.0, t0 + k * chunk_s - time.monotonic()))
            await self.conn.send({"type": "input_audio_buffer.append", "audio": b64(pcm[i:i + n])})

    async def close(self) -> None:
        self._reader.cancel()
        await self.conn.close()


@asynccontextmanager
async def connect(url: str, beta: bool = False, key: str = "no-key"):
    """The SDK as a user writes it; `proxy: None` so a proxy variable cannot break loopback."""
    from openai import AsyncOpenAI

    client = AsyncOpenAI(api_key=key, websocket_base_url=url)
    realtime = client.beta.realtime if beta else client.realtime
    async with realtime.connect(model="mini-omni2", websocket_connection_options={"proxy": None}) as conn:
        c = Client(conn)
        try:
            await c.wait("session.created", timeout=30)
            yield c
        finally:
            c._reader.cancel()


def audio_of(events) -> np.ndarray:
    return np.concatenate([np.frombuffer(base64.b64decode(e.delta), "<i2") for e in events]) if events \
        else np.zeros(0, np.int16)
