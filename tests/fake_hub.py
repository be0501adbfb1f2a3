"""A stand-in for huggingface.co on 127.0.0.1, for the download tests (the real hub is never contacted).

It answers huggingface_hub's HEAD and GET of `/{owner}/{repo}/resolve/{revision}/{filename}` with the headers the
client needs (ETag, X-Repo-Commit, Content-Length), or every request with one error status, and records what was
asked. Point a process at it with HF_ENDPOINT (see `hub_env`).
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

COMMIT = "c0ffee" * 6 + "c0ff"  # any 40 hex digits: the client only needs one


class FakeHub:
    def __init__(self, files: dict[str, bytes] | None = None, status: int | None = None, stall: bool = False):
        """files: "owner/repo/filename" -> bytes; status: answer every request with this status instead;
        stall: send only the first KiB of each file, then hang until the hub is closed (a download in progress)."""
        self.files, self.status, self.stall = files or {}, status, stall
        self.closing = threading.Event()
        self.requests: list[tuple[str, str]] = []  # (method, "owner/repo/filename")
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def do_HEAD(self):
                hub._answer(self, body=False)

            def do_GET(self):
                hub._answer(self, body=True)

            def log_message(self, *args):  # keep the test output clean
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def __enter__(self) -> "FakeHub":
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.closing.set()
        self.server.shutdown()
        self.server.server_close()

    def _answer(self, h: BaseHTTPRequestHandler, body: bool) -> None:
        owner, repo, resolve, _revision, *name = unquote(h.path.split("?")[0]).lstrip("/").split("/")
        key = "/".join([owner, repo, *name])
        self.requests.append((h.command, key))
        data = self.files.get(key) if resolve == "resolve" else None
        status = self.status or (200 if data is not None else 404)
        h.send_response(status)
        if status == 404:
            h.send_header("X-Error-Code", "EntryNotFound")  # how the hub says "no such file in this repo"
        if status == 200:
            h.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
            h.send_header("X-Repo-Commit", COMMIT)
        h.send_header("Content-Length", str(len(data) if status == 200 else 0))
        h.end_headers()
        if body and status == 200:
            h.wfile.write(data[:1024] if self.stall else data)
            h.wfile.flush()
            if self.stall:
                self.closing.wait()


def repo_files(checkpoint: Path) -> dict[str, bytes]:
    """A checkpoint folder in the official layout as the files of the two repos the download fetches from."""
    from omni.checkpoint import CHECKPOINT_FILES, HF_REPO, SNAC_FILES, SNAC_REPO

    files = {f"{HF_REPO}/{n}": (checkpoint / n).read_bytes() for n in CHECKPOINT_FILES}
    files.update({f"{SNAC_REPO}/{n}": (checkpoint / "snac_24khz" / n).read_bytes() for n in SNAC_FILES})
    return files


def hub_env(endpoint: str, home: Path) -> dict[str, str]:
    """The environment of a process that downloads from `endpoint`, with no token and its own empty HF cache."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env.update(HF_ENDPOINT=endpoint, HF_HOME=str(home), HF_HUB_DISABLE_TELEMETRY="1")
    return env


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (connections are refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
