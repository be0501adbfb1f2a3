"""Training (omni/train): manifests and their errors, the teacher-forced layouts against the prompts and decode rules,
the training forward against the inference one, what each stage trains, loss falling, resume, and a tiny model that
memorises answers and says them back through the normal generate path."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

import omni
from omni.config import ModelConfig, Vocab
from omni.prompt import build_prompt
from omni.speech import frames_from_delayed
from omni.train import demo as demo_module
from omni.train.config import TrainConfig
from omni.train.forward import batch_loss, embed, hidden_states
from omni.train.loop import StageRun
from omni.train.manifest import ManifestError, read_manifest
from omni.train.sequence import IGNORE, build_example

V = Vocab()


@pytest.fixture(scope="module")
def synth(tiny_ckpt, tmp_path_factory) -> Path:
    from omni.train.synthetic import build_synthetic

    return build_synthetic(tmp_path_factory.mktemp("synth"), tiny_ckpt, n_qa=3, n_images=2, seed=1)


def config(stage: str, **kw) -> TrainConfig:
    base = {"stage": stage, "steps": 8, "batch_size": 4, "warmup_steps": 2, "lr_adapters": 3e-3, "lr_llm": 3e-3,
            "threads": 1}
    return TrainConfig(**{**base, **kw})


# -- manifests ----------------------------------------------------------------------------------------------
BAD_LINES = [
    ('{"audio": "q.wav", "target_text": "hi"', "not valid JSON"),
    ('["q.wav"]', "expected a JSON object"),
    ('{"audio": "q.wav", "answer": "hi"}', "unknown field(s) answer"),
    ('{"audio": "q.wav", "text": "hi", "target_text": "x"}', "exactly one question"),
    ('{"text": "hi", "image": "p.png", "target_text": "x"}', "needs a spoken question"),
    ('{"audio": "gone.wav", "target_text": "x"}', "audio file not found"),
    ('{"audio": "q.wav", "target_text": ""}', "\"target_text\" must be a non-empty string"),
    ('{"text": "hi", "target_text": "x", "target_codes": [[1, 2, 3]]}', "each 7 integers"),
    ('{"text": "hi", "target_text": "x", "target_codes": [[1, 2, 3, 4, 5, 6, 4096]]}', "in 0..4095"),
    ('{"text": "hi", "target_text": "x", "task": "TTS"}', "task 'TTS' is not known"),
]


@pytest.mark.parametrize("line,message", BAD_LINES)
def test_a_bad_manifest_line_is_named_with_what_is_wrong(tmp_path, media, line, message):
    (tmp_path / "q.wav").write_bytes(media["speech16k"].read_bytes())
    good = json.dumps({"audio": "q.wav", "target_text": "hello"})
    (tmp_path / "m.jsonl").write_text(f"{good}\n\n{line}\n")
    with pytest.raises(ManifestError) as e:
        read_manifest(tmp_path / "m.jsonl")
    assert str(e.value).startswith("m.jsonl line 3: ") and message in str(e.value)


def test_unreadable_audio_fails_the_cli_with_the_line(tiny_ckpt, media, tmp_path, run_cli):
    (tmp_path / "ok.wav").write_bytes(media["speech16k"].read_bytes())
    (tmp_path / "bad.wav").write_bytes(media["corrupt"].read_bytes())
    lines = [{"audio": "ok.wav", "target_text": "fine"}, {"audio": "bad.wav", "target_text": "broken"}]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    rc, _, err = run_cli("train", "--stage", "1", "--data", tmp_path / "m.jsonl", "--init", tiny_ckpt,
                         "--out", tmp_path / "out", "--steps", 1)
    assert rc == 2 and "m.jsonl line 2:" in err and "Traceback" not in err
    rc, _, err = run_cli("train", "--stage", "2", "--out", tmp_path / "out")
    assert rc == 2 and "--data" in err


def test_a_config_file_sets_the_options_and_flags_win(tiny_ckpt, synth, tmp_path, run_cli):
    (tmp_path / "c.yaml").write_text("steps: 3\nlr_adapters: 0.002\nwarmup_steps: 1\nbatch_size: 2\nthreads: 1\n")
    rc, out, err = run_cli("train", "--stage", "1", "--data", synth, "--init", tiny_ckpt, "--out", tmp_path / "o",
                           "--config", tmp_path / "c.yaml", "--steps", 2)
    assert rc == 0, err
    log = [json.loads(x) for x in (tmp_path / "o" / "loss_stage1.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2] and log[0]["lr_adapters"] == pytest.approx(0.002)
    assert "trains adapters" in out and json.loads((tmp_path / "o" / "train_summary.json").read_text())["stages"]["1"]
    (tmp_path / "bad.yaml").write_text("step: 3\n")
    rc, _, err = run_cli("train", "--stage", "1", "--data", synth, "--init", tiny_ckpt, "--out", tmp_path / "o",
                         "--config", tmp_path / "bad.yaml")
    assert rc == 2 and "unknown keys ['step']" in err


# -- layouts ------------------------------------------------------------------------------------------------
def test_a_speech_answer_is_the_prompt_then_the_entries_the_decode_loop_feeds_back():
    frames = [[(7 * f + j) % 4096 for j in range(7)] for f in range(3)]
    ex = build_example("A1A2", V, answer_ids=[11, 12], frames=frames, n_frames=5)
    prompt = build_prompt("A1A2", V, n_frames=5)
    L, S = prompt.length, len(frames) + 8
    assert torch.equal(ex.ids[:, :, :L], prompt.ids) and ex.length == L + S - 1
    text = ex.text_targets[1, L - 1:].tolist()
    assert text == [11, 12, V.eot] + [V.pad_t] * (S - 3)
    audio = ex.audio_targets[0, :, L - 1:].tolist()  # entry s on layer j
    # the loop yields every entry but the last (its layer 6 is eoa): the inference's own undelaying of those
    assert frames_from_delayed([row[:-1] for row in audio]) == frames
    assert all(audio[j][len(frames) + j + 1] == V.eoa for j in range(7)) and audio[6][-1] == V.eoa
    assert all(audio[j][s] == V.pad_a for j in range(7) for s in range(j + 1))
    # fed back: entry s-1 at column L+s-1, text to both rows, pad_a on the text row's audio (spec §8.4)
    for s in range(1, S):
        assert ex.ids[0, 7, L + s - 1] == ex.ids[1, 7, L + s - 1] == text[s - 1]
        assert [int(ex.ids[0, j, L + s - 1]) for j in range(7)] == [V.layershift(audio[j][s - 1], j) for j in range(7)]
        assert all(int(ex.ids[1, j, L + s - 1]) == V.layershift(V.pad_a, j) for j in range(7))
    # heads not read at inference are not trained: row 0's text, row 1's audio, every prompt position
    assert (ex.text_targets[0] == IGNORE).all() and (ex.audio_targets[1] == IGNORE).all()
    assert (ex.text_targets[:, : L - 1] == IGNORE).all() and (ex.audio_targets[:, :, : L - 1] == IGNORE).all()


def test_a_text_answer_ends_with_eot_and_the_image_text_row_is_row_1_of_the_image_prompt():
    ex = build_example("T1T2", V, answer_ids=[5, 6, 7], question_ids=[1, 2])
    L = build_prompt("T1T2", V, text_ids=[1, 2]).length
    assert ex.text_targets[0, L - 1:].tolist() == [5, 6, 7, V.eot] and (ex.audio_targets == IGNORE).all()
    assert ex.ids[0, 7, L:].tolist() == [5, 6, 7]
    img = build_example("IMAGE_TEXT", V, answer_ids=[9], n_frames=4, n_image=50)
    assert torch.equal(img.ids[0, :, :-1], build_prompt("IMAGE_A1A2", V, n_frames=4, n_image=50).ids[1])


def test_the_training_forward_is_the_inference_forward(tiny_ckpt):
    from omni.checkpoint import load_lm

    lm = load_lm(tiny_ckpt, ModelConfig.from_file(tiny_ckpt / "model_config.yaml"))
    ex = build_example("A1A2", Vocab.of(lm.cfg), answer_ids=[11, 12], frames=[[1] * 7] * 2, n_frames=6)
    ex.audio_features = torch.randn(6, lm.cfg.whisper_adapter_dim)
    with torch.no_grad():
        got = hidden_states(lm, embed(lm, ex))
        x = lm.embed(ex.ids, ex.audio_features, ex.audio_slots)
        want = lm(x, lm.new_cache(2, ex.length), 0)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


# -- stages ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("stage,trained", [("1", {"whisper_adapter", "vision_adapter"}), ("2", {"transformer"}),
                                           ("3", {"whisper_adapter", "vision_adapter", "transformer"})])
def test_each_stage_trains_its_parts_only_and_its_loss_falls(tiny_ckpt, synth, tmp_path, stage, trained):
    said = []
    run = StageRun(config(stage, steps=10), synth, tiny_ckpt, tmp_path / "out", say=said.append)
    assert any(line.startswith("trains ") for line in said) and any(line.startswith("frozen: ") for line in said)
    before = {k: v.clone() for k, v in run.lm.state_dict().items()}
    with torch.no_grad():
        loss_before = float(batch_loss(run.lm, run.examples)[0])
    summary = run.run()
    with torch.no_grad():
        loss_after = float(batch_loss(run.lm, run.examples)[0])
    assert loss_after < 0.8 * loss_before and summary["steps"] == 10
    for k, v in run.lm.state_dict().items():
        changed = not torch.equal(before[k], v)
        assert changed == (k.split(".")[0] in trained or k == "lm_head.weight" and "transformer" in trained), k
    log = [json.loads(x) for x in (tmp_path / "out" / f"loss_stage{stage}.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 11))
    assert (tmp_path / "out" / f"loss_stage{stage}.png").read_bytes()[:4] == b"\x89PNG"
    # the official layout, its config file as it was (the official code's Config takes no unknown keys)
    assert (tmp_path / "out" / "model_config.yaml").read_bytes() == (tiny_ckpt / "model_config.yaml").read_bytes()
    assert not omni.checkpoint.missing_files(tmp_path / "out")
    if stage == "3":
        assert {ex.task for ex in run.examples} >= {"A1A2", "T1A2", "IMAGE_A1A2"} and "audio_loss" in log[0]


def test_resume_gives_the_losses_of_an_uninterrupted_run(tiny_ckpt, synth, tmp_path, monkeypatch):
    cfg = {"steps": 6, "batch_size": 2, "grad_accum": 2, "save_every": 3}
    StageRun(config("3", **cfg), synth, tiny_ckpt, tmp_path / "a").run()
    whole = [json.loads(x)["loss"] for x in (tmp_path / "a" / "loss_stage3.jsonl").read_text().splitlines()]

    real_step = StageRun.step

    def crash_after_4(self, step):
        if step == 4:
            raise KeyboardInterrupt
        return real_step(self, step)

    monkeypatch.setattr(StageRun, "step", crash_after_4)
    with pytest.raises(KeyboardInterrupt):
        StageRun(config("3", **cfg), synth, tiny_ckpt, tmp_path / "b").run()
    monkeypatch.setattr(StageRun, "step", real_step)
    run = StageRun(config("3", **cfg), synth, None, tmp_path / "b", resume=True)
    assert run.start == 3  # the last checkpoint; step 4 was logged but never saved
    run.run()
    resumed = [json.loads(x)["loss"] for x in (tmp_path / "b" / "loss_stage3.jsonl").read_text().splitlines()]
    assert len(resumed) == 6
    assert resumed == pytest.approx(whole, rel=1e-5)  # same machine, same arithmetic


def test_gradient_checkpointing_takes_the_same_steps_and_bf16_autocast_trains_fp32_weights(tiny_ckpt, synth,
                                                                                           tmp_path):
    """The two memory savers of a GPU run (`--grad-checkpointing`, `--bf16`), here on the CPU (torch.autocast
    works on both): recomputing the blocks changes no step, and bf16 arithmetic trains the fp32 master weights."""
    plain = StageRun(config("3", steps=3), synth, tiny_ckpt, tmp_path / "plain")
    losses = [plain.step(i)["loss"] for i in range(3)]
    saved = StageRun(config("3", steps=3, grad_checkpointing=True), synth, tiny_ckpt, tmp_path / "ckpt")
    assert [saved.step(i)["loss"] for i in range(3)] == pytest.approx(losses, rel=1e-5)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in
               zip(plain.lm.state_dict().values(), saved.lm.state_dict().values()))

    bf16 = StageRun(config("3", steps=10, bf16=True), synth, tiny_ckpt, tmp_path / "bf16")
    summary = bf16.run()
    assert summary["first_loss"] == pytest.approx(losses[0], rel=0.05)  # the same loss, in coarser arithmetic
    assert summary["first_loss"] != losses[0]  # (bf16 was used: fp32 gives this loss exactly, as above)
    assert summary["last_loss"] < 0.8 * summary["first_loss"]
    written = torch.load(tmp_path / "bf16" / "lit_model.pth", weights_only=True)
    assert {v.dtype for v in bf16.lm.state_dict().values()} == {v.dtype for v in written.values()} == {torch.float32}


def test_a_large_manifest_is_encoded_as_drawn_with_the_same_losses(tiny_ckpt, synth, tmp_path, monkeypatch):
    from omni.train import data

    eager = StageRun(config("2", steps=4), synth, tiny_ckpt, tmp_path / "eager")
    assert isinstance(eager.examples, list)
    eager_losses = [eager.step(i)["loss"] for i in range(4)]
    monkeypatch.setattr(data, "EAGER_LIMIT", 1)
    lazy = StageRun(config("2", steps=4), synth, tiny_ckpt, tmp_path / "lazy")
    assert isinstance(lazy.examples, data.LazyExamples) and not lazy.examples.kept
    assert [lazy.step(i)["loss"] for i in range(4)] == pytest.approx(eager_losses, rel=1e-6)
    assert 0 < len(lazy.examples.kept) <= len(lazy.examples)


def test_a_tiny_model_memorises_answers_and_says_them_through_generate(tiny_ckpt, synth, tmp_path):
    picked = [x for x in map(json.loads, synth.read_text().splitlines()) if x["id"] in ("typed0", "qa1")]
    for x in picked:
        if "audio" in x:
            x["audio"] = str(synth.parent / x["audio"])
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(x) + "\n" for x in picked))
    out = tmp_path / "out"
    StageRun(config("3", steps=100, batch_size=2, warmup_steps=5, lr_adapters=1e-2, lr_llm=1e-2),
             tmp_path / "m.jsonl", tiny_ckpt, out).run()
    model = omni.load_model(out, device="cpu")
    for x in picked:
        res = model.generate("T1A2" if "text" in x else "A1A2", text=x.get("text"), audio=x.get("audio"),
                             decode_audio=False)
        assert res.text == x["target_text"]
        assert frames_from_delayed(res.audio_ids) == x["target_codes"]


def test_demo_writes_the_summary_of_every_stage(tmp_path, run_cli, monkeypatch):
    monkeypatch.setattr(demo_module, "DEMO_PLAN", tuple((s, {**p, "steps": 3}) for s, p in demo_module.DEMO_PLAN))
    monkeypatch.setattr(demo_module, "DEMO_SIZE", (2, 1, 3, 3))
    rc, _out, err = run_cli("train", "--demo", "--out", tmp_path, "--threads", 1)
    assert rc == 0, err
    summary = json.loads((tmp_path / "train_summary.json").read_text())
    assert set(summary["stages"]) == {"1", "2", "3", "irq"}
    assert {"accuracy", "false_interrupts", "detection_delay_frames"} <= set(summary["stages"]["irq"])
    for entry in summary["stages"].values():
        assert entry["steps"] == 3 and entry["first_loss"] > 0 and entry["last_loss"] > 0
    assert (tmp_path / "stageirq" / "lit_model.pth").is_file()


# -- the semantic interruption ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def streams(tmp_path_factory) -> Path:
    from omni.train.interrupt_data import build_interrupt_set

    return build_interrupt_set(tmp_path_factory.mktemp("streams"), n_streams=6, seconds=2.0, seed=3)


@pytest.mark.parametrize("line,message", [
    ('{"stream": "s.wav", "command_end": -1}', "seconds > 0"),
    ('{"stream": "s.wav", "target_text": "x"}', "not target_text"),
    ('{"stream": "missing.wav"}', "stream file not found"),
])
def test_a_bad_stream_line_is_named(tmp_path, media, line, message):
    (tmp_path / "s.wav").write_bytes(media["speech16k"].read_bytes())
    (tmp_path / "m.jsonl").write_text(line + "\n")
    with pytest.raises(ManifestError, match=f"m.jsonl line 1: .*{message}"):
        read_manifest(tmp_path / "m.jsonl")


def test_a_stream_is_labelled_n_irq_until_the_command_is_heard_then_irq(tiny_ckpt, streams):
    from omni.loading import read_parts
    from omni.prompt import listen_layout
    from omni.train.interrupt import command_frame, declare_tokens, listen_example

    parts = read_parts(tiny_ckpt, tiny_ckpt / "snac_24khz", lambda m: None)
    declare_tokens(parts)
    irq, n_irq = parts.cfg.irq_token, parts.cfg.n_irq_token
    assert (irq, n_irq) == (151941, 151942)
    with_command = next(s for s in read_manifest(streams) if s.command_end is not None)
    ex = listen_example(parts, with_command)
    end, F = command_frame(with_command.command_end), ex.length - 1
    assert F == int(2.0 * 24000) // 2048 and 0 < end < F
    assert ex.text_targets[0].tolist() == [IGNORE] + [n_irq] * end + [irq] * (F - end)
    assert torch.equal(ex.ids[0, :, :1], torch.tensor(listen_layout(V, [])))
    assert (ex.audio_targets == IGNORE).all()


def test_the_irq_stage_declares_its_tokens_and_the_listener_gives_the_trained_signal(tiny_ckpt, tiny_model, streams,
                                                                                     tmp_path):
    from omni.errors import OmniInputError
    from omni.train.interrupt import irq_probabilities

    out = tmp_path / "irq"
    run = StageRun(config("irq", steps=12, batch_size=4), streams, tiny_ckpt, out, eval_manifest=streams)
    summary = run.run()
    assert summary["last_loss"] < 0.5 * summary["first_loss"]
    assert 0 <= summary["accuracy"] <= 1 and summary["streams"] == 6
    assert set(summary["false_interrupts"]) == {"noise", "music", "speech"}
    cfg = ModelConfig.from_file(out / "model_config.yaml")
    assert (cfg.irq_token, cfg.n_irq_token) == (151941, 151942)
    model = omni.load_model(out, device="cpu")
    assert model.has_interrupt
    # the live listener, fed the stream in uneven pieces, says what the training forward says frame by frame
    from omni.train.interrupt import read_stream

    ex = run.eval_examples[0]
    wave = read_stream(read_manifest(streams)[0].stream)
    listener = model.interrupt_listener()
    live = listener.add(wave[:5000]) + listener.add(wave[5000:11111]) + listener.add(wave[11111:])
    assert live == pytest.approx(irq_probabilities(run.lm, ex), abs=1e-4)
    # a checkpoint without the tokens says so
    assert not tiny_model.has_interrupt
    with pytest.raises(OmniInputError, match="no interruption tokens"):
        tiny_model.interrupt_listener()


def code_streams(cfg, n: int, seed: int, command: list[list[int]]) -> list:
    """Listening rows over made-up SNAC frames: each background draws its codes from a palette of its own, half the
    streams hold the command's 6 frames (15 % of their codes replaced) at a random place."""
    from omni.train.interrupt import frames_example

    rng = random.Random(seed)
    palettes = {bg: random.Random(bg).sample(range(4096), 40) for bg in ("noise", "music", "speech")}
    out = []
    for i in range(n):
        bg = ("noise", "music", "speech")[i % 3]
        frames = [[rng.choice(palettes[bg]) for _ in range(7)] for _ in range(20)]
        end = None
        if (i // 3) % 2 == 0:
            at = rng.randrange(2, 20 - len(command) - 2)
            for k, f in enumerate(command):
                frames[at + k] = [c if rng.random() > 0.15 else rng.choice(palettes[bg]) for c in f]
            end = at + len(command)
        out.append(frames_example(cfg, frames, end, bg))
    return out


def test_the_irq_stage_learns_to_hear_a_command_in_codes_it_never_saw(tiny_ckpt, streams, tmp_path):
    """The tiny checkpoint's random SNAC hears nothing (1-2 codes per layer for any sound), so the learning side of the
    irq stage is measured on codes: held-out streams, the stage's own loop and measures."""
    run = StageRun(config("irq", steps=100, batch_size=8, warmup_steps=5, lr_llm=1e-2), streams, tiny_ckpt,
                   tmp_path / "irq")
    command = [[random.Random(k).randrange(4096) for _ in range(7)] for k in range(6)]
    run.examples = code_streams(run.lm.cfg, 640, 0, command)
    run.eval_examples = code_streams(run.lm.cfg, 12, 99, command)
    measured = run.run()
    print(f"\nirq on held-out code streams: {measured}")
    assert measured["held_out"] and measured["missed_commands"] <= 1
    assert measured["accuracy"] >= 0.9 and measured["detection_delay_frames"] <= 2
