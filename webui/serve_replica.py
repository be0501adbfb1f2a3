"""One model replica of `--serve ray`: a Ray Serve deployment that loads one engine (webui/startup.py, as the app
does) and serves the Realtime API's WebSocket itself, so a conversation lives on one replica from start to end.
Each connection is the single-process server's RealtimeConnection; this file adds admission (K live, Q waiting),
the replica's name in what the client is sent, and the page's typed questions through a handle."""

# no `from __future__ import annotations`: Ray rewrites the methods of a FastAPI ingress class and FastAPI must
# see `ws: WebSocket` as a class, not a string, or it answers a WebSocket with 1008

import asyncio
import logging
import threading

from fastapi import FastAPI, WebSocket
from ray import serve

from . import realtime_protocol as rp
from .realtime_connection import RealtimeConnection
from .realtime_server import api_key, end_conversations, handshake
from .serve_admission import Admission, Closing, Full

log = logging.getLogger("webui")
api = FastAPI()
SESSION_PARAM = "session_id"  # ws://…/v1/realtime?session_id=ID: the conversation a client reconnects to
# a replica being stopped lets each answer under way finish within this (Ray's graceful_shutdown_timeout_s,
# serve_ray.GRACEFUL_S, minus time to say goodbye)
ENDING_S = 100.0
ENDED = ("This replica is shutting down (the pool is scaled down or redeployed). Your conversation ended after its "
         "last answer; connect again to go on with a new one on another replica.")


class ReplicaConnection(RealtimeConnection):
    """The API's connection, telling the client which replica holds its conversation."""

    def __init__(self, ws, engine, beta: bool, replica: str):
        super().__init__(ws, engine, beta)
        self.replica = replica

    def describe(self) -> dict:
        return {**super().describe(), "replica": self.replica}

    def response_body(self, r, status: str) -> dict:
        body = super().response_body(r, status)
        if "metadata" in body:
            body["metadata"]["replica"] = self.replica
        return body


@serve.ingress(api)
class ModelReplica:
    def __init__(self, argv: list[str], sessions: int, queue: int):
        import ray

        from .serve_board import board
        from .startup import parse, start_engine

        self.args = parse(argv)
        self.engine, ready = start_engine(self.args, say=log.info)
        ctx = serve.get_replica_context()
        self.replica = ctx.replica_id.unique_id
        self.actor = ray.get_runtime_context().get_actor_name()
        self.node = ray.get_runtime_context().get_node_id()[:8]
        self.admission = Admission(sessions, queue)
        self.key = api_key(self.args)
        self.board = board()
        self.connections: set[ReplicaConnection] = set()
        self.loop: asyncio.AbstractEventLoop | None = None  # the loop the WebSockets are served on
        self.draining = False
        self._stopped = threading.Event()
        threading.Thread(target=self._report, name="board-report", daemon=True).start()
        log.info("replica %s: %s", self.replica, ready)

    def row(self) -> dict:
        return {"replica": self.replica, "actor": self.actor, "node": self.node, "live": self.admission.live,
                "waiting": self.admission.waiting, "capacity": self.admission.capacity,
                "state": "ending" if self.draining else "serving"}

    def _report(self) -> None:
        """Every second: this replica's row to the board, which answers whether Serve is stopping us."""
        import ray

        from .serve_board import REPORT_S

        while not self._stopped.wait(REPORT_S):
            try:
                stopping = ray.get(self.board.report.remote(self.row()), timeout=10)
            except Exception:  # the board restarting: report again next time
                continue
            if stopping and not self.draining and self.loop is not None:
                self.draining = True
                asyncio.run_coroutine_threadsafe(self._end_conversations(), self.loop)

    async def _end_conversations(self) -> None:
        """Serve is stopping this replica and waits for its connections: nobody new is let in, waiting clients
        are told, and each conversation ends after its answer, with an `error` saying why."""
        log.info("replica %s: stopping, ending %d conversations", self.replica, len(self.connections))
        await self.admission.close(ENDED)
        await end_conversations(self.connections, ENDED, ENDING_S)  # Ray stops the replica past its own limit

    @api.websocket("/realtime")
    async def realtime(self, ws: WebSocket) -> None:
        beta = await handshake(ws, self.key)
        if beta is None:
            return
        earlier = ws.query_params.get(SESSION_PARAM)
        self.loop = asyncio.get_running_loop()
        await ws.accept()
        try:
            async with self.admission.slot():
                self.board.report.remote(self.row())
                if earlier and self.engine.get(earlier) is None:
                    # a conversation lives as long as its connection: after a reconnect its state is gone
                    await ws.send_json(rp.error_event(
                        "session_expired", f"Conversation {earlier} is gone (its connection closed or its replica "
                        f"stopped); this is a new conversation on replica {self.replica}: ask again.",
                        kind="warning"))
                conn = ReplicaConnection(ws, self.engine, beta, self.replica)
                self.connections.add(conn)
                try:
                    await conn.serve()
                finally:
                    self.connections.discard(conn)
        except Closing as e:  # stopping: 1012, "service restart", try again (elsewhere)
            await ws.send_json(rp.error_event("session_ended", str(e), kind="server_error"))
            await ws.close(code=1012)
        except Full as e:
            await ws.send_json(rp.error_event("server_busy", str(e), kind="server_error"))
            await ws.close(code=1013)
        finally:
            self.board.report.remote(self.row())

    async def ask(self, text: str) -> dict:
        """A typed question from the page, answered in text by this replica's engine."""
        async with self.admission.slot():
            return await asyncio.to_thread(self._answer, text)

    def _answer(self, text: str) -> dict:
        s = self.engine.new_session()
        try:
            turn = s.send_text(text, speak=False)
            s.wait_idle(300)
            return {"replica": self.replica, "text": turn.assistant_text if turn else "", "status":
                    turn.status if turn else "dropped"}
        finally:
            self.engine.close_session(s.id)

    def status(self) -> dict:
        return self.row()

    def __del__(self):
        self._stopped.set()
        try:
            self.board.drop.remote(self.replica)
            self.engine.close()
        except Exception:  # shutting down: nothing left to tell
            pass
