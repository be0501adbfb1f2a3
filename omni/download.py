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
    first = str(e).splitlines()[0][:200].rstrip(".") if str(e) else ""
    return CheckpointError(f"cannot download {what}: {type(e).__name__}: {first}. "
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


def _hub_size(repo: str, filename: str) -> int | None:
    """The size the hub states for one file, asked once without retries: offline fails here at once, before
    anything is written. -1 if the repo has no such file; None if the hub does not say."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import RemoteEntryNotFoundError

    try:
        return get_hf_file_metadata(hf_hub_url(repo, filename)).size
    except RemoteEntryNotFoundError:
        return -1
    except Exception as e:  # no network, DNS, proxy, 5xx ...
        raise _offline_hint(e, f"{repo}/{filename}") from None


def _present(path: Path, label: str) -> bool:
    """True if the file is there and, when its official bytes are known, matches them (else it is set aside)."""
    if not path.is_file():
        return False
    try:
        _verify(path)
    except CheckpointError as e:
        print(f"[omni] {e}; downloading again")
        return False
    print(f"[omni] {label}: already there{', verified' if path.name in KNOWN_FILES else ''}")
    return True


def _plan(target: Path) -> list[tuple[str, str, Path, int | None]]:
    """(repo or URL, file name, folder, size) of each file still missing."""
    todo = []
    for repo, names, folder in ((HF_REPO, CHECKPOINT_FILES, target), (SNAC_REPO, SNAC_FILES, target / "snac_24khz")):
        for name in names:
            if _present(folder / name, str((folder / name).relative_to(target))):
                continue
            size = _hub_size(repo, name)
            if size == -1 and name == "ViT-B-32.pt":  # what the official code falls back to
                todo.append((OPENAI_VIT_B32_URL, name, folder, KNOWN_FILES[name][0]))
            elif size == -1:
                raise CheckpointError(f"{repo} has no file {name}; the repository layout changed: please report this")
            else:
                todo.append((repo, name, folder, size))
    return todo


def human_size(n: int | None) -> str:
    """Decimal units, as Hugging Face shows sizes (2.81 GB)."""
    if n is None:
        return "size unknown"
    for scale, unit in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"


def download(target: Path) -> Path:
    """Fetch every missing file of the official layout into target/ and SNAC into target/snac_24khz/, saying the
    total size first."""
    todo = _plan(target)  # asks the hub first: offline, nothing is written
    if todo:
        sizes = [size for *_, size in todo]
        unknown = " + files of unknown size" if None in sizes else ""
        print(f"[omni] {len(todo)} file{'s' if len(todo) > 1 else ''} to download into {target}: "
              f"{human_size(sum(s or 0 for s in sizes))}"
              f"{unknown} (resumable: after an interruption run the same command again)", flush=True)
    for source, name, folder, size in todo:
        print(f"[omni] downloading {source if source.startswith('https:') else source + '/' + name} "
              f"({human_size(size)}) ...", flush=True)
        folder.mkdir(parents=True, exist_ok=True)
        if source == OPENAI_VIT_B32_URL:
            _url_file(source, folder / name)
        elif _hf_file(source, name, folder) is None:
            raise CheckpointError(f"{source} has no file {name}")
        _verify(folder / name)
    print(f"[omni] checkpoint ready in {target} (SNAC in {target / 'snac_24khz'})")
    return target
