"""The replica board: each model replica reports itself (its node, live and waiting conversations) to one named
Ray actor every second, and the page reads the table from it. A replica that stops reporting (killed, scaled
down) drops off after STALE_S. The board also tells a replica when Serve has begun to stop it (a scale-down or a
redeploy), so that it can end its conversations cleanly."""

from __future__ import annotations

import logging
import time

import ray

NAME = "mini-omni2-board"
NAMESPACE = "mini-omni2"
REPORT_S = 1.0
STALE_S = 5.0
log = logging.getLogger("webui")


def stopping_replicas() -> set[str]:
    """The replicas Serve is stopping. Serve 2.60 gives a replica no public hook before it drains (and its
    `__del__` runs only after the drain), so this reads the controller's instance details: the same data as the
    documented REST API `GET /api/serve/applications/` (schema ServeInstanceDetails, replicas' `state`)."""
    from ray.serve.context import _get_global_client

    details = _get_global_client().get_serve_details()
    return {r["replica_id"] for app in details.get("applications", {}).values()
            for d in app.get("deployments", {}).values() for r in d.get("replicas", [])
            if r.get("state") == "STOPPING"}


@ray.remote(num_cpus=0)
class Board:
    def __init__(self):
        self.rows: dict[str, dict] = {}
        self.stopping: set[str] = set()
        self.checked = 0.0
        self.warned = False

    def report(self, row: dict) -> bool:
        """Keeps the row; returns whether Serve is stopping that replica (read at most once per REPORT_S)."""
        self.rows[row["replica"]] = {**row, "at": time.time()}
        if time.monotonic() - self.checked >= REPORT_S:
            self.checked = time.monotonic()
            try:
                self.stopping = stopping_replicas()
            except Exception as e:  # the controller restarting: ask again next time
                if not self.warned:
                    log.warning("could not read the replicas' states from Serve: %s", e)
                    self.warned = True
        return row["replica"] in self.stopping

    def drop(self, replica: str) -> None:
        self.rows.pop(replica, None)

    def table(self) -> list[dict]:
        now = time.time()
        return sorted((r for r in self.rows.values() if now - r["at"] < STALE_S), key=lambda r: r["replica"])


def board():
    """The board of this Ray cluster, made by the first caller (every process gets the same actor)."""
    return Board.options(name=NAME, namespace=NAMESPACE, get_if_exists=True, lifetime="detached").remote()
