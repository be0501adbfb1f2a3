"""`python -m omni bench` (omni/bench.py): the figures it writes, the player it models, the CPU it names."""

import inspect
import json
import statistics

import pytest
import torch


def test_bench_writes_the_figures_as_json(tiny_ckpt, tmp_path, run_cli, monkeypatch):
    import omni.bench

    gaps, agreements = [], []  # what the bench gave its playback model and its agreement check, and got back
    real_gaps, real_agreement = omni.bench.playback_gaps, omni.bench.token_agreement
    named = inspect.signature(real_gaps).bind
    monkeypatch.setattr(omni.bench, "playback_gaps",
                        lambda *a, **k: gaps.append((named(*a, **k).arguments, real_gaps(*a, **k))) or gaps[-1][1])
    monkeypatch.setattr(omni.bench, "token_agreement",
                        lambda *a, **k: agreements.append((a, real_agreement(*a, **k))) or agreements[-1][1])
    out = tmp_path / "bench.json"
    rc, stdout, _ = run_cli("bench", "--checkpoint", tiny_ckpt, "--steps", 4, "--stream-steps", 20,
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


def test_fp32_bench_reports_the_head_screen_and_its_agreement_with_the_whole_heads(tiny_ckpt, tmp_path, run_cli):
    out = tmp_path / "bench.json"
    rc, stdout, _ = run_cli("bench", "--checkpoint", tiny_ckpt, "--steps", 3, "--stream-steps", 12,
                            "--ttfa-runs", 1, "--agreement", 2, "--json", out)
    got = json.loads(out.read_text())
    assert rc == 0 and got["decode_path"] == "eager" and "head_screen" in stdout
    assert got["head_screen"]["text"]["calls"] > 0 and got["head_screen"]["audio"]["calls"] > 0
    assert got["token_agreement"] == {"prompts": 2, "identical_prompts": 2, "position_agreement": 1.0}
    rc, _, _ = run_cli("bench", "--checkpoint", tiny_ckpt, "--steps", 3, "--stream-steps", 12,
                       "--ttfa-runs", 1, "--agreement", 2, "--no-screen", "--json", out)
    got = json.loads(out.read_text())
    assert rc == 0 and got["head_screen"] == "off" and "note" in got["token_agreement"]


def test_bench_times_whisper_in_every_request(tiny_ckpt, tmp_path, run_cli, monkeypatch):
    """The model keeps the last audio's features; the bench's requests must not reuse them (a question's time
    to first audio includes its Whisper encode)."""
    import omni.audio

    calls = []
    real = omni.audio.whisper_encode
    monkeypatch.setattr(omni.audio, "whisper_encode", lambda *a, **k: calls.append(1) or real(*a, **k))
    out = tmp_path / "bench.json"
    rc, _, _ = run_cli("bench", "--checkpoint", tiny_ckpt, "--steps", 2, "--stream-steps", 12,
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
