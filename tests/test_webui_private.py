"""The tiny checkpoint (`--checkpoint tiny`) is loaded only from a folder that no other local user could have
written: its ViT-B-32.pt goes through torch.jit.load, which runs the code stored in the file.

The build itself is replaced by a stand-in that writes marker files and counts its calls: these tests are about
where the checkpoint lives and when a copy is trusted, not about its contents (test_webui_interrupt builds a
real one)."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

import pytest

import omni
import omni.random_checkpoint
from webui.private import tiny_checkpoint_dir

PLANTED = b"code someone else put here"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def builds(tmp_path, monkeypatch) -> list[Path]:
    """The user's cache and the temp folder moved under tmp_path; every build recorded."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    made: list[Path] = []

    def build(out, seed=0, full_size=False):
        out = Path(out)
        (out / "snac_24khz").mkdir(parents=True, exist_ok=True)
        for name in ("lit_model.pth", "model_config.yaml", "ViT-B-32.pt", "snac_24khz/config.json"):
            (out / name).write_bytes(b"built")
        made.append(out)
        return out

    monkeypatch.setattr(omni.random_checkpoint, "make_tiny_checkpoint", build)
    monkeypatch.setattr(omni, "make_tiny_checkpoint", build)
    return made


def test_the_tiny_checkpoint_is_built_once_into_a_private_folder_and_reused(builds):
    d = tiny_checkpoint_dir()
    assert len(builds) == 1 and (d / "ViT-B-32.pt").read_bytes() == b"built"
    assert mode(d) == 0o700 and d.stat().st_uid == os.getuid()
    assert tiny_checkpoint_dir() == d and len(builds) == 1  # the checked copy is used again


@pytest.mark.parametrize("loosened", ["a world-writable file", "a group-writable folder", "a symlink"])
def test_a_cached_tiny_checkpoint_others_could_have_written_is_not_loaded(builds, tmp_path, loosened):
    d = tiny_checkpoint_dir()
    vit = d / "ViT-B-32.pt"
    if loosened == "a symlink":  # to a file anyone could have written
        (tmp_path / "elsewhere.pt").write_bytes(PLANTED)
        vit.unlink()
        vit.symlink_to(tmp_path / "elsewhere.pt")
    else:
        vit.write_bytes(PLANTED)
        vit.chmod(0o666) if loosened == "a world-writable file" else d.chmod(0o770)
    again = tiny_checkpoint_dir()
    assert (again / "ViT-B-32.pt").read_bytes() == b"built" and len(builds) == 2
    assert not (again / "ViT-B-32.pt").is_symlink() and mode(again) == 0o700


def test_a_cached_tiny_checkpoint_owned_by_someone_else_is_not_loaded(builds, monkeypatch):
    d = tiny_checkpoint_dir()
    (d / "ViT-B-32.pt").write_bytes(PLANTED)
    me = os.getuid()
    monkeypatch.setattr(os, "getuid", lambda: me + 1)  # from here on the cached copy is another user's
    again = tiny_checkpoint_dir()
    assert (again / "ViT-B-32.pt").read_bytes() == b"built" and len(builds) == 2
    assert again.parent == Path(tempfile.gettempdir()) and mode(again) == 0o700  # a fresh private folder


def test_without_a_private_cache_each_start_builds_into_a_new_private_temp_folder(builds, tmp_path, monkeypatch):
    shared = tmp_path / "shared"  # a cache folder anyone may write to (and not sticky, unlike /tmp)
    shared.mkdir()
    shared.chmod(0o777)
    monkeypatch.setenv("XDG_CACHE_HOME", str(shared))
    a, b = tiny_checkpoint_dir(), tiny_checkpoint_dir()
    assert a != b and len(builds) == 2
    for d in (a, b):
        assert d.parent == Path(tempfile.gettempdir()) and mode(d) == 0o700
