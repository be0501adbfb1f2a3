"""Replay a scripted conversation through the Realtime API, at real-time pace, and keep it as the UI's export does.

    python -m webui.replay assets/examples/conversation.jsonl --url ws://127.0.0.1:7860/v1/realtime --out capture/

The script (webui/replay_script.py) lists spoken or typed questions, pictures and interruptions. The tool is a
microphone that never stops: it streams silence between the questions (server VAD hears what a live client would)
and plays each question, and each interruption over the answer, when its time comes. It writes transcript.json and
transcript.md (the UI's format, webui/recordings.py), every question's, interruption's and answer's audio, every
picture, and the latency of each turn (the server's figures from response.done and the client's own). Used by the
load test as its load generator (`replay`).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .replay_script import RATE, BadScript, Turn, load_script

CHUNK_S = 0.04  # one microphone packet
TURN_TIMEOUT_S = 120.0


@dataclass
class Answer:
    """One response as received: created once, deltas, done once (`dones` counts them, to check it)."""
    id: str
    text: str = ""
    audio: list[np.ndarray] = field(default_factory=list)
    first_audio: float | None = None  # monotonic clock
    done: dict | None = None
    dones: int = 0


@dataclass
class TurnRecord:
    turn: Turn
    index: int
    started: float = field(default_factory=time.time)
    speech_end: float | None = None  # monotonic clock: the question's last sample was sent
    answers: list[Answer] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)


class Mic:
    """Streams audio at real-time pace, silence when nothing is queued, as a live microphone does."""

    def __init__(self, send):
        self.send = send
        self.queue: list[np.ndarray] = []
        self.idle = asyncio.Event()
        self.idle.set()

    async def play(self, pcm: np.ndarray) -> None:
        """Queue `pcm` and return once all of it has been sent."""
        self.queue.append(pcm)
        self.idle.clear()
        await self.idle.wait()

    async def run(self) -> None:
        n = int(CHUNK_S * RATE)
        t0, k = time.monotonic(), 0
        while True:
            await asyncio.sleep(max(0.0, t0 + k * CHUNK_S - time.monotonic()))
            k += 1
            chunk = np.zeros(0, np.int16)
            while len(chunk) < n and self.queue:
                take = n - len(chunk)
                chunk, self.queue[0] = np.concatenate([chunk, self.queue[0][:take]]), self.queue[0][take:]
                if not len(self.queue[0]):
                    self.queue.pop(0)
            if not self.queue:
                self.idle.set()
            chunk = np.pad(chunk, (0, n - len(chunk)))
            await self.send({"type": "input_audio_buffer.append",
                             "audio": base64.b64encode(chunk.astype("<i2").tobytes()).decode()})


class Replay:
    """One conversation over one connection."""

    def __init__(self, ws, end_silence_s: float = 1.2):
        self.ws = ws
        self.end_silence_s = end_silence_s  # after a question: the server's end-of-turn silence, and some
        self.mic = Mic(self.send)
        self.current: TurnRecord | None = None
        self.answers: dict[str, Answer] = {}
        self.events: list[str] = []
        self.session_id = ""
        self.unexpected: list[str] = []  # protocol slips: a response done twice, a delta for an unknown one

    async def send(self, ev: dict) -> None:
        await self.ws.send(json.dumps(ev))

    async def read(self) -> None:
        async for raw in self.ws:
            ev = json.loads(raw)
            kind = ev.get("type", "")
            self.events.append(kind)
            rid = ev.get("response", {}).get("id") if kind.startswith("response.") and "response" in ev \
                else ev.get("response_id")
            if kind == "session.created":
                self.session_id = ev["session"]["id"]
            elif kind == "response.created":
                a = self.answers[rid] = Answer(rid)
                if self.current is not None:
                    self.current.answers.append(a)
            elif kind == "error" and self.current is not None:
                self.current.errors.append(ev["error"])
            elif rid is not None:
                self.on_response_event(kind, rid, ev)

    def on_response_event(self, kind: str, rid: str, ev: dict) -> None:
        a = self.answers.get(rid)
        if a is None:
            self.unexpected.append(f"{kind} for unknown response {rid}")
            return
        if kind in ("response.output_audio.delta", "response.audio.delta"):
            a.first_audio = a.first_audio or time.monotonic()
            a.audio.append(np.frombuffer(base64.b64decode(ev["delta"]), "<i2"))
        elif kind.endswith("transcript.delta") or kind.endswith("text.delta"):
            a.text += ev["delta"]
        elif kind == "response.done":
            a.dones += 1
            a.done = ev["response"]
            if a.dones > 1:
                self.unexpected.append(f"response.done twice for {rid}")

    async def play_turn(self, turn: Turn, index: int) -> TurnRecord:
        rec = self.current = TurnRecord(turn, index)
        if turn.session is not None:
            await self.send({"type": "session.update", "session": turn.session})
        if turn.image is not None:
            url = f"data:{turn.image_type};base64," + base64.b64encode(turn.image).decode()
            await self.send({"type": "conversation.item.create", "item": {"type": "message", "role": "user",
                                                                          "content": [{"type": "input_image",
                                                                                       "image_url": url}]}})
        if turn.audio is not None:
            await self.mic.play(turn.audio)
            rec.speech_end = time.monotonic()
        else:
            await self.send({"type": "conversation.item.create", "item": {"type": "message", "role": "user",
                                                                          "content": [{"type": "input_text",
                                                                                       "text": turn.text}]}})
            await self.send({"type": "response.create"})
            rec.speech_end = time.monotonic()
        await self.wait_answers(rec)
        return rec

    async def wait_answers(self, rec: TurnRecord) -> None:
        """Until the turn's answers are done (after its interruption, if any) and the end-of-turn silence ran."""
        end = time.monotonic() + TURN_TIMEOUT_S
        interrupted = rec.turn.interrupt is None
        quiet_since = None
        while time.monotonic() < end:
            await asyncio.sleep(0.05)
            finished = rec.answers and all(a.done is not None for a in rec.answers)
            gave_up = not rec.answers and rec.errors  # refused: the error says why
            started = [a.first_audio for a in rec.answers if a.first_audio is not None]
            if not interrupted and started:  # `at` seconds into the answer's speech
                await asyncio.sleep(max(0.0, started[0] + rec.turn.interrupt_at - time.monotonic()))
                await self.mic.play(rec.turn.interrupt)
                interrupted = True
                continue
            interrupted = interrupted or bool(gave_up) or bool(finished and not started)  # nothing to talk over
            if interrupted and (finished or gave_up):
                quiet_since = quiet_since or time.monotonic()
                if time.monotonic() - quiet_since >= self.end_silence_s:  # no answer still to come
                    return
            else:
                quiet_since = None
        rec.errors.append({"code": "replay_timeout", "message": f"no answer within {TURN_TIMEOUT_S:.0f} s"})


async def replay(turns: list[Turn], url: str, out: Path | None = None, api_key: str | None = None,
                 end_silence_s: float = 1.2) -> dict:
    """Play `turns` through the API at `url`; write the export to `out` (if given); return the report."""
    from websockets.asyncio.client import connect

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    async with connect(url, additional_headers=headers, max_size=None, proxy=None) as ws:
        r = Replay(ws, end_silence_s)
        reader = asyncio.create_task(r.read())
        mic = asyncio.create_task(r.mic.run())
        records = []
        try:
            for i, turn in enumerate(turns, 1):
                records.append(await r.play_turn(turn, i))
                if reader.done():
                    break
        finally:
            mic.cancel()
            reader.cancel()
    report = make_report(r, records)
    if out is not None:
        from .replay_export import write_export

        write_export(Path(out), r.session_id, records, report)
    return report


def make_report(r: Replay, records: list[TurnRecord]) -> dict:
    answers = [a for rec in records for a in rec.answers]
    return {
        "session": r.session_id,
        "turns": len(records),
        "responses": len(answers),
        "completed": sum(1 for a in answers if a.done and a.done["status"] == "completed"),
        "cancelled": sum(1 for a in answers if a.done and a.done["status"] == "cancelled"),
        "failed": sum(1 for a in answers if a.done and a.done["status"] == "failed"),
        "not_done": sum(1 for a in answers if a.done is None),
        "barge_ins": sum(1 for rec in records if rec.turn.interrupt is not None),
        "errors": [e for rec in records for e in rec.errors],
        "unexpected": r.unexpected,
        "queue_wait_s": [(a.done.get("metadata") or {}).get("latency", {}).get("queue_wait_s", 0.0)
                         for a in answers if a.done],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m webui.replay", description="Play a scripted conversation through "
                                "the Realtime API (python app.py --api) and keep it as the UI's export does.")
    p.add_argument("script", help="JSONL (one turn a line) or YAML list of turns; see assets/examples/")
    p.add_argument("--url", default="ws://127.0.0.1:7860/v1/realtime", help="the API (default: %(default)s)")
    p.add_argument("--out", required=True, help="folder for transcript.json/.md, the audio and the pictures")
    p.add_argument("--api-key", default=None, help="if the server wants one (python app.py --api-key)")
    p.add_argument("--end-silence", type=float, default=1.2, help="silence after each question and answer, s")
    args = p.parse_args(argv)
    try:
        turns = load_script(args.script)
    except BadScript as e:
        print(f"Bad script: {e}", file=sys.stderr)
        return 2
    try:
        report = asyncio.run(replay(turns, args.url, Path(args.out), args.api_key, args.end_silence))
    except (OSError, asyncio.TimeoutError) as e:
        print(f"Cannot reach the API at {args.url}: {e}. Start it with: python app.py --api", file=sys.stderr)
        return 1
    except Exception as e:  # a refused handshake (401: the key), a closed connection
        print(f"The replay stopped: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(f"{report['turns']} turns, {report['responses']} answers ({report['completed']} completed, "
          f"{report['cancelled']} cancelled, {report['failed']} failed); written to {args.out}/")
    return 0 if not report["unexpected"] and not report["not_done"] else 1


if __name__ == "__main__":
    sys.exit(main())
