"""Bad input through the page's paths (the same session methods the Gradio and Streamlit pages call), on the tiny
checkpoint: a 10,000-character message, a prompt beyond the model's context, empty, corrupt, huge and mistyped
uploads, and an export that never takes a file from outside its session folder."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from webui.engine import Engine, EngineConfig


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    import omni

    from webui.private import tiny_checkpoint_dir

    model = omni.load_model(str(tiny_checkpoint_dir()), device="cpu")
    e = Engine(model, EngineConfig(max_new_tokens=40), recordings_dir=str(tmp_path_factory.mktemp("rec")))
    yield e
    e.close()


def test_texts_too_long_for_the_box_or_for_the_context(engine):
    s = engine.new_session()
    with pytest.raises(ValueError, match="too long.*10000 characters"):
        s.send_text("x" * 10_000)
    turn = s.send_text("𝔘𝔫" * 1000)  # within the box, but thousands of tokens
    assert s.wait_idle(60)
    assert turn.status == "error" and "context" in turn.error and "Traceback" not in turn.error
    assert s.notice == turn.error  # what the page shows
    ok = s.send_text("hello")  # the conversation goes on
    assert s.wait_idle(60) and ok.status == "done"


@pytest.mark.parametrize("name,content,message", [
    ("empty.wav", b"", "empty"),
    ("noise.wav", b"RIFF\x00\x00\x00\x00WAVEjunk" * 10, "not audio"),
    ("photo.png", None, "not audio"),  # a picture uploaded as the question
])
def test_bad_audio_uploads(engine, tmp_path, name, content, message):
    from PIL import Image

    p = tmp_path / name
    if content is None:
        Image.new("RGB", (32, 32)).save(p)
    else:
        p.write_bytes(content)
    s = engine.new_session()
    with pytest.raises(ValueError, match=message) as e:
        s.send_upload(audio=str(p))
    assert "Traceback" not in str(e.value) and not s.history


def test_bad_picture_uploads(engine, tmp_path):
    from PIL import Image

    from webui_fixtures import speech

    question = (16000, speech("what is this"))
    s = engine.new_session()
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "song.png").write_bytes(b"ID3\x03\x00" + bytes(200))
    Image.new("1", (5000, 5000)).save(tmp_path / "huge.png")
    for name, message in (("empty.png", "not an image|empty"), ("song.png", "not an image"), ("huge.png", "too large")):
        with pytest.raises(ValueError, match=message):
            s.send_upload(audio=question, image=str(tmp_path / name))
    assert not s.history


def test_the_export_takes_nothing_from_outside_its_folder(engine, tmp_path):
    s = engine.new_session()
    s.send_text("hello")
    assert s.wait_idle(60)
    secret = tmp_path / "secret.txt"
    secret.write_text("not yours")
    # a file name that points outside (as a crafted history entry would) is left out of the zip
    s.history[0].files["image"] = str(s.dir / ".." / ".." / secret.name)
    s.history[0].files["user_audio"] = str(secret)
    path = s.export_zip()
    assert path.parent == s.dir
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    assert "secret.txt" not in names and all("/" not in n and ".." not in n for n in names)
    assert Path(path).resolve().is_relative_to(s.dir.resolve())
