"""The replica board: each model replica reports itself (its node, live and waiting conversations) to one named
Ray actor every few seconds, and the page reads the table from it. A replica that stops reporting (killed, scaled
down) drops off after STALE_S."""

from __future__ import annotations

import time

import ray

NAME = "mini-omni2-board"
NAMESPACE = "mini-omni2"
REPORT_S = 1.0
STALE_S = 5.0


@ray.remote(num_cpus=0)
class Board:
    def __init__(self):
        self.rows: dict[str, dict] = {}

    def report(self, row: dict) -> None:
        self.rows[row["replica"]] = {**row, "at": time.time()}

    def drop(self, replica: str) -> None:
        self.rows.pop(replica, None)

    def table(self) -> list[dict]:
        now = time.time()
        return sorted((r for r in self.rows.values() if now - r["at"] < STALE_S), key=lambda r: r["replica"])


def board():
    """The board of this Ray cluster, made by the first caller (every process gets the same actor)."""
    return Board.options(name=NAME, namespace=NAMESPACE, get_if_exists=True, lifetime="detached").remote()
