"""Where a session's files go, and what it writes there: its turns' audio and pictures, the transcript, the export."""

from __future__ import annotations

import tempfile
from pathlib import Path


def recordings_root(recordings_dir: str | None) -> Path:
    """Where sessions keep their voices, webcam frames and exports: private to this user. By default a new temp
    folder (mode 0700, unpredictable name: no other local user can read it or create it first); a named folder
    is made 0700 if it is new, and one that exists keeps the mode its owner gave it."""
    if recordings_dir is None:
        return Path(tempfile.mkdtemp(prefix="mini-omni2-webui-")).resolve()
    root = Path(recordings_dir).expanduser().resolve()
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    return root
