"""The official checkpoint layout: which files, how to check them, how to load the language model."""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import torch

from .config import ModelConfig
from .errors import CheckpointError
from .model import OmniLM

HF_REPO = "gpt-omni/mini-omni2"
SNAC_REPO = "hubertsiuzdak/snac_24khz"
CHECKPOINT_FILES = ("lit_model.pth", "model_config.yaml", "tokenizer.json", "small.pt", "ViT-B-32.pt")
SNAC_FILES = ("config.json", "pytorch_model.bin")
# Files whose official bytes are known: (size, sha256). A file of exactly that size claims to be the
# official one, so its hash is checked; other sizes are custom (e.g. tiny) checkpoints.
KNOWN_FILES = {
    "small.pt": (483_617_219, "9ecf779972d90ba49c06d968637d720dd632c55bbf19d441fb42bf17a411e794"),
    "ViT-B-32.pt": (353_976_522, "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af"),
}


def default_snac_dir(checkpoint_dir: Path) -> Path:
    return Path(checkpoint_dir) / "snac_24khz"


def missing_files(checkpoint_dir: Path, snac_dir: Path | None = None) -> list[Path]:
    """The files of the official layout (SNAC's included) that are not there."""
    checkpoint_dir = Path(checkpoint_dir)
    snac_dir = Path(snac_dir) if snac_dir else default_snac_dir(checkpoint_dir)
    wanted = [checkpoint_dir / f for f in CHECKPOINT_FILES] + [snac_dir / f for f in SNAC_FILES]
    return [p for p in wanted if not p.is_file()]


def check_files(checkpoint_dir: Path, snac_dir: Path | None = None) -> None:
    """Raise one CheckpointError listing every missing file and how to get it."""
    missing = [str(p) for p in missing_files(checkpoint_dir, snac_dir)]
    if missing:
        raise CheckpointError(
            "checkpoint incomplete, missing: " + ", ".join(missing) +
            f". Get the official weights with `python -m omni download --dir {checkpoint_dir}` "
            f"(Hugging Face {HF_REPO} + {SNAC_REPO}), or make a random test checkpoint with "
            f"`python -m omni tiny {checkpoint_dir}`.")


def sha256(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify_known_file(path: Path) -> None:
    """If `path` has the size of the official file of that name, its sha256 must match too."""
    known = KNOWN_FILES.get(path.name)
    if known and path.stat().st_size == known[0] and sha256(path) != known[1]:
        raise CheckpointError(f"{path}: size matches the official file but the sha256 does not; the file is "
                              f"corrupt or altered. Delete it and run `python -m omni download` again.")


def load_lm(checkpoint_dir: Path, cfg: ModelConfig) -> OmniLM:
    """Build the LM and load lit_model.pth with strict key and shape checks (fp32)."""
    path = Path(checkpoint_dir) / "lit_model.pth"
    try:
        # Not memory-mapped: pages of a mapping count towards RSS on top of the copies, and file-backed pages
        # can be dropped under memory pressure and re-read from disk mid-decode.
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path}: cannot read ({type(e).__name__}: {str(e).splitlines()[0][:200]}). "
                              "Download it again.") from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # a LitGPT training checkpoint wraps the weights
    with torch.device("meta"):
        model = OmniLM(cfg)
    want = model.state_dict()
    missing = [k for k in want if k not in state]
    unexpected = [k for k in state if k not in want]
    if missing or unexpected:
        raise CheckpointError(f"{path}: keys do not match model_config.yaml: missing {missing[:5]}"
                              f"{' ...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                              f"{' ...' if len(unexpected) > 5 else ''}")
    for k, t in want.items():
        if tuple(state[k].shape) != tuple(t.shape):
            raise CheckpointError(f"{path}: {k} has shape {tuple(state[k].shape)}, model_config.yaml implies "
                                  f"{tuple(t.shape)}")
    wte = state["transformer.wte.weight"]
    if state["lm_head.weight"].data_ptr() != wte.data_ptr() and not torch.equal(state["lm_head.weight"], wte):
        # the official model ties the two; loading there leaves wte's values in the shared matrix
        warnings.warn(f"{path}: lm_head.weight differs from transformer.wte.weight; using wte for both "
                      "(as the official tied model does)", stacklevel=2)
    state = {k: v.float() for k, v in state.items() if k != "lm_head.weight"}  # the stored head copy is freed
    state["lm_head.weight"] = state["transformer.wte.weight"]
    model.load_state_dict(state, assign=True)
    model.lm_head.weight = model.transformer.wte.weight  # assign=True replaced the tied Parameter
    del state
    return model.eval()
