"""The CLI contract (`python -m omni generate ... --tokens-json`) and bad input: one line, exit code 2."""

import inspect
import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import omni
from omni.cli import main

ROOT = Path(__file__).resolve().parents[1]


def run_cli(capsys, *args):
    rc = main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.mark.parametrize("task", omni.TASKS)
def test_generate_writes_the_token_json_contract(tiny_ckpt, tiny_model, media, tmp_path, capsys, task):
    out, wav = tmp_path / "t.json", tmp_path / "a.wav"
    rc, stdout, err = run_cli(capsys, "generate", "--checkpoint", tiny_ckpt, "--snac", tiny_ckpt / "snac_24khz",
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
def test_bad_input_is_one_clear_line_and_exit_2(tiny_ckpt, media, capsys, case):
    args, expected = BAD[case]
    args = [a.format(**{k: str(v) for k, v in media.items()}) for a in args]
    rc, _, err = run_cli(capsys, "generate", "--checkpoint", tiny_ckpt, "--device", "cpu", *args)
    assert rc == 2
    lines = [l for l in err.strip().splitlines() if l.startswith("error:")]
    assert len(lines) == 1 and expected in lines[0], err
    assert "Traceback" not in err


def test_an_input_the_task_does_not_use_is_named_in_a_warning(tiny_ckpt, media, capsys, tmp_path):
    """The model takes a picture only with a spoken question (IMAGE_A1A2): a picture sent with typed text would
    otherwise be dropped without a word."""
    rc, _, err = run_cli(capsys, "generate", "--checkpoint", tiny_ckpt, "--task", "T1T2", "--text", "what is this?",
                         "--image", media["image"], "--max-new-tokens", 2, "--tokens-json", tmp_path / "t.json")
    assert rc == 0 and "warning: task T1T2 does not use --image" in err and "IMAGE_A1A2" in err
    rc, _, err = run_cli(capsys, "generate", "--checkpoint", tiny_ckpt, "--task", "IMAGE_A1A2", "--audio",
                         media["speech16k"], "--image", media["image"], "--max-new-tokens", 2)
    assert rc == 0 and "warning" not in err


def test_long_audio_is_trimmed_with_a_warning(tiny_ckpt, media, capsys, tmp_path):
    rc, _, err = run_cli(capsys, "generate", "--checkpoint", tiny_ckpt, "--task", "ASR", "--audio", media["long"],
                         "--max-new-tokens", 2, "--tokens-json", tmp_path / "t.json")
    assert rc == 0 and "only the first 30 s are used" in err
    assert json.loads((tmp_path / "t.json").read_text())["prompt_length"] == 1500 + 3


def test_missing_checkpoint_lists_every_file_and_the_fix(tmp_path, capsys):
    rc, _, err = run_cli(capsys, "generate", "--checkpoint", tmp_path / "none", "--task", "T1T2", "--text", "hi")
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


def test_stream_flag_prints_text_and_writes_the_same_tokens(tiny_ckpt, media, tmp_path, capsys):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    common = ["generate", "--checkpoint", tiny_ckpt, "--task", "A1A2", "--audio", media["speech16k"],
              "--max-new-tokens", 20]
    assert run_cli(capsys, *common, "--tokens-json", a)[0] == 0
    rc, out, err = run_cli(capsys, *common, "--tokens-json", b, "--stream", "--stream-mode", "official")
    assert rc == 0 and "steps/s" in err
    assert json.loads(a.read_text()) == json.loads(b.read_text())


def test_bench_writes_the_figures_as_json(tiny_ckpt, tmp_path, capsys, monkeypatch):
    import omni.bench

    gaps, agreements = [], []  # what the bench gave its playback model and its agreement check, and got back
    real_gaps, real_agreement = omni.bench.playback_gaps, omni.bench.token_agreement
    named = inspect.signature(real_gaps).bind
    monkeypatch.setattr(omni.bench, "playback_gaps",
                        lambda *a, **k: gaps.append((named(*a, **k).arguments, real_gaps(*a, **k))) or gaps[-1][1])
    monkeypatch.setattr(omni.bench, "token_agreement",
                        lambda *a, **k: agreements.append((a, real_agreement(*a, **k))) or agreements[-1][1])
    out = tmp_path / "bench.json"
    rc, stdout, _ = run_cli(capsys, "bench", "--checkpoint", tiny_ckpt, "--steps", 4, "--stream-steps", 20,
                            "--quantize", "int8", "--agreement", 2, "--json", out)
    assert rc == 0
    got = json.loads(out.read_text())
    for key in ("decode_ms_per_step", "steps_per_s", "prefill_ms", "ttfa_s", "rtf", "peak_rss_mb"):
        assert key in got and key in stdout
    # both figures are printed rounded (0.1 ms, 0.01 steps/s): they must agree up to that rounding
    assert got["decode_ms_per_step"] > 0
    assert abs(1000 / got["steps_per_s"] - got["decode_ms_per_step"]) <= 0.05 + 0.001 * got["decode_ms_per_step"]
    assert got["prompt_length"] == int(3500 / 20) + 1 + 3
    # the gaps two players would have with the streamed answer's chunks: one that plays each chunk as it comes,
    # and the app's (0.3 s prebuffer); the chunks are the streamed answer's 13 frames, the first at its ttfa
    (plain_args, plain), (app_args, app) = gaps
    chunks = plain_args["chunks"]
    assert app_args["chunks"] == chunks and app_args["finished"] == plain_args["finished"]
    assert (plain_args.get("prebuffer_s", 0.0), app_args["prebuffer_s"]) == (0.0, 0.3)
    assert plain_args["finished"] == pytest.approx(got["stream_wall_s"], abs=0.005)
    assert chunks[0][0] == pytest.approx(got["ttfa_runs_s"][0], abs=1e-3)
    assert sum(s for _, s in chunks) == pytest.approx((20 - 7) * 2048 / 24000)
    assert (got["stall_s"], got["stalls"]) == (round(plain[1], 3), plain[2])
    assert (got["app_start_s"], got["app_stall_s"], got["app_stalls"]) == (round(app[0], 3), round(app[1], 3), app[2])
    assert got["app_prebuffer_s"] == 0.3
    # a player that plays each chunk as it comes waits, in all, as long as it should have waited at the start
    assert got["stall_s"] == pytest.approx(got["gapless_start_s"] - got["ttfa_runs_s"][0], abs=2e-3)
    # the tiny random model ends its answers after a few steps; the bench times the whole budget anyway
    assert got["decode_steps"] == 4
    assert got["stream_audio_s"] == round((20 - 7) * 2048 / 24000, 2)  # 20 entries: 13 complete frames
    runs = got["ttfa_runs_s"]  # the median of the streamed answer's first audio and 2 more requests
    assert len(runs) == 3 and got["ttfa_s"] == pytest.approx(statistics.median(runs), abs=1e-3)
    assert got["app_start_s"] >= runs[0]  # the app's player starts on the streamed answer's chunks
    assert 0 < got["whisper_ms"] < 1000 * min(runs)  # the audio encoder is a part of the time to first audio
    assert got["whisper_attention"] in ("sdpa", "sdpa-bf16", "matmul-bf16")
    assert got["snac_dtype"] in ("float32", "bfloat16")  # int8 mode: whichever this CPU decodes faster
    # int8 against a float32 model loaded from the same checkpoint, on the 2 prompts asked for
    (model, reference, n), agreement = agreements[0]
    assert len(agreements) == 1 and got["token_agreement"] == agreement and n == agreement["prompts"] == 2
    assert (model.quantize, reference.quantize, reference.dtype) == ("int8", None, torch.float32)
    assert 0 <= agreement["identical_prompts"] <= 2
    assert (agreement["position_agreement"] == 1.0) == (agreement["identical_prompts"] == 2)


def test_bench_names_the_cpu_with_its_family_and_model():
    """A VM may call every AMD CPU "AMD EPYC"; the family and model numbers tell a Zen 4 from a Zen 5."""
    from omni.bench import cpu_name

    info = ("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 26\nmodel\t\t: 2\nmodel name\t: AMD EPYC\n"
            "\nprocessor\t: 1\ncpu family\t: 25\nmodel\t\t: 17\nmodel name\t: other\n")
    assert cpu_name(info) == "AMD EPYC (cpu family 26, model 2)"  # the first processor's block
    assert cpu_name("model name\t: Some CPU\n") == "Some CPU"
    assert cpu_name("flags\t: fpu\n")  # no model name: the platform's word, never empty


def test_fp32_bench_reports_the_head_screen_and_its_agreement_with_the_whole_heads(tiny_ckpt, tmp_path, capsys):
    out = tmp_path / "bench.json"
    rc, stdout, _ = run_cli(capsys, "bench", "--checkpoint", tiny_ckpt, "--steps", 3, "--stream-steps", 12,
                            "--ttfa-runs", 1, "--agreement", 2, "--json", out)
    got = json.loads(out.read_text())
    assert rc == 0 and got["decode_path"] == "eager" and "head_screen" in stdout
    assert got["head_screen"]["text"]["calls"] > 0 and got["head_screen"]["audio"]["calls"] > 0
    assert got["token_agreement"] == {"prompts": 2, "identical_prompts": 2, "position_agreement": 1.0}
    rc, _, _ = run_cli(capsys, "bench", "--checkpoint", tiny_ckpt, "--steps", 3, "--stream-steps", 12,
                       "--ttfa-runs", 1, "--agreement", 2, "--no-screen", "--json", out)
    got = json.loads(out.read_text())
    assert rc == 0 and got["head_screen"] == "off" and "note" in got["token_agreement"]


def test_bench_times_whisper_in_every_request(tiny_ckpt, tmp_path, capsys, monkeypatch):
    """The model keeps the last audio's features; the bench's requests must not reuse them (a question's time
    to first audio includes its Whisper encode)."""
    import omni.audio

    calls = []
    real = omni.audio.whisper_encode
    monkeypatch.setattr(omni.audio, "whisper_encode", lambda *a, **k: calls.append(1) or real(*a, **k))
    out = tmp_path / "bench.json"
    rc, _, _ = run_cli(capsys, "bench", "--checkpoint", tiny_ckpt, "--steps", 2, "--stream-steps", 12,
                       "--ttfa-runs", 3, "--json", out)
    assert rc == 0
    runs = json.loads(out.read_text())["ttfa_runs_s"]
    # the warm-up prompt, the streamed answer, one per further time-to-first-audio request, then the
    # `whisper_ms` encodes (one per time-to-first-audio run)
    assert len(calls) == 1 + max(1, len(runs)) + 3


def test_playback_gaps_model_the_app_player():
    from omni.bench import playback_gaps

    chunks = [(1.0, 0.2), (1.5, 0.2), (1.6, 0.4), (1.9, 0.8)]  # the second chunk is 0.3 s late for a player at 1.0
    assert playback_gaps(chunks, finished=2.0) == pytest.approx((1.0, 0.3, 1))  # no buffer: every gap is heard
    # with a 0.3 s prebuffer the player starts at the second chunk and never runs dry
    assert playback_gaps(chunks, finished=2.0, prebuffer_s=0.3) == pytest.approx((1.5, 0.0, 0))
    # a prebuffer larger than the answer waits for its end, not longer
    assert playback_gaps([(1.0, 0.2), (1.1, 0.2)], finished=1.4, prebuffer_s=1.0) == pytest.approx((1.4, 0.0, 0))
    # running dry while playing: wait for twice the prebuffer (0.6 s) before going on
    start, stall, n = playback_gaps([(0.0, 0.3), (1.0, 0.1), (1.2, 0.3), (1.3, 0.3), (1.4, 0.2)], finished=2.0,
                                    prebuffer_s=0.3)
    assert (start, n) == (0.0, 1) and stall == pytest.approx(1.3 - 0.3)  # 0.1 + 0.3 < 0.6 at 1.2; 0.7 at 1.3
    # a slow model (0.2 s of speech every 0.3 s): a few long pauses instead of a gap at every chunk
    slow = [(0.3 * (i + 1), 0.2) for i in range(10)]
    assert playback_gaps(slow, finished=3.0)[2] == 9
    start, stall, n = playback_gaps(slow, finished=3.0, prebuffer_s=0.3)
    assert start == pytest.approx(0.6) and n == 1 and stall == pytest.approx(2.1 - 1.4)
    # the refill target never passes max_refill_s (the app's generation pauses there)
    capped = [(0.0, 0.2), (1.0, 0.5), (2.0, 0.5), (2.1, 0.5), (2.2, 0.1)]  # dry at 1.0 (wait 0.4 s) and 2.0
    assert playback_gaps(capped, finished=3.0, prebuffer_s=0.2, max_refill_s=0.5) == pytest.approx((0.0, 1.3, 2))
    assert playback_gaps(capped, finished=3.0, prebuffer_s=0.2) == pytest.approx((0.0, 1.4, 2))  # waits for 0.8 s


@pytest.mark.parametrize("args", [("--steps", 0), ("--stream-steps", 0), ("--seconds", 0), ("--prebuffer", -1),
                                  ("--ttfa-runs", 0), ("--agreement", -2)])
def test_bench_refuses_bad_settings_with_a_message(tiny_ckpt, capsys, args):
    rc, _, err = run_cli(capsys, "bench", "--checkpoint", tiny_ckpt, *args)
    assert rc == 2 and f"{args[0]} must be >=" in err and "Traceback" not in err


@pytest.mark.parametrize("args, said", [(["--quantize", "int8", "--dtype", "float16"], "computes in float32"),
                                        (["--quantize", "int8", "--device", "cuda"], "")])
def test_impossible_option_combinations_fail_before_loading(tiny_ckpt, capsys, args, said):
    rc, _, err = run_cli(capsys, "generate", "--checkpoint", tiny_ckpt, "--task", "T1T2", "--text", "hi", *args)
    assert rc == 2 and err.startswith("error:") and said in err and "Traceback" not in err


def test_int8_with_device_auto_runs_on_the_cpu_of_a_gpu_machine(monkeypatch):
    import torch

    from omni.device import check_options

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert check_options("auto", "float32", None).type == "cuda"
    assert check_options("auto", "float32", "int8").type == "cpu"  # not refused as "int8 is CPU only"


def test_out_of_memory_is_one_line(tiny_ckpt, capsys, monkeypatch):
    import torch

    import omni.inference

    def oom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    monkeypatch.setattr(omni.inference, "load_model", oom)
    rc, _, err = run_cli(capsys, "generate", "--checkpoint", tiny_ckpt, "--task", "T1T2", "--text", "hi")
    assert rc == 2 and err.startswith("error: out of memory") and "--max-new-tokens" in err
