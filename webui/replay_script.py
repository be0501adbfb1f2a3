"""A scripted conversation for the replay tool (webui/replay.py): a JSONL file (one turn a line) or a YAML list.

Each turn is a spoken question (`audio`: a sound file) or a typed one (`text`), optionally with a picture (`image`)
and an interruption (`interrupt`: {"audio": file, "at": seconds after the answer starts playing}). File names are
relative to the script's folder. A line {"session": {...}} is sent as a session.update before the next turn.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

RATE = 24000
MAX_TURNS = 1000


class BadScript(ValueError):
    """A script the replay cannot play (a message for the command line)."""


@dataclass
class Turn:
    audio: np.ndarray | None = None  # int16, 24 kHz mono
    text: str | None = None
    image: bytes | None = None  # the picture file as it is
    image_type: str = ""  # its MIME type
    interrupt: np.ndarray | None = None  # int16, 24 kHz mono
    interrupt_at: float = 0.0
    session: dict | None = None  # a session.update to send first
    source: str = ""  # where it came from in the script, for messages


def load_script(path: str | Path) -> list[Turn]:
    path = Path(path)
    try:
        raw = path.read_text()
    except OSError as e:
        raise BadScript(f"cannot read {path}: {e.strerror or e}") from None
    entries = _entries(raw, path)
    turns, session = [], None
    for where, entry in entries:
        if not isinstance(entry, dict):
            raise BadScript(f"{where}: a turn must be an object such as {{\"audio\": \"question.wav\"}}")
        if set(entry) == {"session"}:
            if not isinstance(entry["session"], dict):
                raise BadScript(f"{where}: 'session' must be an object (the session.update's session)")
            session = entry["session"]
            continue
        turn = _turn(entry, path.parent, where)
        turn.session, session = session, None
        turns.append(turn)
    if not turns:
        raise BadScript(f"{path} has no turns")
    if len(turns) > MAX_TURNS:
        raise BadScript(f"{path} has {len(turns)} turns; the limit is {MAX_TURNS}")
    return turns


def _entries(raw: str, path: Path) -> list[tuple[str, object]]:
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise BadScript(f"{path} is not valid YAML: {e}") from None
        if not isinstance(data, list):
            raise BadScript(f"{path}: the YAML must be a list of turns")
        return [(f"turn {i + 1}", e) for i, e in enumerate(data)]
    out = []
    for n, line in enumerate(raw.splitlines(), 1):
        if line.strip() and not line.lstrip().startswith("#"):
            try:
                out.append((f"line {n}", json.loads(line)))
            except ValueError:
                raise BadScript(f"{path} line {n} is not valid JSON") from None
    return out


def _turn(entry: dict, folder: Path, where: str) -> Turn:
    unknown = set(entry) - {"audio", "text", "image", "interrupt"}
    if unknown:
        raise BadScript(f"{where}: unknown keys {', '.join(sorted(unknown))} (a turn has audio or text, and may "
                        "have image and interrupt)")
    if ("audio" in entry) == ("text" in entry):
        raise BadScript(f"{where}: a turn needs either 'audio' (a sound file) or 'text'")
    turn = Turn(source=where)
    if "audio" in entry:
        turn.audio = read_audio(folder, entry["audio"], where)
    else:
        if not isinstance(entry["text"], str) or not entry["text"].strip():
            raise BadScript(f"{where}: 'text' must be a non-empty string")
        turn.text = entry["text"]
    if "image" in entry:
        turn.image, turn.image_type = read_image(folder, entry["image"], where)
    if "interrupt" in entry:
        i = entry["interrupt"]
        at = i.get("at") if isinstance(i, dict) else None
        if not isinstance(at, (int, float)) or isinstance(at, bool) or not 0 <= at <= 300 or "audio" not in i:
            raise BadScript(f"{where}: 'interrupt' must be {{\"audio\": \"stop.wav\", \"at\": seconds (0 to 300) "
                            "after the answer starts playing}")
        turn.interrupt, turn.interrupt_at = read_audio(folder, i["audio"], where), float(at)
    return turn


def _file(folder: Path, name, where: str) -> Path:
    if not isinstance(name, str) or not name:
        raise BadScript(f"{where}: a file name must be a string")
    p = (folder / name).expanduser()
    if not p.is_file():
        raise BadScript(f"{where}: no such file {p}")
    return p


def read_audio(folder: Path, name, where: str) -> np.ndarray:
    """A sound file -> int16 24 kHz mono."""
    import soundfile as sf

    from .vad import resample

    p = _file(folder, name, where)
    try:
        a, sr = sf.read(p, dtype="float32", always_2d=True)
    except Exception:
        raise BadScript(f"{where}: {p} is not audio I can read (try WAV or FLAC)") from None
    a = resample(a.mean(axis=1), sr, RATE)
    if len(a) < RATE * 0.1 or len(a) > RATE * 60:
        raise BadScript(f"{where}: {p} must hold 0.1 to 60 s of audio")
    return (np.clip(a, -1, 1) * 32767).astype(np.int16)


def read_image(folder: Path, name, where: str) -> tuple[bytes, str]:
    from PIL import Image, UnidentifiedImageError

    p = _file(folder, name, where)
    try:
        with Image.open(p) as im:
            kind = (im.format or "").lower()
    except (UnidentifiedImageError, OSError):
        raise BadScript(f"{where}: {p} is not an image I can read (try PNG or JPEG)") from None
    return p.read_bytes(), f"image/{'jpeg' if kind == 'jpg' else kind or 'png'}"
