"""Load on loopback: three replays of 20 turns each (typed and spoken questions, every fourth interrupted by "stop
omni") at once through the Realtime API, beside a browser-less Gradio page session speaking to the same engine. No
crash, no crosstalk (each session's transcript holds its own turns only), every response completed or cancelled
exactly once, memory flat after warm-up. Prints the figures (run with -s to see them)."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import numpy as np
import psutil
from realtime_fixtures import api_server_fixture, spoken
from webui_fixtures import run_realtime, silence, speech, timeline

from webui.replay import replay
from webui.replay_script import Turn

REPLAYS, TURNS = 3, 20


server = api_server_fixture("load", 40)


def script(who: int, turns: int) -> list[Turn]:
    stop = spoken("stop omni", lead_s=0.0, tail_s=0.7)
    out = []
    for i in range(1, turns + 1):
        t = Turn(audio=spoken("what time is it", lead_s=0.1, tail_s=0.0)) if i % 5 == 2 else \
            Turn(text=f"replay {who} question {i}: tell me about the sea")
        if i % 4 == 0:
            t.interrupt, t.interrupt_at = stop, 0.4
        out.append(t)
    return out


async def replays(url: str, turns: int) -> list[dict]:
    return await asyncio.gather(*(replay(script(k, turns), url, end_silence_s=0.7) for k in range(REPLAYS)))


def page_session(app, rounds: int) -> dict:
    """A Gradio page's session (OmniApp.session, as the page gets one) with a live voice: spoken questions."""
    s = app.session(app.new_id())
    mic = timeline(*[part for _ in range(rounds) for part in (speech("how are you today"), silence(6.0))])
    run_realtime(s, mic)
    s.wait_idle(30)
    return {"session": s, "turns": list(s.history)}


def rss_mb() -> float:
    """Resident memory after a collection, with the C allocator's free pages handed back: what is held, not what
    glibc keeps cached for threads that come and go."""
    import ctypes
    import gc

    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    return psutil.Process().memory_info().rss / 2**20


def wait_for(cond, timeout: float) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.1)


def test_three_replays_and_a_page_at_once(server):
    engine, rec = server.engine, server.engine.recordings_dir
    # warm-up: every code path (typed, spoken, a barge-in, a page), the allocators' pools
    warm = threading.Thread(target=page_session, args=(server.app, 1))
    warm.start()
    asyncio.run(replays(server.url + "/realtime", 5))
    warm.join(60)
    rss_before = rss_mb()

    page: dict = {}
    t = threading.Thread(target=lambda: page.update(page_session(server.app, 4)))
    t.start()
    reports = asyncio.run(asyncio.wait_for(replays(server.url + "/realtime", TURNS), 300))
    t.join(120)
    for r in reports:  # each session is closed (its transcript written) once its connection is
        wait_for(lambda: (rec / r["session"] / "transcript.json").exists(), 20)
    rss_after = rss_mb()

    waits = [w for r in reports for w in r["queue_wait_s"]]
    print(f"\nload: {REPLAYS} replays x {TURNS} turns + 1 page session; "
          f"answers {sum(r['responses'] for r in reports)} (completed {sum(r['completed'] for r in reports)}, "
          f"cancelled {sum(r['cancelled'] for r in reports)}), barge-ins {sum(r['barge_ins'] for r in reports)}, "
          f"page turns {len(page.get('turns', []))}; queue wait mean {np.mean(waits):.3f} s max {max(waits):.3f} s; "
          f"RSS {rss_before:.0f} MB -> {rss_after:.0f} MB ({100 * (rss_after / rss_before - 1):+.1f} %)")
    for k, r in enumerate(reports):
        assert r["turns"] == TURNS and r["responses"] == TURNS, r
        assert r["not_done"] == 0 and not r["unexpected"] and not r["errors"], r
        assert r["cancelled"] == r["barge_ins"] == TURNS // 4 and r["completed"] == TURNS - TURNS // 4, r
        # no crosstalk: the server's transcript of this session holds this replay's questions, in order, only
        turns = json.loads((rec / r["session"] / "transcript.json").read_text())["turns"]
        typed = [t["user_text"] for t in turns if t["kind"] == "text"]
        assert typed == [f"replay {k} question {i}: tell me about the sea" for i in range(1, TURNS + 1)
                         if i % 5 != 2]
        assert sum(1 for t in turns if t["kind"] == "voice") == TURNS // 5
    assert len(page["turns"]) == 4 and all(t.kind == "voice" and not t.user_text for t in page["turns"])
    assert all(t.status == "done" for t in page["turns"])
    assert abs(rss_after / rss_before - 1) <= 0.10
    assert engine.worker is not None and server.thread.is_alive()  # the server still serves
