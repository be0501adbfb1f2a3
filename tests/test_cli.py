"""The CLI contract (`python -m omni generate ... --tokens-json`) and bad input: one line, exit code 2."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

import omni

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("task", omni.TASKS)
def test_generate_writes_the_token_json_contract(tiny_ckpt, tiny_model, media, tmp_path, run_cli, task):
    out, wav = tmp_path / "t.json", tmp_path / "a.wav"
    rc, stdout, err = run_cli("generate", "--checkpoint", tiny_ckpt, "--snac", tiny_ckpt / "snac_24khz",
                              "--task", task, "--audio", media["speech16k"], "--image", media["image"],
                              "--text", "What is the capital of France?", "--max-new-tokens", 20, "--device", "cpu",
                              "--tokens-json", out, "--out-wav", wav)
    assert rc == 0, err
    got = json.loads(out.read_text())
    assert set(got) == {"task", "prompt_length", "text", "audio"} and got["task"] == task
    ref = tiny_model.generate(task, audio=media["speech16k"], image=media["image"],
                              text="What is the capital of France?", options=omni.DecodingOptions(max_new_tokens=20))
    assert got["prompt_length"] == ref.prompt_length
    if task in omni.SPEECH_TASKS:
        assert got["text"] == ref.text_ids and got["audio"] == ref.audio_ids
        assert len(got["audio"]) == 7 and all(len(r) == len(got["text"]) <= 20 for r in got["audio"])
        assert all(0 <= t < 4160 for r in got["audio"] for t in r)
        import soundfile as sf

        data, sr = sf.read(wav)
        assert sr == 24000 and len(data) == max(0, len(got["text"]) - 7) * 2048
    else:
        assert got["audio"] == [] and len(got["text"]) <= 20
        # the answer's ids, without the eot that ended it (one sampled from the prefill, entry 0, is kept)
        assert got["text"] == ref.text_ids and omni.config.Vocab().eot not in got["text"][1:]
        assert not wav.exists()
    assert ref.text.strip()[:10] in stdout


BAD = {
    "missing audio file": (["--task", "A1A2", "--audio", "/nonexistent/q.wav"], "audio file not found"),
    "empty audio file": (["--task", "A1A2", "--audio", "{empty}"], "audio file is empty"),
    "corrupt audio": (["--task", "ASR", "--audio", "{corrupt}"], "cannot decode audio file"),
    "too short audio": (["--task", "A1T2", "--audio", "{too_short}"], "too short"),
    "no audio given": (["--task", "A1A2"], "needs --audio"),
    "not an image": (["--task", "IMAGE_A1A2", "--audio", "{speech16k}", "--image", "{not_image}"], "not a readable image"),
    "wav named png": (["--task", "IMAGE_A1A2", "--audio", "{speech16k}", "--image", "{wav_as_png}"], "not a readable image"),
    "missing image": (["--task", "IMAGE_A1A2", "--audio", "{speech16k}", "--image", "/no/img.png"], "image file not found"),
    "empty text": (["--task", "T1A2", "--text", "   "], "needs --text"),
    "overlong text": (["--task", "T1T2", "--text", "word " * 2100], "text is too long"),
    "budget too big": (["--task", "T1T2", "--text", "hi", "--max-new-tokens", "5000"], "exceeds the model's"),
    "zero budget": (["--task", "T1T2", "--text", "hi", "--max-new-tokens", "0"], "max_new_tokens must be"),
    "unknown device": (["--task", "T1T2", "--text", "hi", "--device", "gpu"], "unknown device 'gpu'"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_clear_line_and_exit_2(tiny_ckpt, media, run_cli, case):
    args, expected = BAD[case]
    args = [a.format(**{k: str(v) for k, v in media.items()}) for a in args]
    rc, _, err = run_cli("generate", "--checkpoint", tiny_ckpt, "--device", "cpu", *args)
    assert rc == 2
    lines = [l for l in err.strip().splitlines() if l.startswith("error:")]
    assert len(lines) == 1 and expected in lines[0], err
    assert "Traceback" not in err


def test_an_input_the_task_does_not_use_is_named_in_a_warning(tiny_ckpt, media, run_cli, tmp_path):
    """The model takes a picture only with a spoken question (IMAGE_A1A2): a picture sent with typed text would
    otherwise be dropped without a word."""
    rc, _, err = run_cli("generate", "--checkpoint", tiny_ckpt, "--task", "T1T2", "--text", "what is this?",
                         "--image", media["image"], "--max-new-tokens", 2, "--tokens-json", tmp_path / "t.json")
    assert rc == 0 and "warning: task T1T2 does not use --image" in err and "IMAGE_A1A2" in err
    rc, _, err = run_cli("generate", "--checkpoint", tiny_ckpt, "--task", "IMAGE_A1A2", "--audio",
                         media["speech16k"], "--image", media["image"], "--max-new-tokens", 2)
    assert rc == 0 and "warning" not in err


def test_long_audio_is_trimmed_with_a_warning(tiny_ckpt, media, run_cli, tmp_path):
    rc, _, err = run_cli("generate", "--checkpoint", tiny_ckpt, "--task", "ASR", "--audio", media["long"],
                         "--max-new-tokens", 2, "--tokens-json", tmp_path / "t.json")
    assert rc == 0 and "only the first 30 s are used" in err
    assert json.loads((tmp_path / "t.json").read_text())["prompt_length"] == 1500 + 3


def test_missing_checkpoint_lists_every_file_and_the_fix(tmp_path, run_cli):
    rc, _, err = run_cli("generate", "--checkpoint", tmp_path / "none", "--task", "T1T2", "--text", "hi")
    assert rc == 2
    for f in ("lit_model.pth", "model_config.yaml", "tokenizer.json", "small.pt", "ViT-B-32.pt", "config.json",
              "pytorch_model.bin"):
        assert f in err
    assert "python -m omni download" in err and "python -m omni tiny" in err


def test_real_process_exit_code_and_no_traceback(tiny_ckpt):
    p = subprocess.run([sys.executable, "-m", "omni", "generate", "--checkpoint", str(tiny_ckpt), "--task", "T1A2",
                        "--text", ""], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 2 and "Traceback" not in p.stderr and p.stderr.startswith("error:")


def test_download_without_network_says_so(tmp_path):
    import os

    env = dict(os.environ, HF_HUB_OFFLINE="1")
    p = subprocess.run([sys.executable, "-m", "omni", "download", "--dir", str(tmp_path / "ck")], capture_output=True,
                       text=True, cwd=ROOT, env=env, timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "cannot download" in p.stderr and "network" in p.stderr


def test_help_lists_the_commands():
    p = subprocess.run([sys.executable, "-m", "omni", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0
    for cmd in ("generate", "download", "tiny", "bench"):
        assert cmd in p.stdout


def test_stream_flag_prints_text_and_writes_the_same_tokens(tiny_ckpt, media, tmp_path, run_cli):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    common = ["generate", "--checkpoint", tiny_ckpt, "--task", "A1A2", "--audio", media["speech16k"],
              "--max-new-tokens", 20]
    assert run_cli(*common, "--tokens-json", a)[0] == 0
    rc, out, err = run_cli(*common, "--tokens-json", b, "--stream", "--stream-mode", "official")
    assert rc == 0 and "steps/s" in err
    assert json.loads(a.read_text()) == json.loads(b.read_text())


@pytest.mark.parametrize("args", [("--steps", 0), ("--stream-steps", 0), ("--seconds", 0), ("--prebuffer", -1),
                                  ("--ttfa-runs", 0), ("--agreement", -2)])
def test_bench_refuses_bad_settings_with_a_message(tiny_ckpt, run_cli, args):
    rc, _, err = run_cli("bench", "--checkpoint", tiny_ckpt, *args)
    assert rc == 2 and f"{args[0]} must be >=" in err and "Traceback" not in err


@pytest.mark.parametrize("args, said", [(["--quantize", "int8", "--dtype", "float16"], "computes in float32"),
                                        (["--quantize", "int8", "--device", "cuda"], "")])
def test_impossible_option_combinations_fail_before_loading(tiny_ckpt, run_cli, args, said):
    rc, _, err = run_cli("generate", "--checkpoint", tiny_ckpt, "--task", "T1T2", "--text", "hi", *args)
    assert rc == 2 and err.startswith("error:") and said in err and "Traceback" not in err


def test_out_of_memory_is_one_line(tiny_ckpt, run_cli, monkeypatch):
    import torch

    import omni.inference

    def oom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    monkeypatch.setattr(omni.inference, "load_model", oom)
    rc, _, err = run_cli("generate", "--checkpoint", tiny_ckpt, "--task", "T1T2", "--text", "hi")
    assert rc == 2 and err.startswith("error: out of memory") and "--max-new-tokens" in err
