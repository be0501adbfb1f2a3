"""A model replica's admission (webui/serve_admission.py): K live, Q waiting in order, then a clear refusal; a
waiter gets the slot that frees; a wait has a limit; a replica being stopped tells its waiters why. Plain asyncio,
no Ray."""

from __future__ import annotations

import asyncio

import pytest

from webui.serve_admission import Admission, Closing, Full


def test_k_live_then_q_waiting_then_refused_and_a_waiter_gets_the_freed_slot():
    async def go():
        gate = Admission(live=2, queue=1, wait_s=30)
        release = asyncio.Event()
        order: list[str] = []

        async def conversation(name: str):
            async with gate.slot():
                order.append(name)
                await release.wait()

        first = [asyncio.create_task(conversation(n)) for n in ("a", "b")]
        await asyncio.sleep(0.05)
        waiter = asyncio.create_task(conversation("c"))
        await asyncio.sleep(0.05)
        assert (gate.live, gate.waiting, order) == (2, 1, ["a", "b"])
        with pytest.raises(Full, match="The demo is full: 2 conversations are live here and 1 are waiting"):
            async with gate.slot():
                pass
        release.set()
        await asyncio.gather(*first, waiter)
        assert order == ["a", "b", "c"] and (gate.live, gate.waiting) == (0, 0)

    asyncio.run(asyncio.wait_for(go(), 10))


def test_a_wait_that_runs_out_is_refused_and_leaves_the_queue():
    async def go():
        gate = Admission(live=1, queue=1, wait_s=0.2)
        async with gate.slot():
            with pytest.raises(Full, match="No conversation became free within"):
                async with gate.slot():
                    pass
            assert (gate.live, gate.waiting) == (1, 0)

    asyncio.run(asyncio.wait_for(go(), 10))


def test_a_closing_replica_tells_waiters_and_newcomers_why_and_keeps_the_live_one():
    async def go():
        gate = Admission(live=1, queue=2, wait_s=30)
        async with gate.slot():
            waiter = asyncio.create_task(gate.slot().__aenter__())
            await asyncio.sleep(0.05)
            assert gate.waiting == 1
            await gate.close("shutting down: connect again")
            with pytest.raises(Closing, match="shutting down: connect again"):
                await waiter
            with pytest.raises(Closing, match="shutting down"):
                async with gate.slot():
                    pass
            assert (gate.live, gate.waiting) == (1, 0)  # the live conversation ends by itself
        assert gate.live == 0

    asyncio.run(asyncio.wait_for(go(), 10))
