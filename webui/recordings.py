"""Where a session's files go, and what it writes there: its turns' audio and pictures, the transcript, the export."""

from __future__ import annotations

import json
import tempfile
import time
import zipfile
from pathlib import Path

from .config import OUT_RATE
from .turn import Turn
from .vad import SAMPLE_RATE as VAD_RATE


def recordings_root(recordings_dir: str | None) -> Path:
    """Where sessions keep their voices, webcam frames and exports: private to this user. By default a new temp
    folder (mode 0700, unpredictable name: no other local user can read it or create it first); a named folder
    is made 0700 if it is new, and one that exists keeps the mode its owner gave it."""
    if recordings_dir is None:
        return Path(tempfile.mkdtemp(prefix="mini-omni2-webui-")).resolve()
    root = Path(recordings_dir).expanduser().resolve()
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    return root


def save_inputs(turn: Turn, folder: Path) -> None:
    """The question's audio and picture, as the turn starts."""
    import soundfile as sf

    if turn.user_audio is not None:
        p = folder / f"turn_{turn.index:03d}_user.wav"
        sf.write(p, turn.user_audio, VAD_RATE, subtype="PCM_16")
        turn.files["user_audio"] = str(p)
    if turn.image is not None:
        from PIL import Image

        p = folder / f"turn_{turn.index:03d}_image.jpg"
        Image.fromarray(turn.image).save(p, quality=90)
        turn.files["image"] = str(p)


def save_outputs(turn: Turn, folder: Path) -> None:
    """The answer's speech as it was heard (all of it, or up to an interruption), as the turn ends."""
    import soundfile as sf

    audio = turn.audio()
    if turn.status == "interrupted" and turn.live:
        audio = audio[: int(turn.played_s * OUT_RATE)]  # keep what was actually heard
    if len(audio):  # nothing heard: no file (an empty one shows as a 0:00 player)
        p = folder / f"turn_{turn.index:03d}_assistant.wav"
        sf.write(p, audio, OUT_RATE, subtype="PCM_16")
        turn.files["assistant_audio"] = str(p)


def transcript(session_id: str, history: list[Turn], config) -> dict:
    """What transcript.json holds: every turn, its texts, timings and file names."""
    turns = []
    for t in history:
        turns.append({
            "index": t.index, "kind": t.kind, "task": t.task, "status": t.status,
            "user_text": t.user_text, "user_transcript": t.user_transcript,
            "image_source": t.image_source,
            "assistant_text": t.assistant_text,
            "assistant_text_generated": t.full_text or t.assistant_text,
            "interrupted_by": t.interrupted_by, "played_s": round(t.played_s, 3),
            "error": t.error,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t.started_wall)),
            "timings": t.timings.exported(),
            "files": {k: Path(v).name for k, v in t.files.items()},
        })
    return {"format": "mini-omni2-webui/1", "session": session_id, "policy": config.policy,
            "multi_turn": config.multi_turn, "turns": turns}


def transcript_texts(data: dict) -> tuple[str, str]:
    """transcript.json and the readable transcript.md."""
    md = [f"# Conversation {time.strftime('%Y-%m-%d %H:%M')}", ""]
    for t in data["turns"]:
        user = t["user_text"] or (f"(voice) {t['user_transcript']}" if t["user_transcript"] else "(voice)")
        md.append(f"**You** (turn {t['index']}, {t['task']}): {user}")
        if t["image_source"]:
            md.append(f"  image from {t['image_source']}: {t['files'].get('image', '')}")
        note = f" [interrupted after {t['played_s']:.1f} s: {t['interrupted_by']}]" if t["status"] == "interrupted" else ""
        if t["error"]:
            note += f" [error: {t['error']}]"
        md.append(f"**Omni**: {t['assistant_text']}{note}")
        md.append("")
    return json.dumps(data, indent=2, ensure_ascii=False), "\n".join(md)


def export_zip(folder: Path, data: dict, turns: list[Turn]) -> Path:
    """transcript.json + transcript.md + every audio/image file of `turns`, zipped inside `folder` (the
    previous export there is replaced)."""
    transcript_json, transcript_md = transcript_texts(data)
    out = folder / f"conversation-{time.strftime('%Y%m%d-%H%M%S')}.zip"
    for old in folder.glob("conversation-*.zip"):
        if old != out:
            old.unlink(missing_ok=True)
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("transcript.json", transcript_json)
        z.writestr("transcript.md", transcript_md)
        paths = [Path(p) for t in turns for p in t.files.values()]
        for p in paths:
            if p.exists() and p.resolve().parent == folder.resolve():
                z.write(p, arcname=p.name)
    return out
