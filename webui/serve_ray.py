"""`python app.py --serve ray`: the Realtime API and a page over a pool of model replicas on Ray Serve
(docs/scale-out.md). Two Serve applications behind Ray's one HTTP proxy: "model" (the replicas, /v1/realtime) and
"page" (one CPU replica, the Gradio page at /ui). Ray starts on this machine unless --address names a cluster."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from .serve_options import ServePlan

ROOT = Path(__file__).resolve().parents[1]
MODEL_APP, PAGE_APP = "model", "page"
# Ray's own cap per replica sits above K + Q: every connection reaches the replica's admission, which refuses
# clearly (Ray's queue would answer a bare HTTP 500)
REFUSAL_HEADROOM = 8
# a replica that is scaled down or redeployed waits this long for its conversations: an answer of 512 tokens
# at CPU speed fits
GRACEFUL_S = 120.0
# Ray's proxy prefers replicas on its own node until they are at Ray's cap: conversations would pile onto the head
# node's GPU while the others idle. Spread them (the less busy of two replicas) instead.
SPREAD_ENV = {"RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING": "0"}


def spread_env() -> None:
    """For Ray processes started from this one (a local Ray, a simulated cluster): read by Serve's proxy."""
    os.environ.update(SPREAD_ENV)


def start_ray(address: str | None) -> None:
    import ray

    # replicas import webui/ and omni/ from this checkout, wherever Ray starts their processes
    spread_env()
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])), **SPREAD_ENV}
    ray.init(address=address or "local", include_dashboard=False, runtime_env={"env_vars": env},
             logging_level="WARNING", log_to_driver=False, namespace="mini-omni2")


def model_resources() -> dict:
    """A whole GPU per replica where the cluster has GPUs (fake ones in the tests), else a CPU core."""
    import ray

    return {"num_gpus": 1, "num_cpus": 0.25} if ray.cluster_resources().get("GPU", 0) >= 1 else {"num_cpus": 1}


def model_deployment(plan: ServePlan, argv: list[str]):
    from ray import serve

    from .serve_replica import ModelReplica

    scale = {"num_replicas": plan.replicas} if plan.replicas is not None else {"autoscaling_config": {
        "min_replicas": plan.min_replicas, "max_replicas": plan.max_replicas,
        "target_ongoing_requests": plan.target_ongoing, "upscale_delay_s": 2.0, "downscale_delay_s": 10.0,
        "metrics_interval_s": 1.0, "look_back_period_s": 2.0}}
    d = serve.deployment(ModelReplica, name="model", ray_actor_options=model_resources(),
                         max_ongoing_requests=plan.sessions + plan.queue + REFUSAL_HEADROOM,
                         graceful_shutdown_timeout_s=GRACEFUL_S, health_check_period_s=2.0,
                         health_check_timeout_s=30.0, **scale)
    return d.bind(argv, plan.sessions, plan.queue)


def page_deployment(api_url: str, banner: str | None):
    from ray import serve

    from .serve_page import page_app

    def build():
        return page_app(api_url, banner)

    @serve.deployment(name="page", num_replicas=1, ray_actor_options={"num_cpus": 0.25})
    @serve.ingress(build)
    class Page:
        pass

    return Page.bind()


def deploy(plan: ServePlan, argv: list[str], host: str, port: int, banner: str | None = None) -> str:
    """Start Serve's proxy on host:port (the head node only: all nodes may share one host) and both applications;
    returns the API's URL."""
    from ray import serve

    serve.start(http_options={"host": host, "port": port}, proxy_location="HeadOnly")
    api_url = f"ws://{host}:{port}/v1/realtime"
    serve.run(model_deployment(plan, argv), name=MODEL_APP, route_prefix="/v1")
    serve.run(page_deployment(api_url, banner), name=PAGE_APP, route_prefix="/")
    return api_url


def shutdown() -> None:
    """The board, Serve's applications (serve.shutdown gives up after 30 s: a signal sent to the whole process
    group may have stopped the raylet already), then Ray."""
    import ray
    from ray import serve

    from .serve_board import NAME, NAMESPACE

    try:
        ray.kill(ray.get_actor(NAME, namespace=NAMESPACE))
        serve.shutdown()
    except Exception:  # Ray already going away: nothing to stop
        pass
    ray.shutdown()


def _stop(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: the shutdown must not be interrupted again
    raise KeyboardInterrupt


def run(args, argv: list[str], plan: ServePlan, banner: str | None) -> int:
    """app.py --serve ray: deploy, say where, serve until Ctrl-C or SIGTERM."""
    import time

    try:
        import ray  # noqa: F401
        from ray import serve  # noqa: F401
    except ImportError:
        print("Ray Serve is not installed: pip install -r requirements-serve.txt (docs/scale-out.md).",
              file=sys.stderr)
        return 2
    say = sys.stdout.write
    say(f"[mini-omni2] Starting Ray {'at ' + args.address if args.address else 'on this machine'}…\n")
    try:
        start_ray(args.address)
    except Exception as e:  # a wrong address, a cluster that refuses us: one line
        print(f"Could not start or join Ray ({args.address or 'local'}): {e}", file=sys.stderr)
        return 2
    # Ray's core worker puts a crash handler on SIGTERM that dumps a stack: stop like Ctrl-C instead
    signal.signal(signal.SIGTERM, _stop)
    try:
        api_url = deploy(plan, argv, args.host, args.port, banner)
        pool = f"{plan.replicas} model replica{'s' if plan.replicas > 1 else ''}" if plan.replicas else \
            f"{plan.min_replicas} to {plan.max_replicas} model replicas"
        say(f"[mini-omni2] Realtime API: {api_url}\n[mini-omni2] Page: http://{args.host}:{args.port}/ui/ "
            f"({pool}, {plan.sessions} conversations each)\n")
        sys.stdout.flush()
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    finally:
        shutdown()
