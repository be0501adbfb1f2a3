"""Folders that only this user can change, for files that run as code when loaded.

The tiny checkpoint's ViT-B-32.pt is a TorchScript archive, and torch.jit.load runs the code stored in it. So a
copy that another local user could have written (a predictable /tmp path, a group- or world-writable file) is
never loaded: the checkpoint is cached in the user's own cache folder, and every file in it is checked first.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import stat
import tempfile
from pathlib import Path

log = logging.getLogger("webui")


def _me() -> int:
    return os.getuid()


def mine_alone(path: Path) -> bool:
    """`path` is this user's, is not a symlink, and no one else may write to it."""
    try:
        st = path.lstat()
    except OSError:
        return False
    return st.st_uid == _me() and not stat.S_ISLNK(st.st_mode) and not st.st_mode & 0o022


def tree_mine_alone(folder: Path) -> bool:
    """`folder` and everything in it pass `mine_alone` (symlinks are not followed: they fail it)."""
    if not mine_alone(folder):
        return False
    for top, dirs, files in os.walk(folder):
        if not all(mine_alone(Path(top) / name) for name in dirs + files):
            return False
    return True


def _parent_is_safe(folder: Path) -> bool:
    """No one else can move `folder` aside and put their own in its place: the folder above is this user's or
    root's, and others cannot write to it, unless it is sticky (as /tmp is: only an entry's owner moves it)."""
    st = folder.stat()
    return st.st_uid in (0, _me()) and (not st.st_mode & 0o022 or bool(st.st_mode & stat.S_ISVTX))


def user_cache() -> Path | None:
    """$XDG_CACHE_HOME/mini-omni2 (~/.cache/mini-omni2), made 0700; None if it cannot be made or others could
    change it."""
    try:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mini-omni2"
        base.mkdir(mode=0o700, parents=True, exist_ok=True)
        return base if mine_alone(base) and _parent_is_safe(base.parent) else None
    except (OSError, RuntimeError):  # no home folder, read-only file system
        return None


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    else:
        shutil.rmtree(path)


def _fresh_tiny(seed: int) -> Path:
    """A new private temp folder for this process only, removed when it ends."""
    from omni.random_checkpoint import make_tiny_checkpoint

    d = Path(tempfile.mkdtemp(prefix="mini-omni2-tiny-"))
    atexit.register(shutil.rmtree, d, True)
    return make_tiny_checkpoint(d, seed=seed)


def tiny_checkpoint_dir(seed: int = 0) -> Path:
    """The tiny random checkpoint, built once per user (4 s on 2 cores) into a cache only this user can change,
    and checked each time before it is used: a copy anyone else could have changed is built again. Without a
    usable cache it is built in a new private temp folder for this process."""
    import hashlib
    import inspect

    import omni.random_checkpoint

    base = user_cache()
    if base is None:
        log.warning("no private cache folder (~/.cache/mini-omni2): building the tiny checkpoint in a temp folder")
        return _fresh_tiny(seed)
    # keyed by the generator's source, so a changed tiny layout never meets a stale cached copy
    tag = hashlib.sha1(inspect.getsource(omni.random_checkpoint).encode()).hexdigest()[:10]
    d = base / f"tiny-seed{seed}-{tag}"
    if d.exists() or d.is_symlink():
        if tree_mine_alone(d) and (d / "lit_model.pth").is_file():
            return d
        log.warning("%s: others could have changed it (owner or permissions); building it again", d)
        _remove(d)
    tmp = Path(tempfile.mkdtemp(prefix=f".{d.name}.", dir=base))  # 0700, renamed whole when complete
    omni.random_checkpoint.make_tiny_checkpoint(tmp, seed=seed)
    try:
        tmp.rename(d)
    except OSError:  # another process finished first: use its copy if it passes the same check
        shutil.rmtree(tmp, ignore_errors=True)
        if not tree_mine_alone(d):
            return _fresh_tiny(seed)
    return d
