"""One Realtime API connection (webui/realtime_server.py serves them): an engine `Session` driven by the OpenAI
Realtime events (parsed in webui/realtime_protocol.py), on the same engine and model worker as the browser pages.

Audio flows as on the Gradio page's WebRTC connection: microphone audio into `Session.feed_audio` (server VAD,
barge-in) and the answer's speech out of `Session.next_frame` as it becomes due (the player's small lead), so what
the client has been sent is what it has heard, and a barge-in truncates the answer where the UI would.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from io import BytesIO

import numpy as np

from . import realtime_protocol as rp
from .config import policy_warning
from .engine import EngineBusy
from .turn import Turn

log = logging.getLogger("webui")

TICK_S = 0.02  # how often speech and text are sent out (one 20 ms frame: the browser transport's pace)
FINAL = ("done", "interrupted", "error", "cancelled")


class EventFanout:
    """The engine reports every session's events to one sink: this one passes them on to the previous sink (the
    --events log) and to the connection that owns the session."""

    _install_lock = threading.Lock()

    def __init__(self, previous):
        self.previous = previous
        self.listeners: dict[str, queue.SimpleQueue] = {}

    @classmethod
    def of(cls, engine) -> "EventFanout":
        with cls._install_lock:
            sink = engine.event_sink
            if not isinstance(sink, cls):
                sink = cls(sink)
                engine.event_sink = sink
            return sink

    def __call__(self, session_id: str, ev: dict) -> None:
        if self.previous is not None:
            self.previous(session_id, ev)
        q = self.listeners.get(session_id)
        if q is not None:
            q.put(dict(ev))


@dataclass
class Response:
    """One answer as the client sees it: created once, then deltas, then done once."""
    turn: Turn
    audio: bool  # speech is sent (else only text)
    id: str = field(default_factory=lambda: rp.new_id("resp"))
    item_id: str = field(default_factory=lambda: rp.new_id("item"))
    text_sent: int = 0
    audio_sent: int = 0  # samples


class RealtimeConnection:
    """One WebSocket client: its session, what it has pending (manual turns, a picture, typed text), the answers it
    is being sent."""

    def __init__(self, ws, engine, beta: bool):
        self.ws, self.engine, self.beta = ws, engine, beta
        self.session = None
        self.events: queue.SimpleQueue = queue.SimpleQueue()
        self._send_lock = asyncio.Lock()
        self.audio_out = True  # output_modalities ["audio"] (default) or ["text"]
        self.server_vad = True  # the session's own turn detection, barge-in and answers
        self.detector = None  # server_vad with create_response false: turns detected here, answered on request
        self.interrupt_on_speech = True  # with the detector: speech cancels the answer (interrupt_response)
        self.task = "auto"
        self.buffer: list[np.ndarray] = []  # manual turns: audio appended since the last commit
        self.received = 0  # samples appended in all (the clock of audio_start_ms)
        self.pending_audio: tuple[int, np.ndarray] | None = None  # (sample rate, samples)
        self.pending_text: str | None = None
        self.pending_image: np.ndarray | None = None
        self.responses: list[Response] = []
        self.last_index = 0
        self.closed = False
        self.ending = False  # end_after_answer: no new turns, the answer under way finishes

    # ------------------------------------------------------------ sending

    async def send(self, ev: dict) -> None:
        if self.closed:
            return
        async with self._send_lock:
            try:
                await self.ws.send_json(ev)
            except Exception:  # the client is gone: the reader sees the disconnect and ends the session
                self.closed = True

    def event(self, kind: str, **fields) -> dict:
        return rp.server_event(kind, self.beta, **fields)

    async def error(self, code: str, message: str, param=None, event_id=None, kind="invalid_request_error"):
        await self.send(rp.error_event(code, message, param, event_id, kind))

    # ------------------------------------------------------------ the connection's life

    async def serve(self) -> None:
        try:
            self.session = self.engine.new_session()
        except EngineBusy as e:
            await self.error("server_busy", str(e), kind="server_error")
            await self.ws.close(code=1013)
            return
        s = self.session
        fanout = EventFanout.of(self.engine)
        fanout.listeners[s.id] = self.events
        s.attach_transport()
        await self.send(self.event("session.created", session=self.describe()))
        pump = asyncio.create_task(self.pump())
        try:
            await self.read()
        finally:
            self.closed = True
            pump.cancel()
            fanout.listeners.pop(s.id, None)
            if self.audio_out:
                s.detach_transport()
            # writes the transcript of a --recordings folder: off the event loop
            await asyncio.to_thread(self.engine.close_session, s.id)

    async def end_after_answer(self, code: str, message: str, within_s: float) -> None:
        """Ends the conversation cleanly (its server is going away): no new turn is taken, the answer under way
        finishes and gets its response.done (past `within_s` it is stopped, and still gets one), then an `error`
        says why and the socket closes with 1012 (service restart), so speech is never cut off unannounced."""
        self.ending = True
        end = time.monotonic() + within_s
        while not self.closed and self._answering() and time.monotonic() < end:
            await asyncio.sleep(TICK_S)
        if not self.closed and self._answering():
            await asyncio.to_thread(self.session.interrupt, "server")
            end = time.monotonic() + 5.0  # the pump sends the stopped answer's response.done
            while not self.closed and self.responses and time.monotonic() < end:
                await asyncio.sleep(TICK_S)
        await self.error(code, message, kind="server_error")
        self.closed = True
        try:
            await self.ws.close(code=1012, reason="server restarting")
        except Exception:  # the client left first
            pass

    def _answering(self) -> bool:
        s = self.session
        return bool(self.responses) or s.assistant_active or s.vetting_turn is not None

    async def read(self) -> None:
        from starlette.websockets import WebSocketDisconnect

        while True:
            try:
                msg = await self.ws.receive()
            except (WebSocketDisconnect, RuntimeError):
                return
            if msg["type"] == "websocket.disconnect":
                return
            raw = msg.get("text") if msg.get("text") is not None else msg.get("bytes") or b""
            try:
                await self.handle(rp.parse(raw))
            except rp.ProtocolError as e:
                await self.error(e.code, e.message, e.param, e.event_id)
            except ValueError as e:  # the engine's messages for people (silent audio, a text too long, ...)
                await self.error("invalid_request", str(e))
            except Exception as e:  # a bug must end this request, not the connection or the server
                log.exception("realtime event failed")
                await self.error("server_error", f"The server failed on this event ({type(e).__name__}). The "
                                                 "conversation can go on.", kind="server_error")

    def describe(self) -> dict:
        cfg = self.session.config
        fmt = {"type": "audio/pcm", "rate": rp.RATE}
        td = {"type": "server_vad", "silence_duration_ms": int(cfg.vad.end_silence_s * 1000),
              "create_response": self.detector is None,
              "interrupt_response": cfg.policy != "off" if self.detector is None else self.interrupt_on_speech} \
            if self.server_vad or self.detector is not None else None
        mods = ["audio"] if self.audio_out else ["text"]
        d = {"id": self.session.id, "object": "realtime.session", "model": "mini-omni2",
             "interrupt_policy": cfg.policy, "task": self.task}
        if self.beta:
            return {**d, "modalities": ["text", "audio"] if self.audio_out else ["text"],
                    "input_audio_format": "pcm16", "output_audio_format": "pcm16", "turn_detection": td}
        return {**d, "type": "realtime", "output_modalities": mods,
                "audio": {"input": {"format": fmt, "turn_detection": td}, "output": {"format": fmt}}}

    # ------------------------------------------------------------ client events

    async def handle(self, req: rp.Request) -> None:
        body, s = req.body, self.session
        if self.ending:
            if isinstance(body, rp.AppendAudio):  # heard no more: a new turn would be cut off
                return
            if isinstance(body, (rp.CommitAudio, rp.AddItem, rp.CreateResponse)):
                raise rp.ProtocolError("session_ending", "This conversation is ending (the server is shutting "
                                       "down) and takes no new turns; connect again to go on.")
        if isinstance(body, rp.AppendAudio):
            self.received += len(body.pcm)
            if self.server_vad:
                await asyncio.to_thread(s.feed_audio, rp.RATE, body.pcm)  # Silero VAD: off the event loop
            elif self.detector is not None:
                await self.detect(body.pcm)
            else:
                self.buffer.append(body.pcm)
                if sum(map(len, self.buffer)) > rp.MAX_BUFFER_S * rp.RATE:
                    self.buffer.clear()
                    raise rp.ProtocolError("input_audio_buffer_full", f"The audio buffer holds more than "
                                           f"{rp.MAX_BUFFER_S:.0f} s; it was cleared. Commit shorter turns.")
        elif isinstance(body, rp.CommitAudio):
            await self.commit(req)
        elif isinstance(body, rp.ClearAudio):
            self.buffer.clear()
            await self.send(self.event("input_audio_buffer.cleared"))
        elif isinstance(body, rp.AddItem):
            await self.add_item(body)
        elif isinstance(body, rp.CreateResponse):
            await self.create_response(body)
        elif isinstance(body, rp.CancelResponse):
            if not await asyncio.to_thread(s.interrupt, "cancel"):
                raise rp.ProtocolError("response_cancel_not_active", "There is no response to cancel.")
        elif isinstance(body, rp.SessionUpdate):
            await self.update(body)

    async def detect(self, pcm: np.ndarray) -> None:
        """server_vad with create_response false: a detected turn waits for response.create, as a committed one
        does; speech over an answer cancels it (interrupt_response) at its onset."""
        from .vad import SAMPLE_RATE, SpeechStarted, TurnEnded

        for ev in await asyncio.to_thread(self.detector.push, rp.RATE, pcm):
            ms = int(self.received / rp.RATE * 1000)
            if isinstance(ev, SpeechStarted):
                await self.send(self.event("input_audio_buffer.speech_started", item_id=rp.new_id("item"),
                                           audio_start_ms=max(0, ms - int((self.detector.time - ev.t) * 1000))))
                if self.interrupt_on_speech:
                    await asyncio.to_thread(self.session.interrupt, "speech")
                continue
            await self.send(self.event("input_audio_buffer.speech_stopped", audio_end_ms=ms,
                                       item_id=rp.new_id("item")))
            if isinstance(ev, TurnEnded):
                self.pending_audio = (SAMPLE_RATE, ev.audio)
                await self.send(self.event("input_audio_buffer.committed", item_id=rp.new_id("item"),
                                           previous_item_id=None))

    async def commit(self, req: rp.Request) -> None:
        if self.server_vad:
            raise rp.ProtocolError("invalid_request", "With server_vad turn detection, turns end by themselves; "
                                   "set turn_detection to null to commit turns yourself.")
        if not self.buffer:
            raise rp.ProtocolError("input_audio_buffer_commit_empty", "The audio buffer is empty: append audio "
                                   "before committing it.")
        self.pending_audio = (rp.RATE, np.concatenate(self.buffer))
        self.buffer.clear()
        await self.send(self.event("input_audio_buffer.committed", item_id=rp.new_id("item"),
                                   previous_item_id=None))

    async def add_item(self, item: rp.AddItem) -> None:
        if item.image is not None:
            from .uploads import load_image

            self.pending_image = await asyncio.to_thread(load_image, BytesIO(item.image))
            if self.server_vad:  # like a webcam showing the picture until the next spoken turn takes it
                self.session.set_camera_frame(self.pending_image)
        if item.text is not None:
            self.pending_text = item.text
        if item.audio is not None:
            self.pending_audio = (rp.RATE, item.audio)
        await self.send(self.event("conversation.item.added", previous_item_id=None,
                                   item={"id": rp.new_id("item"), "type": "message", "role": "user",
                                         "status": "completed", "content": []}))

    async def create_response(self, req: rp.CreateResponse) -> None:
        audio, text, image = self.pending_audio, self.pending_text, self.pending_image
        speak = self.audio_out if req.modalities is None else req.modalities == ("audio",)
        task = self.task
        if task != "auto":  # the session asks for one task: its inputs only, and its kind of answer
            kind = "IMAGE" if task.startswith("IMAGE") else task[:2]
            needs = {"A1": audio is not None, "T1": text is not None, "IMAGE": audio is not None and image is not None}
            if not needs[kind]:
                raise rp.ProtocolError("invalid_request", f"The session's task {task} needs "
                                       f"{'a picture and ' if kind == 'IMAGE' else ''}"
                                       f"{'typed text' if kind == 'T1' else 'a spoken question'} first.")
            speak = task.endswith("A2")
            if kind == "T1":
                audio = image = None
            else:
                text = None
                image = image if kind == "IMAGE" else None
        if audio is None and text is None:
            raise rp.ProtocolError("invalid_request", "Nothing to answer: commit audio (input_audio_buffer.commit) "
                                   "or add a user message (conversation.item.create) first.")
        s = self.session
        # what was pending is used up, answered or refused (a silent recording must not block the next turn)
        self.pending_audio = self.pending_text = self.pending_image = None
        if self.server_vad:
            s.set_camera_frame(None)
        if audio is not None:
            await asyncio.to_thread(s.send_upload, audio=audio, image=image, speak=speak, kind="voice",
                                    image_source="upload")
        else:
            await asyncio.to_thread(s.send_text, text, speak, image)

    async def update(self, u: rp.SessionUpdate) -> None:
        s = self.session
        if u.modalities is not None and (u.modalities == ("audio",)) != self.audio_out:
            self.audio_out = u.modalities == ("audio",)
            # speech is paced to a listener only while one listens; text-only answers come as fast as made
            s.attach_transport() if self.audio_out else s.detach_transport()
            s.update_config(spoken_answers=self.audio_out)  # a text-only client's spoken turns: A1T2, no speech made
        if u.turn_detection is not rp.UNSET:
            td = u.turn_detection
            self.server_vad = td is not None and td.create_response
            self.detector = None
            self.buffer.clear()
            if td is not None and not td.create_response:
                from .vad import TurnDetector, load_silero

                if td.silence_s is not None:
                    s.update_config(end_silence_s=td.silence_s)
                self.detector = await asyncio.to_thread(TurnDetector, s.config.vad, load_silero())
                self.interrupt_on_speech = td.interrupt_response
            elif td is not None:
                if td.silence_s is not None:
                    s.update_config(end_silence_s=td.silence_s)
                if not td.interrupt_response:
                    s.update_config(policy="off")  # half-duplex: speech over an answer is ignored
                elif s.config.policy == "off":
                    s.update_config(policy=self.engine.config.policy)
        if u.policy is not None:
            s.update_config(policy=u.policy)
            warning = policy_warning(u.policy, self.engine.model)
            if warning:
                await self.error("policy_unavailable", warning, "session.interrupt_policy", kind="warning")
        if u.task is not None:
            self.task = u.task
        if u.instructions:
            await self.error("instructions_ignored", "Mini-Omni2 takes no instructions (it has no system prompt); "
                             "they were ignored. The rest of the update was applied.", "session.instructions",
                             kind="warning")
        await self.send(self.event("session.updated", session=self.describe()))

    # ------------------------------------------------------------ server events

    async def pump(self) -> None:
        """Every tick: the VAD's events, new answers, their text and the speech now due, answers that ended."""
        next_image = 0.0
        while not self.closed:
            await asyncio.sleep(TICK_S)
            try:
                for ev in self.vad_events():
                    await self.send(ev)
                for ev in self.answers():
                    await self.send(ev)
                now = time.monotonic()
                if self.server_vad and self.pending_image is not None and now >= next_image:
                    self.session.set_camera_frame(self.pending_image)  # kept fresh, as a webcam's frames are
                    next_image = now + 1.0
            except Exception:  # a bug: end this connection cleanly rather than repeat the error every tick
                log.exception("realtime pump failed")
                await self.error("server_error", "The server failed while sending the answer; reconnect to go on.",
                                 kind="server_error")
                self.closed = True
                await self.ws.close(code=1011)

    def vad_events(self) -> list[dict]:
        out = []
        while True:
            try:
                ev = self.events.get_nowait()
            except queue.Empty:
                return out
            ms = int(self.received / rp.RATE * 1000)
            if ev["ev"] == "speech_started":
                ago = max(0.0, time.monotonic() - ev.get("at", time.monotonic()))
                out.append(self.event("input_audio_buffer.speech_started", audio_start_ms=max(0, ms - int(ago * 1000)),
                                      item_id=rp.new_id("item")))
            elif ev["ev"] in ("turn_detected", "speech_dropped"):
                out.append(self.event("input_audio_buffer.speech_stopped", audio_end_ms=ms, item_id=rp.new_id("item")))
                if ev["ev"] == "turn_detected":
                    out.append(self.event("input_audio_buffer.committed", item_id=rp.new_id("item"),
                                          previous_item_id=None))

    def answers(self) -> list[dict]:
        s, out = self.session, []
        with s.consistent_view():  # one consistent view: which turn is current, the frames due now are its own
            vetting = s.vetting_turn  # a short turn checked for a stop phrase: announced once it is a question
            for t in s.history:
                if t.index > self.last_index:
                    if t is vetting:
                        break
                    self.last_index = t.index
                    r = Response(t, self.audio_out and t.task.endswith("A2"))
                    self.responses.append(r)
                    out.append(self.event("response.created", response=self.response_body(r, "in_progress")))
                    if t.image_source == "webcam":  # the picture went with this turn
                        self.pending_image = None
                        s.set_camera_frame(None)
            current = s.live_turn
            frames = []
            while self.audio_out:
                f = s.next_frame(480, timeout=0)
                if f is None:
                    break
                frames.append(f)
            for r in list(self.responses):
                t = r.turn
                if len(t.assistant_text) > r.text_sent:
                    delta, r.text_sent = t.assistant_text[r.text_sent:], len(t.assistant_text)
                    kind = "response.output_audio_transcript.delta" if r.audio else "response.output_text.delta"
                    out.append(self.event(kind, response_id=r.id, item_id=r.item_id, output_index=0,
                                          content_index=0, delta=delta))
                if frames and t is current and r.audio:
                    pcm = np.concatenate(frames)
                    r.audio_sent += len(pcm)
                    out.append(self.event("response.output_audio.delta", response_id=r.id, item_id=r.item_id,
                                          output_index=0, content_index=0, delta=rp.encode_pcm(pcm)))
                if t.status in FINAL and t is not s.live_turn:
                    self.responses.remove(r)
                    out += self.finished(r)
        return out

    def finished(self, r: Response) -> list[dict]:
        t, out = r.turn, []
        ids = {"response_id": r.id, "item_id": r.item_id, "output_index": 0, "content_index": 0}
        if r.audio:
            out.append(self.event("response.output_audio.done", **ids))
            out.append(self.event("response.output_audio_transcript.done", transcript=t.assistant_text, **ids))
        else:
            out.append(self.event("response.output_text.done", text=t.assistant_text, **ids))
        if t.status == "error":
            out.append(rp.error_event("generation_failed", t.error, kind="server_error"))
        status = {"done": "completed", "error": "failed"}.get(t.status, "cancelled")
        out.append(self.event("response.done", response=self.response_body(r, status)))
        return out

    def response_body(self, r: Response, status: str) -> dict:
        t = r.turn
        body = {"id": r.id, "object": "realtime.response", "status": status, "output": [],
                "output_modalities" if not self.beta else "modalities": ["audio"] if r.audio else ["text"]}
        if status == "in_progress":
            return body
        if status == "cancelled":
            # the client's own doing (response.cancel, a new request) or what it said (the stop command)
            reason = "client_cancelled" if t.interrupted_by in ("cancel", "new message", "") else \
                "server_shutdown" if t.interrupted_by == "server" else "turn_detected"
            body["status_details"] = {"type": "cancelled", "reason": reason, "interrupted_by": t.interrupted_by}
        elif status == "failed":
            body["status_details"] = {"type": "failed", "error": {"type": "server_error", "message": t.error}}
        part = {"type": "output_audio", "transcript": t.assistant_text} if r.audio else \
            {"type": "output_text", "text": t.assistant_text}
        body["output"] = [{"id": r.item_id, "type": "message", "role": "assistant", "status": "completed"
                           if status == "completed" else "incomplete", "content": [part]}]
        m = t.timings.model or {}
        prompt, steps = m.get("prompt_length") or 0, m.get("steps") or 0
        body["usage"] = {"input_tokens": prompt, "output_tokens": steps, "total_tokens": prompt + steps}
        body["metadata"] = {"turn": t.index, "task": t.task, "played_s": round(t.played_s, 3),
                            "audio_sent_s": round(r.audio_sent / rp.RATE, 3), "latency": t.timings.exported()}
        return body
