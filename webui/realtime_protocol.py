"""The OpenAI Realtime API's events as our server understands them: client events parsed and checked into small
typed requests, server events named for the client's flavour (GA or beta), and errors that say what is wrong.

No transport and no engine here (webui/realtime_server.py carries the events); every function is pure, so the
parser can be fuzzed. A bad event raises `ProtocolError`, never anything else.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from dataclasses import dataclass, field

import numpy as np

RATE = 24000  # the only audio format: pcm16, 24 kHz, mono (the model's output rate; the GA default)
MAX_EVENT_BYTES = 8 * 1024 * 1024  # one client event (a picture as a data URL is the biggest)
MAX_APPEND_S = 10.0  # audio in one input_audio_buffer.append
MAX_BUFFER_S = 60.0  # a manual turn's audio (uploads have the same limit: webui/uploads.py)
MAX_TEXT_CHARS = 2000  # a typed message (webui/config.py)
TASKS = ("auto", "A1A2", "A1T2", "T1A2", "T1T2", "IMAGE_A1A2")
POLICIES = ("command", "any", "off", "model")  # as webui/config.py (model: a checkpoint trained for irq)
UNSET = object()  # a field the client did not send (None is a value: turn_detection null)

# server events whose beta names differ (GA name -> beta name)
BETA_NAMES = {
    "response.output_text.delta": "response.text.delta",
    "response.output_text.done": "response.text.done",
    "response.output_audio.delta": "response.audio.delta",
    "response.output_audio.done": "response.audio.done",
    "response.output_audio_transcript.delta": "response.audio_transcript.delta",
    "response.output_audio_transcript.done": "response.audio_transcript.done",
    "conversation.item.added": "conversation.item.created",
}


class ProtocolError(ValueError):
    """A client event we cannot take: sent back as an `error` event."""

    def __init__(self, code: str, message: str, param: str | None = None, event_id: str | None = None):
        super().__init__(message)
        self.code, self.message, self.param, self.event_id = code, message, param, event_id


# ------------------------------------------------------------------ requests (what a client event asks for)


@dataclass
class SessionUpdate:
    modalities: tuple[str, ...] | None = None  # ("audio",) or ("text",)
    turn_detection: object = UNSET  # UNSET, None (manual turns) or a TurnDetection
    policy: str | None = None
    task: str | None = None
    instructions: bool = False  # sent (and ignored: the model has no system prompt to take them)


@dataclass
class TurnDetection:
    silence_s: float | None = None
    create_response: bool = True
    interrupt_response: bool = True


@dataclass
class AppendAudio:
    pcm: np.ndarray  # int16, 24 kHz


@dataclass
class CommitAudio:
    pass


@dataclass
class ClearAudio:
    pass


@dataclass
class AddItem:
    text: str | None = None
    image: bytes | None = None  # the picture file's bytes, from a data URL
    audio: np.ndarray | None = None  # int16, 24 kHz


@dataclass
class CreateResponse:
    modalities: tuple[str, ...] | None = None


@dataclass
class CancelResponse:
    pass


@dataclass
class Request:
    """A parsed client event: its id (echoed in errors) and what it asks for."""
    event_id: str | None
    body: object = field(default=None)


# ------------------------------------------------------------------ parsing


def parse(raw: str | bytes) -> Request:
    """One WebSocket message -> a Request; ProtocolError for anything we cannot take."""
    if len(raw) > MAX_EVENT_BYTES:
        raise ProtocolError("event_too_large", f"The event is {len(raw)} bytes; the limit is {MAX_EVENT_BYTES} "
                                               f"(send audio in chunks of at most {MAX_APPEND_S:.0f} s).")
    try:
        ev = json.loads(raw)
    except (ValueError, RecursionError):
        raise ProtocolError("invalid_json", "The event is not valid JSON.") from None
    if not isinstance(ev, dict):
        raise ProtocolError("invalid_event", "An event must be a JSON object with a 'type'.")
    event_id = ev.get("event_id") if isinstance(ev.get("event_id"), str) else None
    kind = ev.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("invalid_event", "The event has no 'type'.", "type", event_id)
    handler = _HANDLERS.get(kind)
    if handler is None:
        raise ProtocolError("unknown_event", f"Unknown event type {kind[:80]!r}. This server takes: "
                                             f"{', '.join(sorted(_HANDLERS))}.", "type", event_id)
    try:
        return Request(event_id, handler(ev))
    except ProtocolError as e:
        e.event_id = event_id
        raise


def _obj(ev: dict, key: str, where: str) -> dict:
    v = ev.get(key)
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise ProtocolError("invalid_value", f"'{where}' must be an object.", where)
    return v


def _session_update(ev: dict) -> SessionUpdate:
    s = _obj(ev, "session", "session")
    out = SessionUpdate()
    mods = s.get("output_modalities", s.get("modalities"))
    if mods is not None:
        out.modalities = _modalities(mods, "session.output_modalities")
    audio = _obj(s, "audio", "session.audio")
    audio_in, audio_out = _obj(audio, "input", "session.audio.input"), _obj(audio, "output", "session.audio.output")
    _check_format(audio_in.get("format", s.get("input_audio_format")), "session.audio.input.format")
    _check_format(audio_out.get("format", s.get("output_audio_format")), "session.audio.output.format")
    if "turn_detection" in audio_in:
        out.turn_detection = _turn_detection(audio_in["turn_detection"])
    elif "turn_detection" in s:  # beta
        out.turn_detection = _turn_detection(s["turn_detection"])
    if "interrupt_policy" in s:
        out.policy = _choice(s["interrupt_policy"], POLICIES, "session.interrupt_policy")
    if "task" in s:
        out.task = _choice(s["task"], TASKS, "session.task")
    out.instructions = bool(s.get("instructions"))
    return out


def _choice(v, allowed: tuple[str, ...], where: str) -> str:
    if v not in allowed:
        raise ProtocolError("invalid_value", f"'{where}' must be one of {', '.join(allowed)}.", where)
    return v


def _modalities(v, where: str) -> tuple[str, ...]:
    if not isinstance(v, list) or not v or any(m not in ("text", "audio") for m in v):
        raise ProtocolError("invalid_value", f"'{where}' must be [\"audio\"] or [\"text\"].", where)
    return ("audio",) if "audio" in v else ("text",)  # beta ["text", "audio"] means speech with its transcript


def _check_format(fmt, where: str) -> None:
    if fmt is None or fmt == "pcm16":  # beta names the format by a string
        return
    if isinstance(fmt, dict) and fmt.get("type") == "audio/pcm" and fmt.get("rate", RATE) == RATE:
        return
    raise ProtocolError("unsupported_format", f"'{where}' must be {{\"type\": \"audio/pcm\", \"rate\": {RATE}}} "
                                              f"(16-bit mono PCM at {RATE} Hz; beta: \"pcm16\").", where)


def _turn_detection(td) -> TurnDetection | None:
    where = "session.audio.input.turn_detection"
    if td is None:
        return None
    if not isinstance(td, dict) or td.get("type", "server_vad") != "server_vad":
        raise ProtocolError("invalid_value", f"'{where}' must be null (manual turns) or "
                                             "{\"type\": \"server_vad\"} (semantic_vad is not supported).", where)
    out = TurnDetection()
    ms = td.get("silence_duration_ms")
    if ms is not None:
        if isinstance(ms, bool) or not isinstance(ms, (int, float)) or not 100 <= ms <= 5000:
            raise ProtocolError("invalid_value", f"'{where}.silence_duration_ms' must be 100 to 5000.", where)
        out.silence_s = ms / 1000
    for name in ("create_response", "interrupt_response"):
        v = td.get(name, True)
        if not isinstance(v, bool):
            raise ProtocolError("invalid_value", f"'{where}.{name}' must be true or false.", where)
        setattr(out, name, v)
    return out


def decode_pcm(data, where: str, max_s: float) -> np.ndarray:
    """base64 pcm16 (24 kHz mono) -> int16 samples; ProtocolError for garbage."""
    if not isinstance(data, str):
        raise ProtocolError("invalid_audio", f"'{where}' must be base64 text of 16-bit PCM.", where)
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError("invalid_audio", f"'{where}' is not valid base64.", where) from None
    if len(raw) % 2:
        raise ProtocolError("invalid_audio", f"'{where}' has an odd number of bytes: 16-bit PCM has two per "
                                             "sample.", where)
    if len(raw) / 2 / RATE > max_s:
        raise ProtocolError("invalid_audio", f"'{where}' holds {len(raw) / 2 / RATE:.1f} s of audio; the limit is "
                                             f"{max_s:.0f} s (at {RATE} Hz).", where)
    return np.frombuffer(raw, dtype="<i2").astype(np.int16)


def _append(ev: dict) -> AppendAudio:
    return AppendAudio(decode_pcm(ev.get("audio"), "audio", MAX_APPEND_S))


def _item_create(ev: dict) -> AddItem:
    item = _obj(ev, "item", "item")
    if item.get("type", "message") != "message" or item.get("role", "user") != "user":
        raise ProtocolError("unsupported", "Only user messages can be added (item.type 'message', role 'user').",
                            "item")
    content = item.get("content")
    if not isinstance(content, list) or not content:
        raise ProtocolError("invalid_value", "'item.content' must be a non-empty list.", "item.content")
    out = AddItem()
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "text"):
            text = part.get("text")
            if not isinstance(text, str) or not text.strip():
                raise ProtocolError("invalid_value", "An input_text part needs a non-empty 'text'.", "item.content")
            if len(text) > MAX_TEXT_CHARS:
                raise ProtocolError("text_too_long", f"The message is too long ({len(text)} characters; the limit "
                                                     f"is {MAX_TEXT_CHARS}).", "item.content")
            out.text = (out.text + " " + text) if out.text else text
        elif kind == "input_image":
            out.image = _data_url(part.get("image_url"))
        elif kind == "input_audio":
            out.audio = decode_pcm(part.get("audio"), "item.content.audio", MAX_BUFFER_S)
        else:
            raise ProtocolError("unsupported", "A content part must be input_text, input_audio or input_image.",
                                "item.content")
    return out


def _data_url(url) -> bytes:
    where = "item.content.image_url"
    if not isinstance(url, str) or not url.startswith("data:image/") or ";base64," not in url:
        raise ProtocolError("invalid_image", f"'{where}' must be a data URL (data:image/png;base64,...); this "
                                             "server fetches no links.", where)
    try:
        return base64.b64decode(url.split(";base64,", 1)[1], validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError("invalid_image", f"'{where}' is not valid base64.", where) from None


def _response_create(ev: dict) -> CreateResponse:
    r = _obj(ev, "response", "response")
    mods = r.get("output_modalities", r.get("modalities"))
    return CreateResponse(_modalities(mods, "response.output_modalities") if mods is not None else None)


_HANDLERS = {
    "session.update": _session_update,
    "input_audio_buffer.append": _append,
    "input_audio_buffer.commit": lambda ev: CommitAudio(),
    "input_audio_buffer.clear": lambda ev: ClearAudio(),
    "conversation.item.create": _item_create,
    "response.create": _response_create,
    "response.cancel": lambda ev: CancelResponse(),
    "output_audio_buffer.clear": lambda ev: CancelResponse(),  # GA: stop what is playing
}


# ------------------------------------------------------------------ server events


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:20]}"


def server_event(kind: str, beta: bool, **fields) -> dict:
    """A server event under its GA name, or its beta name for a beta client."""
    return {"type": BETA_NAMES.get(kind, kind) if beta else kind, "event_id": new_id("event"), **fields}


def error_event(code: str, message: str, param: str | None = None, event_id: str | None = None,
                kind: str = "invalid_request_error") -> dict:
    return {"type": "error", "event_id": new_id("event"),
            "error": {"type": kind, "code": code, "message": message, "param": param, "event_id": event_id}}


def encode_pcm(pcm: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(pcm, dtype="<i2").tobytes()).decode("ascii")
