"""Writing a trained model in the official layout (what `omni generate`, `omni bench` and the apps load) and the
training state that `--resume` continues from."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from ..checkpoint import SNAC_FILES, default_snac_dir
from ..model import OmniLM

FROZEN_FILES = ("tokenizer.json", "small.pt", "ViT-B-32.pt")  # never trained: taken from the initial checkpoint
STATE_FILE = "train_state.pt"


def _place(src: Path, dst: Path) -> None:
    """dst becomes a copy of src (a hard link where the file system allows: small.pt alone is 480 MB)."""
    if dst.exists() and dst.stat().st_size == src.stat().st_size and dst.samefile(src):
        return
    tmp = dst.with_name(dst.name + ".tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copy2(src, tmp)
    os.replace(tmp, dst)


def copy_frozen_files(init_dir: Path, out_dir: Path, snac_dir: Path | None = None) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in FROZEN_FILES + ("model_config.yaml",):
        if (init_dir / name).resolve() != (out_dir / name).resolve():
            _place(init_dir / name, out_dir / name)
    snac_src, snac_dst = Path(snac_dir) if snac_dir else default_snac_dir(init_dir), default_snac_dir(out_dir)
    if snac_src.resolve() != snac_dst.resolve():
        snac_dst.mkdir(exist_ok=True)
        for name in SNAC_FILES:
            _place(snac_src / name, snac_dst / name)


def save_weights(lm: OmniLM, out_dir: Path) -> None:
    """lit_model.pth with the official keys (lm_head.weight stored too, as in the official file), fp32, written
    whole or not at all."""
    state = {k: v.detach().to("cpu", torch.float32) for k, v in lm.state_dict().items()}
    state["lm_head.weight"] = state["lm_head.weight"].clone()  # the official file holds both copies
    tmp = out_dir / "lit_model.pth.tmp"
    torch.save(state, tmp)
    os.replace(tmp, out_dir / "lit_model.pth")


def save_state(out_dir: Path, step: int, optimizer, config: dict, stage: str) -> None:
    tmp = out_dir / (STATE_FILE + ".tmp")
    torch.save({"step": step, "stage": stage, "config": config, "optimizer": optimizer.state_dict(),
                "torch_rng": torch.get_rng_state()}, tmp)
    os.replace(tmp, out_dir / STATE_FILE)


def load_state(out_dir: Path) -> dict:
    from ..errors import OmniInputError

    path = out_dir / STATE_FILE
    if not path.is_file():
        raise OmniInputError(f"--resume: no {STATE_FILE} in {out_dir} (nothing was saved there yet)")
    return torch.load(str(path), map_location="cpu", weights_only=True)
