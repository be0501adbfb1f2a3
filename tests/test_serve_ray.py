"""`--serve ray` on a simulated cluster on this machine: three Ray nodes with one fake GPU each
(`ray.cluster_utils.Cluster`), three model replicas on the tiny checkpoint and the page replica, driven by the
official `openai` SDK over loopback. Conversations spread over the replicas and stay on theirs; no crosstalk; over
capacity a client is told the demo is full; a replica killed mid-answer ends its client's connection while the
others go on, and the client starts over elsewhere; the page serves the replica table and answers through a
handle. One cluster for the module: Ray's start-up is the slow part."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from contextlib import AsyncExitStack, asynccontextmanager

import pytest
import ray  # the Ray Serve extra: scripts/test.sh installs requirements-serve.txt
from websockets.exceptions import ConnectionClosedError
from realtime_fixtures import Client, free_port
from omni.random_checkpoint import make_endless_tiny_checkpoint

SESSIONS, QUEUE = 1, 1  # per replica: small, so that capacity is reached with a few clients
TOKENS = 60


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    from ray.cluster_utils import Cluster

    from webui.serve_options import ServePlan
    from webui.serve_ray import deploy, shutdown, spread_env, start_ray

    spread_env()  # the nodes' processes start from this one
    ckpt = make_endless_tiny_checkpoint(tmp_path_factory.mktemp("serve") / "tiny")
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 1, "include_dashboard": False})
    for _ in range(2):
        c.add_node(num_cpus=1, num_gpus=1)
    c.wait_for_nodes()
    start_ray(c.address)
    port = free_port()
    argv = ["--checkpoint", str(ckpt), "--asr", "none", "--max-new-tokens", str(TOKENS)]
    try:
        deploy(ServePlan(3, 3, 3, SESSIONS, QUEUE), argv, "127.0.0.1", port)
        wait_for(lambda: len(table(port)) == 3, 120, "three replicas on the board")
        yield port
    finally:
        shutdown()
        c.shutdown()


def wait_for(check, timeout: float, what: str):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if check():
                return
        except Exception:  # not up yet
            pass
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def table(port: int) -> list[dict]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/replicas", timeout=10) as r:
        return json.load(r)


@asynccontextmanager
async def connect(port: int, session_id: str | None = None, wait_session: bool = True):
    from openai import AsyncOpenAI

    client = AsyncOpenAI(api_key="no-key", websocket_base_url=f"ws://127.0.0.1:{port}/v1")
    async with client.realtime.connect(model="mini-omni2", websocket_connection_options={"proxy": None},
                                       extra_query={"session_id": session_id} if session_id else {},
                                       max_retries=0) as conn:
        c = Client(conn)
        try:
            if wait_session:
                await c.wait("session.created", timeout=60)
            yield c
        finally:
            c._reader.cancel()


async def connect_elsewhere(stack, port: int, not_on: str, session_id: str | None = None) -> Client:
    """A conversation on another replica than `not_on`: the router picks the less busy of two replicas, and may
    pick two busy ones (then the connection waits in a queue): try again, as a user would."""
    for _ in range(8):
        inner = AsyncExitStack()
        c = await inner.enter_async_context(connect(port, session_id, wait_session=False))
        try:
            await c.wait("session.created", timeout=8)
        except AssertionError:  # queued behind a live conversation
            await inner.aclose()
            continue
        if replica_of(c) != not_on:
            stack.push_async_callback(inner.aclose)
            return c
        await inner.aclose()
    raise AssertionError(f"no conversation on another replica than {not_on} in 8 tries")


async def ask(c: Client, text: str, audio: bool = False) -> int:
    start = len(c.events)
    if not audio:
        await c.send({"type": "session.update", "session": {"type": "realtime", "output_modalities": ["text"]}})
    await c.send({"type": "conversation.item.create", "item": {"type": "message", "role": "user",
                  "content": [{"type": "input_text", "text": text}]}})
    await c.send({"type": "response.create"})
    return start


def run(coro, timeout=240):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def replica_of(c: Client) -> str:
    return c.of("session.created")[0].session.to_dict()["replica"]


def test_conversations_spread_over_replicas_and_stay_on_theirs(cluster):
    started: list[str] = []

    async def conversation(k: int):
        await asyncio.sleep(k * 1.5)  # staggered: the router sees each one busy before the next comes
        async with connect(cluster) as c:
            home = replica_of(c)
            started.append(home)
            done = []
            for turn in range(2):
                start = await ask(c, f"question {turn} of client {k}")
                done.append(await c.wait("response.done", start, timeout=120))
            end = time.monotonic() + 30
            while len(started) < 2 and time.monotonic() < end:  # overlap with another conversation
                await asyncio.sleep(0.2)
            created = {e.response.id for e in c.of("response.created")}
            return home, [d.response.metadata["replica"] for d in done], [d.response.id for d in done], created

    async def together():
        return await asyncio.gather(*(conversation(k) for k in range(3)))

    results = run(together())
    homes = [home for home, *_ in results]
    for home, replicas, ids, created in results:
        assert replicas == [home, home]  # every turn answered where the conversation started
        assert set(ids) <= created  # each client is sent its own answers only
    assert len(set(started[:2])) == 2, homes  # spread: the second went to a free replica (one each, K=1)
    all_ids = [i for *_, ids, _ in results for i in ids]
    assert len(set(all_ids)) == len(all_ids)


def test_over_capacity_a_client_is_told_the_demo_is_full(cluster):
    capacity = 3 * (SESSIONS + QUEUE)

    async def one(k, out):
        await asyncio.sleep(k * 0.3)
        async with connect(cluster, wait_session=False) as c:
            out.append(c)
            await asyncio.sleep(12)  # hold the conversation (or the place in the queue) while the others come

    async def go():
        clients: list[Client] = []
        await asyncio.gather(*(one(k, clients) for k in range(capacity + 2)))
        return clients

    clients = run(go())
    refused = [c for c in clients if c.of("error") and c.of("error")[0].error.code == "server_busy"]
    live = [c for c in clients if c.of("session.created")]
    assert refused, [c.types() for c in clients]
    assert "full" in refused[0].of("error")[0].error.message
    assert len(live) >= 3  # every replica served its conversation; the rest waited or were refused, none failed


def test_a_killed_replica_ends_its_conversation_only_and_the_client_starts_over(cluster):
    async def go():
        async with connect(cluster) as victim:
            async with AsyncExitStack() as stack:
                home = replica_of(victim)
                bystander = await connect_elsewhere(stack, cluster, home)
                other = replica_of(bystander)
                sid = victim.of("session.created")[0].session.id
                v_start = await ask(victim, "tell me a long story", audio=True)
                b_start = await ask(bystander, "and to me a short one", audio=True)
                await victim.wait("response.output_audio.delta", v_start, timeout=120)
                actor = next(r["actor"] for r in (await asyncio.to_thread(table, cluster)) if r["replica"] == home)
                ray.kill(ray.get_actor(actor, namespace="serve"), no_restart=True)
                end = time.monotonic() + 60
                while not victim.closed and time.monotonic() < end:
                    await asyncio.sleep(0.2)
                # cut, and the client knows it: Ray's proxy drops the socket (no close frame), the SDK raises
                assert isinstance(victim.closed, ConnectionClosedError) and not victim.of("response.done", v_start)
                done = await bystander.wait("response.done", b_start, timeout=120)
                assert done.response.status == "completed" and done.response.metadata["replica"] == other
        async with AsyncExitStack() as stack:
            again = await connect_elsewhere(stack, cluster, home, session_id=sid)
            warning = again.of("error")[0].error
            assert warning.code == "session_expired" and sid in warning.message
            done = await again.wait("response.done", await ask(again, "start over"), timeout=120)
            assert done.response.status == "completed"
        return home

    killed = run(go())
    wait_for(lambda: {r["replica"] for r in table(cluster)} - {killed} == {r["replica"] for r in table(cluster)}
             and len(table(cluster)) == 3, 120, "Serve to replace the killed replica")


def test_the_page_shows_the_replicas_and_answers_through_a_handle(cluster):
    from ray import serve

    with urllib.request.urlopen(f"http://127.0.0.1:{cluster}/ui/", timeout=30) as r:
        assert r.status == 200 and "gradio" in r.read().decode().lower()
    rows = table(cluster)
    assert len(rows) == 3 and all(r["capacity"] == SESSIONS for r in rows)
    handle = serve.get_deployment_handle("model", app_name="model")
    answer = handle.ask.remote("hello there").result(timeout_s=120)
    assert answer["status"] == "done" and answer["text"] and answer["replica"] in {r["replica"] for r in rows}


REDEPLOYED: list[bool] = []  # the model replicas were redeployed as an autoscaling pool (the last two tests)


def redeploy_as_autoscaling_pool() -> None:
    """Replaces the three model replicas by an autoscaling pool (1 to 3, two conversations each, the target one
    connection a replica): a redeploy, in which Serve stops every old replica. Once per module."""
    from ray import serve

    from webui.serve_options import ServePlan
    from webui.serve_ray import MODEL_APP, model_deployment

    if not REDEPLOYED:
        argv = ["--checkpoint", "tiny", "--asr", "none", "--max-new-tokens", str(TOKENS)]
        serve.run(model_deployment(ServePlan(None, 1, 3, 2, 2), argv), name=MODEL_APP, route_prefix="/v1")
        REDEPLOYED.append(True)


def test_a_redeploy_ends_each_conversation_after_its_answer_and_the_client_goes_on_elsewhere(cluster):
    """Next to last in the module: the redeploy stops the replica holding a conversation mid-answer. Its answer is
    played to the end, then the client is told why (`session_ended`) and the socket closes with 1012; it connects
    again and is answered by a new replica."""
    async def go():
        async with connect(cluster) as c:
            home = replica_of(c)
            start = await ask(c, "tell me a long story", audio=True)
            await c.wait("response.output_audio.delta", start, timeout=120)
            redeploy = asyncio.create_task(asyncio.to_thread(redeploy_as_autoscaling_pool))
            bye = await c.wait("error", start, timeout=120)
            end = time.monotonic() + 30
            while not c.closed and time.monotonic() < end:
                await asyncio.sleep(0.1)
        await redeploy
        async with AsyncExitStack() as stack:
            again = await connect_elsewhere(stack, cluster, home)
            done = await again.wait("response.done", await ask(again, "start over"), timeout=120)
        return c, bye, done, home, replica_of(again)

    c, bye, again_done, home, new_home = run(go(), timeout=400)
    kinds = c.types()
    assert kinds.count("response.created") == kinds.count("response.done") == 1, kinds  # never cut unannounced
    assert c.of("response.done")[0].response.status == "completed"
    assert kinds.index("response.done") < kinds.index("error") and kinds[-1] == "error", kinds
    assert bye.error.code == "session_ended" and "shutting down" in bye.error.message
    assert getattr(getattr(c.closed, "rcvd", None), "code", None) == 1012, repr(c.closed)
    assert again_done.response.status == "completed" and new_home != home


def test_autoscaling_grows_under_four_conversations_and_shrinks_after(cluster):
    """Last in the module: on the autoscaling pool of the redeploy above."""
    redeploy_as_autoscaling_pool()
    wait_for(lambda: len(table(cluster)) == 1, 180, "the pool to shrink to its minimum of one replica")

    async def hold(k: int, stop: asyncio.Event):
        await asyncio.sleep(k * 0.5)
        async with connect(cluster, wait_session=False) as c:
            await stop.wait()
            return c

    async def go():
        stop = asyncio.Event()
        held = [asyncio.create_task(hold(k, stop)) for k in range(4)]
        end, most = time.monotonic() + 120, 1
        while time.monotonic() < end and most < 2:
            most = max(most, len(await asyncio.to_thread(table, cluster)))
            await asyncio.sleep(1.0)
        stop.set()
        await asyncio.gather(*held)
        return most

    assert run(go(), timeout=300) >= 2  # grew while four conversations were open
    wait_for(lambda: len(table(cluster)) == 1, 180, "the pool to shrink back to one replica")
