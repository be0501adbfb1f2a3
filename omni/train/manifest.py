"""The training manifest: one JSON object per line, checked up front; every error names the file and the line.

Fields (paths relative to the manifest's folder):
  audio          the spoken question (any format `omni.audio` reads)      } exactly one of the two
  text           the typed question                                        }
  image          a picture the spoken question is about (needs `audio`)
  target_text    the answer's text (required)
  target_speech  the answer spoken (an audio file, encoded with the checkpoint's SNAC)  } at most one;
  target_codes   the answer as SNAC frames: [[7 codes 0..4095] per 85 ms frame]       } speech stages need one
  task           optional: "ASR" marks a transcription pair (audio -> its transcript); default: a question
  id             optional: a name for messages
A listening stream for the irq stage (spec §11) is a line of its own:
  stream         audio the model hears while it speaks (noise, music, other speech, maybe "stop omni")
  command_end    seconds into the stream where "stop omni" has been said, or null where it is not said
  background     optional label for reports: "noise", "music", "speech", ...
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import OmniInputError

FIELDS = {"audio", "text", "image", "target_text", "target_speech", "target_codes", "task", "id"}
STREAM_FIELDS = {"stream", "command_end", "background", "id"}
FRAME_WIDTH = 7  # SNAC tokens per 85 ms frame (spec §9.2)


class ManifestError(OmniInputError):
    """A manifest line that cannot be used; the message names the line."""


@dataclass(frozen=True)
class Sample:
    where: str  # "file.jsonl line N", for messages
    audio: Path | None = None
    text: str | None = None
    image: Path | None = None
    target_text: str = ""
    target_speech: Path | None = None
    target_codes: tuple[tuple[int, ...], ...] | None = None
    asr: bool = False
    stream: Path | None = None  # a listening stream (irq stage)
    command_end: float | None = None
    background: str = ""

    @property
    def has_speech_target(self) -> bool:
        return self.target_speech is not None or self.target_codes is not None


def read_manifest(path: str | Path, n_codes: int = 4096) -> list[Sample]:
    """All samples of a manifest, every line checked (structure, fields, files exist). Audio readability is checked
    when the sample is encoded (`omni.train.data`), with the same line in the message."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest not found: {path}")
    samples = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if line.strip():
                samples.append(parse_line(line, f"{path.name} line {number}", path.parent, n_codes))
    if not samples:
        raise ManifestError(f"{path}: no samples (expected one JSON object per line; see docs/training.md)")
    return samples


def parse_line(line: str, where: str, root: Path, n_codes: int = 4096) -> Sample:
    try:
        raw = json.loads(line)
    except json.JSONDecodeError as e:
        raise ManifestError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(raw, dict):
        raise ManifestError(f"{where}: expected a JSON object, got {type(raw).__name__}")
    if "stream" in raw:
        return _stream_line(raw, where, root)
    unknown = sorted(set(raw) - FIELDS)
    if unknown:
        raise ManifestError(f"{where}: unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(FIELDS))}")
    if ("audio" in raw) == ("text" in raw):
        raise ManifestError(f"{where}: give exactly one question: \"audio\" (a recording) or \"text\"")
    if "image" in raw and "audio" not in raw:
        raise ManifestError(f"{where}: \"image\" needs a spoken question (\"audio\"); Mini-Omni2 has no image + "
                            "text prompt")
    if "target_speech" in raw and "target_codes" in raw:
        raise ManifestError(f"{where}: give at most one of \"target_speech\" and \"target_codes\"")
    task = raw.get("task")
    if task not in (None, "ASR"):
        raise ManifestError(f"{where}: task {task!r} is not known; leave it out, or \"ASR\" for a transcript")
    if task == "ASR" and "audio" not in raw:
        raise ManifestError(f"{where}: task ASR needs \"audio\"")
    target = raw.get("target_text")
    if not isinstance(target, str) or not target.strip():
        raise ManifestError(f"{where}: \"target_text\" must be a non-empty string")
    text = raw.get("text")
    if text is not None and (not isinstance(text, str) or not text.strip()):
        raise ManifestError(f"{where}: \"text\" must be a non-empty string")
    files = {k: _file(raw[k], k, where, root) for k in ("audio", "image", "target_speech") if k in raw}
    codes = _codes(raw["target_codes"], where, n_codes) if "target_codes" in raw else None
    return Sample(where, files.get("audio"), text, files.get("image"), target, files.get("target_speech"), codes,
                  task == "ASR")


def _stream_line(raw: dict, where: str, root: Path) -> Sample:
    unknown = sorted(set(raw) - STREAM_FIELDS)
    if unknown:
        raise ManifestError(f"{where}: a stream line has only {', '.join(sorted(STREAM_FIELDS))}; not "
                            f"{', '.join(unknown)}")
    end = raw.get("command_end")
    if end is not None and (not isinstance(end, (int, float)) or isinstance(end, bool) or end <= 0):
        raise ManifestError(f"{where}: \"command_end\" must be seconds > 0, or null where no command is said")
    return Sample(where, stream=_file(raw["stream"], "stream", where, root), command_end=end,
                  background=str(raw.get("background", "")))


def _file(value, key: str, where: str, root: Path) -> Path:
    if not isinstance(value, str) or not value:
        raise ManifestError(f"{where}: \"{key}\" must be a file path")
    p = Path(value) if Path(value).is_absolute() else root / value
    if not p.is_file():
        raise ManifestError(f"{where}: {key} file not found: {p}")
    if p.stat().st_size == 0:
        raise ManifestError(f"{where}: {key} file is empty: {p}")
    return p


def _codes(value, where: str, n_codes: int) -> tuple[tuple[int, ...], ...]:
    ok = isinstance(value, list) and value and all(
        isinstance(f, list) and len(f) == FRAME_WIDTH and all(isinstance(c, int) and 0 <= c < n_codes for c in f)
        for f in value)
    if not ok:
        raise ManifestError(f"{where}: \"target_codes\" must be a non-empty list of frames, each {FRAME_WIDTH} "
                            f"integers in 0..{n_codes - 1} (SNAC codes in the frame order of docs/training.md)")
    return tuple(tuple(f) for f in value)
