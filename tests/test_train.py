"""Training (omni/train): manifests and their errors, the teacher-forced layouts against the prompts and decode rules,
the training forward against the inference one, what each stage trains, loss falling, resume, and a tiny model that
memorises answers and says them back through the normal generate path."""

from __future__ import annotations

import json
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
    base = dict(stage=stage, steps=8, batch_size=4, warmup_steps=2, lr_adapters=3e-3, lr_llm=3e-3, threads=1)
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
    if stage == "3":
        assert {ex.task for ex in run.examples} >= {"A1A2", "T1A2", "IMAGE_A1A2"} and "audio_loss" in log[0]


def test_resume_gives_the_losses_of_an_uninterrupted_run(tiny_ckpt, synth, tmp_path, monkeypatch):
    cfg = dict(steps=6, batch_size=2, grad_accum=2, save_every=3)
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
    monkeypatch.setattr(demo_module, "DEMO_SIZE", (2, 1))
    rc, out, err = run_cli("train", "--demo", "--out", tmp_path, "--threads", 1)
    assert rc == 0, err
    summary = json.loads((tmp_path / "train_summary.json").read_text())
    assert set(summary["stages"]) == {"1", "2", "3"}
    for entry in summary["stages"].values():
        assert entry["steps"] == 3 and entry["first_loss"] > 0 and entry["last_loss"] > 0
    assert (tmp_path / "stage3" / "lit_model.pth").is_file()
