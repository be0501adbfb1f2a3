"""Loading the official layout: dimensions come from the files, and every broken file gets a clear error."""

import shutil

import pytest
import torch
import yaml

import omni
from omni.checkpoint import KNOWN_FILES
from omni.errors import CheckpointError


@pytest.fixture
def ckpt_copy(tiny_ckpt, tmp_path):
    dst = tmp_path / "ck"
    shutil.copytree(tiny_ckpt, dst)
    return dst


def test_other_dimensions_load_from_the_files(tmp_path):
    """Nothing is hard-coded: a checkpoint with other LM/Whisper/CLIP widths loads and runs."""
    from omni import random_checkpoint

    d = tmp_path / "odd"
    saved = (random_checkpoint.TINY_LM, random_checkpoint.TINY_WHISPER, random_checkpoint.TINY_CLIP)
    try:
        random_checkpoint.TINY_LM = dict(n_layer=3, n_embd=96, n_head=6, n_query_groups=3, head_size=16,
                                         intermediate_size=160)
        random_checkpoint.TINY_WHISPER = dict(random_checkpoint.TINY_WHISPER, n_audio_state=128, n_audio_head=2)
        random_checkpoint.TINY_CLIP = dict(random_checkpoint.TINY_CLIP, width=128, embed_dim=48)
        random_checkpoint.make_tiny_checkpoint(d, seed=3)
    finally:
        random_checkpoint.TINY_LM, random_checkpoint.TINY_WHISPER, random_checkpoint.TINY_CLIP = saved
    m = omni.load_model(d, device="cpu")
    assert (m.cfg.n_embd, m.cfg.n_layer, m.whisper_dims.n_audio_state, m.clip.dims.width, m.clip.dims.heads) == \
        (96, 3, 128, 128, 2)
    r = m.generate("T1A2", text="hi", options=omni.DecodingOptions(max_new_tokens=9))
    assert len(r.text_ids) == 9


def test_missing_key_names_file_and_key(ckpt_copy):
    sd = torch.load(ckpt_copy / "lit_model.pth", weights_only=True)
    del sd["transformer.h.1.mlp.fc_2.weight"]
    torch.save(sd, ckpt_copy / "lit_model.pth")
    with pytest.raises(CheckpointError, match=r"lit_model.pth.*missing \['transformer.h.1.mlp.fc_2.weight'\]"):
        omni.load_model(ckpt_copy)


def test_shape_mismatch_names_key_and_shapes(ckpt_copy):
    cfg = yaml.safe_load((ckpt_copy / "model_config.yaml").read_text())
    cfg["intermediate_size"] = 96
    (ckpt_copy / "model_config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(CheckpointError, match=r"whisper_adapter.fc_1.weight has shape \(128, 64\).*\(96, 64\)"):
        omni.load_model(ckpt_copy)


def test_unsupported_architecture_is_rejected(ckpt_copy):
    cfg = yaml.safe_load((ckpt_copy / "model_config.yaml").read_text())
    cfg["parallel_residual"] = True
    (ckpt_copy / "model_config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(CheckpointError, match="parallel_residual"):
        omni.load_model(ckpt_copy)


@pytest.mark.parametrize("name", ["lit_model.pth", "small.pt", "ViT-B-32.pt", "snac_24khz/pytorch_model.bin",
                                  "tokenizer.json"])
def test_corrupt_file_is_a_clear_error(ckpt_copy, name):
    (ckpt_copy / name).write_bytes(b"\x00garbage" * 100)
    with pytest.raises(CheckpointError, match=name.split("/")[-1].replace(".", r"\.")):
        omni.load_model(ckpt_copy)


def test_file_claiming_to_be_official_must_match_its_sha256(ckpt_copy):
    size, _ = KNOWN_FILES["ViT-B-32.pt"]
    with open(ckpt_copy / "ViT-B-32.pt", "wb") as f:
        f.truncate(size)  # official size, wrong bytes
    with pytest.raises(CheckpointError, match="sha256 does not"):
        omni.load_model(ckpt_copy)


def test_untied_head_warns_and_wte_is_used(ckpt_copy):
    sd = torch.load(ckpt_copy / "lit_model.pth", weights_only=True)
    sd["lm_head.weight"] = sd["lm_head.weight"] + 1.0
    torch.save(sd, ckpt_copy / "lit_model.pth")
    from omni.checkpoint import load_lm
    from omni.config import ModelConfig

    with pytest.warns(UserWarning, match="using wte for both"):
        lm = load_lm(ckpt_copy, ModelConfig.from_file(ckpt_copy / "model_config.yaml"))
    assert torch.equal(lm.lm_head.weight, sd["transformer.wte.weight"])
    assert lm.lm_head.weight is lm.transformer.wte.weight
    with pytest.warns(UserWarning, match="using wte for both"):
        m = omni.load_model(ckpt_copy)
    assert torch.equal(m.lm.lm_head.weight, sd["transformer.wte.weight"])
