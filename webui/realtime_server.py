"""The Realtime API's WebSocket, `/v1/realtime`: the route beside the Gradio page (or alone, `--ui none --api`),
who may connect (the API key, the origin), and the server for the API alone. Each connection is driven by
webui/realtime_connection.py.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hmac
import os

from . import realtime_protocol as rp
from .realtime_connection import RealtimeConnection

PATH = "/v1/realtime"
API_KEY_ENV = "OMNI_API_KEY"
LOCAL_HOSTS = ("127.0.0.1", "localhost", "[::1]", "::1")
# a WebSocket frame above this closes the connection (code 1009, uvicorn's default); an event between
# rp.MAX_EVENT_BYTES and this gets an error event
WS_MAX_BYTES = 16 * 1024 * 1024
# on SIGTERM (docker stop waits 10 s before SIGKILL) each open conversation may finish its answer for this long, then
# is stopped, told why (`session_ended`) and closed with 1012
ENDING_S = 5.0
SHUTTING_DOWN = ("The server is shutting down. Your conversation ended after its last answer (or where it was when "
                 "time ran out); connect again once the server is back.")
LIVE: set = set()  # this process's open connections (each with the loop it is served on: `.loop`)
SETTLE_S = 6.0  # past `within_s`: a stopped answer's response.done, the goodbye and the close


def api_key(args) -> str | None:
    return getattr(args, "api_key", None) or os.environ.get(API_KEY_ENV) or None


def _origin_ok(headers) -> bool:
    """Browsers send an Origin; a page from another site must not reach a local assistant (and its microphone
    recordings) through the visitor's browser. Programs send none."""
    origin = headers.get("origin")
    if origin is None:
        return True
    host = origin.split("://", 1)[-1].split("/", 1)[0]
    return host == headers.get("host") or host.rsplit(":", 1)[0] in LOCAL_HOSTS


async def _deny(ws, status: int, message: str) -> None:
    from starlette.responses import PlainTextResponse

    if "websocket.http.response" in ws.scope.get("extensions", {}):
        await ws.send_denial_response(PlainTextResponse(message, status_code=status))
    else:
        await ws.close(code=1008, reason=message[:120])


async def handshake(ws, key: str | None) -> bool | None:
    """Checks a connection before it is accepted (the API key, the origin): None once refused, else whether the
    client speaks the beta protocol (header `OpenAI-Beta: realtime=v1`)."""
    if key is not None:
        given = ws.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {key}".encode()):
            await _deny(ws, 401, "Missing or wrong API key: send 'Authorization: Bearer KEY'.")
            return None
    if not _origin_ok(ws.headers):
        await _deny(ws, 403, "WebSocket connections from other web sites are refused.")
        return None
    return ws.headers.get("openai-beta", "").replace(" ", "").startswith("realtime=v1")


def realtime_endpoint(app, key: str | None):
    """The WebSocket endpoint for an OmniApp (webui/gradio_app.py): waits for the model, then one session per
    connection."""

    async def endpoint(ws) -> None:
        beta = await handshake(ws, key)
        if beta is None:
            return
        await ws.accept()
        await asyncio.to_thread(app.ready.wait, 600)
        if app.engine is None:
            await ws.send_json(rp.error_event("model_not_loaded", app.error or "The model is still loading.",
                                              kind="server_error"))
            await ws.close(code=1011)
            return
        conn = RealtimeConnection(ws, app.engine, beta)
        conn.loop = asyncio.get_running_loop()
        LIVE.add(conn)
        try:
            await conn.serve()
        finally:
            LIVE.discard(conn)

    return endpoint


async def end_conversations(live: set, message: str, within_s: float) -> None:
    """On the connections' loop: every connection in `live` (they leave it once closed) ends after its answer
    (stopped past `within_s`), told why with `session_ended`, one let in meanwhile too; returns once none is left."""
    ending: dict = {}
    while live or not all(t.done() for t in ending.values()):
        for c in list(live):
            if c not in ending and c.session is not None:
                ending[c] = asyncio.create_task(c.end_after_answer("session_ended", message, within_s))
        await asyncio.sleep(0.2)


async def end_this_servers_conversations(within_s: float = ENDING_S) -> None:
    """The server is stopping: its conversations end as above, for at most `within_s` + SETTLE_S."""
    try:
        await asyncio.wait_for(end_conversations(LIVE, SHUTTING_DOWN, within_s), within_s + SETTLE_S)
    except TimeoutError:  # a client that never answers the close: uvicorn closes it
        pass


def end_conversations_from_thread(within_s: float = ENDING_S) -> None:
    """The same from another thread (the main thread's SIGTERM handler while Gradio's server runs elsewhere)."""
    loops = {c.loop for c in list(LIVE)}  # one: the server's
    running = [asyncio.run_coroutine_threadsafe(end_this_servers_conversations(within_s), loop) for loop in loops]
    concurrent.futures.wait(running, timeout=within_s + SETTLE_S + 1.0)


def realtime_routes(app, key: str | None) -> list:
    from starlette.routing import WebSocketRoute

    return [WebSocketRoute(PATH, realtime_endpoint(app, key))]


def api_only_app(app, key: str | None):
    """`--ui none --api`: the Realtime API without a page (the same engine start-up, webui/startup.py)."""
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def index(request):
        return PlainTextResponse(f"Mini-Omni2 Realtime API: ws://{request.url.netloc}{PATH}\n{app.status}\n")

    return Starlette(routes=[Route("/", index), *realtime_routes(app, key)])


def server_config(web, host: str, port: int):
    import uvicorn

    return uvicorn.Config(web, host=host, port=port, log_level="warning", ws_max_size=WS_MAX_BYTES)


def serve_api_only(app, host: str, port: int, key: str | None) -> None:
    import uvicorn

    class Server(uvicorn.Server):
        async def shutdown(self, sockets=None) -> None:
            await end_this_servers_conversations()  # before uvicorn closes every WebSocket with a bare 1012
            await super().shutdown(sockets)

    Server(server_config(api_only_app(app, key), host, port)).run()
