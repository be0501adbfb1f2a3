"""What the replay tool (webui/replay.py) writes: the UI's transcript.json and transcript.md (webui/recordings.py's
format), every question's, interruption's and answer's audio, every picture, and latency.json. File names are made
here from turn numbers only, so nothing is written outside the output folder whatever the script names."""

from __future__ import annotations

import json
import time
from io import BytesIO
from pathlib import Path

import numpy as np

from .recordings import transcript_texts
from .replay_script import RATE

STATUS = {"completed": "done", "cancelled": "interrupted", "failed": "error"}


def write_export(out: Path, session_id: str, records: list, report: dict) -> None:
    import soundfile as sf

    out.mkdir(parents=True, exist_ok=True)
    turns, latency = [], []
    for rec in records:
        name = f"turn_{rec.index:03d}"
        files = {}
        t = rec.turn
        if t.audio is not None:
            files["user_audio"] = _wav(out / f"{name}_user.wav", t.audio, sf)
        if t.interrupt is not None:
            files["interrupt_audio"] = _wav(out / f"{name}_interrupt.wav", t.interrupt, sf)
        if t.image is not None:
            image = _jpeg(out / f"{name}_image.jpg", t.image)
            if image:
                files["image"] = image
        for j, a in enumerate(rec.answers):
            if a.audio:
                key = "assistant_audio" if j == 0 else f"assistant_audio_{j + 1}"
                files[key] = _wav(out / f"{name}_assistant{'' if j == 0 else f'_{j + 1}'}.wav",
                                  np.concatenate(a.audio), sf)
        entry, figures = _turn(rec, files)
        turns.append(entry)
        latency.append(figures)
    data = {"format": "mini-omni2-webui/1", "session": session_id, "source": "replay", "turns": turns}
    transcript_json, transcript_md = transcript_texts({**data, "policy": "", "multi_turn": False})
    (out / "transcript.json").write_text(transcript_json)
    (out / "transcript.md").write_text(transcript_md)
    (out / "latency.json").write_text(json.dumps({"turns": latency, "report": report}, indent=2))


def _turn(rec, files: dict) -> tuple[dict, dict]:
    first = rec.answers[0] if rec.answers else None
    done = (first.done or {}) if first else {}
    meta = done.get("metadata") or {}
    status = STATUS.get(done.get("status"), "error") if first else "error"
    error = "; ".join(e.get("message", "") for e in rec.errors) or (
        "" if first else "no answer (a stop phrase with nothing to stop, or refused)")
    client = {}
    if first is not None and first.first_audio is not None and rec.speech_end is not None:
        client["client_first_audio_s"] = round(first.first_audio - rec.speech_end, 3)
    timings = {**(meta.get("latency") or {}), **client}
    entry = {
        "index": rec.index, "kind": "voice" if rec.turn.audio is not None else "text",
        "task": meta.get("task", ""), "status": status,
        "user_text": rec.turn.text or "", "user_transcript": "",
        "image_source": "upload" if rec.turn.image is not None else "",
        "assistant_text": first.text if first else "",
        "assistant_text_generated": first.text if first else "",
        "interrupted_by": ((done.get("status_details") or {}).get("interrupted_by") or "") if first else "",
        "played_s": meta.get("played_s", 0.0), "error": error,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(rec.started)),
        "timings": timings, "files": {k: Path(v).name for k, v in files.items()},
        "answers": len(rec.answers),
    }
    figures = {"turn": rec.index, "status": status, "answers": len(rec.answers), **timings}
    return entry, figures


def _wav(path: Path, pcm: np.ndarray, sf) -> str:
    sf.write(path, pcm, RATE, subtype="PCM_16")
    return str(path)


def _jpeg(path: Path, data: bytes) -> str | None:
    from PIL import Image

    try:
        with Image.open(BytesIO(data)) as im:
            im.convert("RGB").save(path, quality=90)
    except Exception:  # the server refused it too; the transcript says so
        return None
    return str(path)
