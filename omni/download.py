"""Download the official checkpoint (Hugging Face gpt-omni/mini-omni2) and SNAC 24 kHz, resumably, verified."""

from __future__ import annotations

import urllib.request
from pathlib import Path

from .checkpoint import CHECKPOINT_FILES, HF_REPO, KNOWN_FILES, SNAC_FILES, SNAC_REPO, sha256
from .errors import CheckpointError

# Used only if the model repo has no ViT-B-32.pt: OpenAI's original archive (what the official code falls back to).
OPENAI_VIT_B32_URL = ("https://openaipublic.azureedge.net/clip/models/"
                      "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt")


def _offline_hint(e: Exception, what: str) -> CheckpointError:
    return CheckpointError(f"cannot download {what}: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}. "
                           "Check the network connection (or HF_ENDPOINT / proxy settings), or copy the files by "
                           "hand into the checkpoint directory; run the command again to resume.")


def _hf_file(repo: str, filename: str, local_dir: Path) -> Path | None:
    """One file of a HF repo into local_dir (resumes partial downloads; tqdm progress). None if the repo lacks it."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RemoteEntryNotFoundError

    try:
        return Path(hf_hub_download(repo_id=repo, filename=filename, local_dir=str(local_dir)))
    except LocalEntryNotFoundError as e:  # raised when the hub cannot be reached (a subclass of "not found")
        raise _offline_hint(e, f"{repo}/{filename}") from None
    except RemoteEntryNotFoundError:
        return None
    except Exception as e:  # no network, DNS, proxy, 5xx ...
        raise _offline_hint(e, f"{repo}/{filename}") from None


def _url_file(url: str, dest: Path) -> Path:
    """Plain HTTPS download with resume (Range) and a progress bar."""
    from tqdm import tqdm

    part = dest.with_suffix(dest.suffix + ".part")
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            if have and r.status != 206:
                have = 0  # server ignored the range: start over
            total = int(r.headers.get("Content-Length", 0)) + have
            with open(part, "ab" if have else "wb") as f, tqdm(total=total, initial=have, unit="B", unit_scale=True,
                                                              desc=dest.name) as bar:
                while block := r.read(1 << 20):
                    f.write(block)
                    bar.update(len(block))
    except OSError as e:
        raise _offline_hint(e, url) from None
    part.replace(dest)
    return dest


def _verify(path: Path) -> None:
    known = KNOWN_FILES.get(path.name)
    if not known:
        return
    size, digest = known
    if path.stat().st_size != size or sha256(path) != digest:
        bad = path.with_suffix(path.suffix + ".bad")
        path.replace(bad)
        raise CheckpointError(f"{path.name}: size or sha256 does not match the official file (moved to {bad}); "
                              "run the download again")


def download(target: Path) -> Path:
    """Fetch every file of the official layout into target/ and SNAC into target/snac_24khz/."""
    target.mkdir(parents=True, exist_ok=True)
    snac_dir = target / "snac_24khz"
    for name in CHECKPOINT_FILES:
        dest = target / name
        if dest.is_file() and name not in KNOWN_FILES:
            print(f"[omni] {name}: already there")
            continue
        if dest.is_file():
            try:
                _verify(dest)
                print(f"[omni] {name}: already there, verified")
                continue
            except CheckpointError as e:
                print(f"[omni] {e}; downloading again")
        print(f"[omni] downloading {HF_REPO}/{name} ...")
        got = _hf_file(HF_REPO, name, target)
        if got is None and name == "ViT-B-32.pt":
            print("[omni] the model repo has no ViT-B-32.pt; fetching OpenAI's original archive")
            got = _url_file(OPENAI_VIT_B32_URL, dest)
        if got is None:
            raise CheckpointError(f"{HF_REPO} has no file {name}; the repository layout changed — please report this")
        _verify(dest)
    for name in SNAC_FILES:
        if (snac_dir / name).is_file():
            print(f"[omni] snac_24khz/{name}: already there")
            continue
        print(f"[omni] downloading {SNAC_REPO}/{name} ...")
        if _hf_file(SNAC_REPO, name, snac_dir) is None:
            raise CheckpointError(f"{SNAC_REPO} has no file {name}")
    print(f"[omni] checkpoint ready in {target} (SNAC in {snac_dir})")
    return target
