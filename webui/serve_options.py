"""The options of `python app.py --serve ray` (docs/scale-out.md), added to the app's parser (webui/startup.py), and
what they mean for Ray Serve: how many model replicas, how many conversations each takes, how many wait."""

from __future__ import annotations

import argparse
from dataclasses import dataclass


def add_serve_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("scale-out on Ray Serve (pip install -r requirements-serve.txt; docs/scale-out.md)")
    g.add_argument("--serve", default=None, choices=["ray"], help="serve the Realtime API and the page over a pool "
                   "of model replicas on Ray Serve (one model worker per GPU)")
    n = g.add_mutually_exclusive_group()
    n.add_argument("--replicas", type=int, default=None, help="with --serve ray: this many model replicas (1)")
    n.add_argument("--autoscale", default=None, metavar="MIN:MAX", help="with --serve ray: between MIN and MAX "
                   "model replicas, grown and shrunk with the number of live conversations")
    g.add_argument("--sessions-per-replica", type=int, default=4, metavar="K", help="with --serve ray: live "
                   "conversations one replica serves at once (4)")
    g.add_argument("--queue", type=int, default=4, metavar="Q", help="with --serve ray: connections that wait for a "
                   "free conversation on each replica (4); beyond them a client is told the demo is full")
    g.add_argument("--address", default=None, help="with --serve ray: the Ray cluster to join (default: start Ray "
                   "on this machine)")


@dataclass(frozen=True)
class ServePlan:
    """What --serve ray deploys."""
    replicas: int | None  # fixed pool size, or None with autoscaling
    min_replicas: int
    max_replicas: int
    sessions: int  # K: live conversations per replica
    queue: int  # Q: connections waiting per replica

    @property
    def target_ongoing(self) -> float:
        """Autoscaling's target of connections per replica: below K, so a new replica comes before one is full."""
        return max(1.0, self.sessions * 0.5)


def serve_plan(args) -> ServePlan:
    """The plan from the options; ValueError with a message for the command line when they do not fit."""
    if args.sessions_per_replica < 1:
        raise ValueError("--sessions-per-replica must be at least 1.")
    if args.queue < 0:
        raise ValueError("--queue must be 0 or more.")
    if args.autoscale is not None:
        try:
            lo, hi = (int(x) for x in args.autoscale.split(":"))
        except ValueError:
            raise ValueError(f"--autoscale takes MIN:MAX, e.g. 1:4 (got {args.autoscale!r}).") from None
        if not 0 < lo <= hi:
            raise ValueError(f"--autoscale {args.autoscale}: need 1 <= MIN <= MAX.")
        return ServePlan(None, lo, hi, args.sessions_per_replica, args.queue)
    n = 1 if args.replicas is None else args.replicas
    if n < 1:
        raise ValueError("--replicas must be at least 1.")
    return ServePlan(n, n, n, args.sessions_per_replica, args.queue)
