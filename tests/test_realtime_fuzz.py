"""Fuzzing the Realtime API's event parser: random bytes, random JSON and mutated valid events. No exception but
`ProtocolError` ever leaves the parser, and over the wire every event it refuses gets exactly one `error` event,
while the connection and the server go on."""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import random

import numpy as np
import pytest
from realtime_fixtures import ApiServer, connect

from webui import realtime_protocol as rp

VALID = [
    {"type": "session.update", "session": {"type": "realtime", "output_modalities": ["audio"], "audio": {
        "input": {"format": {"type": "audio/pcm", "rate": 24000},
                  "turn_detection": {"type": "server_vad", "silence_duration_ms": 600, "create_response": True,
                                     "interrupt_response": True}},
        "output": {"format": {"type": "audio/pcm", "rate": 24000}}}, "interrupt_policy": "command", "task": "auto"}},
    {"type": "session.update", "session": {"modalities": ["text", "audio"], "input_audio_format": "pcm16",
                                           "turn_detection": None}},
    {"type": "input_audio_buffer.append", "audio": base64.b64encode(np.zeros(480, "<i2").tobytes()).decode()},
    {"type": "input_audio_buffer.commit"},
    {"type": "input_audio_buffer.clear"},
    {"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": [
        {"type": "input_text", "text": "hello"}, {"type": "input_image", "image_url": "data:image/png;base64,AAAA"}]}},
    {"type": "response.create", "response": {"output_modalities": ["text"]}},
    {"type": "response.cancel"},
]
ODD_VALUES = [None, True, False, 0, -1, 1e308, float("nan"), "", "x" * 300, "data:image/png;base64,", [], [None],
              {}, {"type": None}, "pcm16", ["audio", "text", "video"], {"type": "audio/pcm", "rate": "24000"},
              "🙂" * 20, 2 ** 70]


def random_json(rng: random.Random, depth: int = 0):
    kind = rng.randrange(7 if depth < 4 else 4)
    if kind == 0:
        return rng.choice(ODD_VALUES)
    if kind == 1:
        return rng.randint(-2 ** 40, 2 ** 40)
    if kind == 2:
        return "".join(chr(rng.randrange(32, 0x2FFF)) for _ in range(rng.randrange(12)))
    if kind == 3:
        return rng.random()
    if kind == 4:
        return [random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(["type", "session", "audio", "item", "content", "response", "x"]): random_json(rng, depth + 1)
            for _ in range(rng.randrange(4))}


def paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from paths(v, prefix + (i,))


def mutate(rng: random.Random, event: dict):
    """A valid event with one part replaced by an odd value, removed, or the type misspelt."""
    ev = copy.deepcopy(event)
    where = rng.choice([p for p in paths(ev) if p])
    parent = ev
    for k in where[:-1]:
        parent = parent[k]
    action = rng.randrange(3)
    if action == 0:
        parent[where[-1]] = rng.choice(ODD_VALUES + [random_json(rng)])
    elif action == 1 and isinstance(parent, dict):
        del parent[where[-1]]
    else:
        ev["type"] = ev["type"][: rng.randrange(len(ev["type"]))] + rng.choice(["", ".", "x", "_done"])
    return ev


def samples(seed: int, n: int):
    """Raw messages: random bytes, random JSON, mutated valid events, in turn."""
    rng = random.Random(seed)
    for i in range(n):
        k = i % 3
        if k == 0:
            raw = bytes(rng.randrange(256) for _ in range(rng.randrange(64)))
            yield raw if rng.random() < 0.5 else raw.decode("latin-1")
        elif k == 1:
            yield json.dumps(random_json(rng))
        else:
            yield json.dumps(mutate(rng, rng.choice(VALID)))


def test_the_parser_takes_anything_and_only_refuses_with_a_protocol_error():
    refused = kinds = 0
    seen = set()
    for raw in samples(0, 6000):
        try:
            req = rp.parse(raw)
            assert isinstance(req, rp.Request)
            kinds += 1
        except rp.ProtocolError as e:
            refused += 1
            assert e.code and e.message and "Traceback" not in e.message
            seen.add(e.code)
    assert refused > 3000 and kinds > 100  # both sides exercised
    assert {"invalid_json", "invalid_event", "unknown_event", "invalid_value", "invalid_audio"} <= seen
    for event in VALID:  # the templates themselves are taken
        rp.parse(json.dumps(event))
    with pytest.raises(rp.ProtocolError, match="JSON"):
        rp.parse("[" * 100_000)  # nesting deeper than the JSON decoder's recursion


def test_every_refused_event_gets_one_error_over_the_wire(tmp_path):
    refused = []
    for raw in samples(1, 400):
        try:
            rp.parse(raw)
        except rp.ProtocolError:
            refused.append(raw)
    refused = refused[:150]
    srv = ApiServer(["--checkpoint", "tiny", "--max-new-tokens", "20", "--asr", "none"])
    try:
        async def go():
            async with connect(srv.url) as c:
                for raw in refused:
                    await c.conn.send_raw(raw)
                await c.wait("error", count=len(refused), timeout=60)
                await asyncio.sleep(0.5)
                assert len(c.of("error")) == len(refused) and set(c.types()) == {"session.created", "error"}
                await c.send({"type": "conversation.item.create", "item": {"type": "message", "role": "user",
                                                                           "content": [{"type": "input_text",
                                                                                        "text": "hi"}]}})
                await c.send({"type": "response.create"})
                assert (await c.wait("response.done", timeout=60)).response.status == "completed"

        asyncio.run(asyncio.wait_for(go(), 120))
    finally:
        srv.close()
