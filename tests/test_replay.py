"""The replay tool (`python -m webui.replay`): the sample script in assets/examples/ played through the Realtime API
at real-time pace (spoken and typed questions, a picture, two "stop omni" interruptions), written as the UI's export
with the latency of each turn; bad scripts and an unreachable server get one clear message."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import soundfile as sf
from realtime_fixtures import api_server_fixture

from webui.replay import main
from webui.replay_script import BadScript, load_script

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "assets" / "examples" / "conversation.jsonl"


server = api_server_fixture("replay", 70)


def test_the_sample_script_is_replayed_and_exported(server, tmp_path, capsys):
    out = tmp_path / "capture"
    assert main([str(SAMPLE), "--url", f"{server.url}/realtime", "--out", str(out)]) == 0
    assert "4 turns, 4 answers (2 completed, 2 cancelled, 0 failed)" in capsys.readouterr().out
    data = json.loads((out / "transcript.json").read_text())
    assert data["format"] == "mini-omni2-webui/1" and len(data["turns"]) == 4
    t1, t2, t3, t4 = data["turns"]
    assert [t["task"] for t in data["turns"]] == ["A1A2", "IMAGE_A1A2", "T1A2", "A1A2"]
    assert [t["status"] for t in data["turns"]] == ["done", "done", "interrupted", "interrupted"]
    assert "stop" in t3["interrupted_by"].lower() and "stop" in t4["interrupted_by"].lower()
    assert t3["user_text"] == "Tell me a story about a lighthouse." and t3["files"]["interrupt_audio"]
    for t in (t1, t2, t4):
        assert t["timings"]["client_first_audio_s"] > 0 and t["timings"]["speech_end_to_first_audio_s"] > 0
    assert (out / t2["files"]["image"]).exists()
    for t in data["turns"]:  # every file named is there, inside the folder, and holds audio
        for name in t["files"].values():
            assert (out / name).resolve().parent == out.resolve()
            if name.endswith(".wav"):
                assert len(sf.read(out / name)[0]) > 2400
    md = (out / "transcript.md").read_text()
    assert "lighthouse" in md and "interrupted after" in md
    latency = json.loads((out / "latency.json").read_text())
    assert [t["turn"] for t in latency["turns"]] == [1, 2, 3, 4]
    report = latency["report"]
    assert report["barge_ins"] == 2 and report["not_done"] == 0 and not report["unexpected"]
    # the server's own recording of the session holds the same four turns
    server_side = json.loads((server.engine.recordings_dir / report["session"] / "transcript.json").read_text())
    assert [t["task"] for t in server_side["turns"]] == ["A1A2", "IMAGE_A1A2", "T1A2", "A1A2"]


def test_yaml_scripts_and_session_settings(server, tmp_path):
    examples = ROOT / "assets" / "examples"
    script = tmp_path / "s.yaml"
    script.write_text(f"- session: {{output_modalities: [text]}}\n- text: hello\n"
                      f"- audio: {examples / 'what_is_the_capital.wav'}\n")
    out = tmp_path / "out"
    assert main([str(script), "--url", f"{server.url}/realtime", "--out", str(out)]) == 0
    turns = json.loads((out / "transcript.json").read_text())["turns"]
    assert [t["task"] for t in turns] == ["T1T2", "A1T2"] and [t["status"] for t in turns] == ["done", "done"]
    assert not any("assistant_audio" in t["files"] for t in turns)  # text only: no speech made or sent


@pytest.mark.parametrize("content,message", [
    ("", "has no turns"),
    ("{nope\n", "line 1 is not valid JSON"),
    ('{"audio": "missing.wav"}\n', "no such file"),
    ('{"text": "hi", "audio": "x.wav"}\n', "either 'audio'"),
    ('{"text": "hi", "voice": "x"}\n', "unknown keys voice"),
    ('{"text": "hi", "interrupt": {"at": 1}}\n', "'interrupt' must be"),
    ('{"text": "hi", "image": "bad.wav"}\n', "not an image"),
    ('{"audio": "bad.wav"}\n', "not audio"),
])
def test_bad_scripts_get_one_clear_message(tmp_path, capsys, content, message):
    (tmp_path / "bad.wav").write_text("not a wave")
    script = tmp_path / "script.jsonl"
    script.write_text(content)
    with pytest.raises(BadScript, match=message):
        load_script(script)
    assert main([str(script), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("Bad script:") and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_an_unreachable_server_is_said_plainly(tmp_path, capsys):
    from realtime_fixtures import free_port

    assert main([str(SAMPLE), "--url", f"ws://127.0.0.1:{free_port()}/v1/realtime", "--out", str(tmp_path)]) == 1
    assert "Cannot reach the API" in capsys.readouterr().err
