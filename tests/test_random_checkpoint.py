"""Random checkpoints (omni/random_checkpoint.py): the official layout, and benchmark checkpoints' stop rows."""

import torch
import yaml


def test_tiny_checkpoint_has_the_official_layout(tiny_ckpt):
    for f in ("lit_model.pth", "model_config.yaml", "tokenizer.json", "small.pt", "ViT-B-32.pt",
              "snac_24khz/config.json", "snac_24khz/pytorch_model.bin"):
        assert (tiny_ckpt / f).is_file()
    sd = torch.load(tiny_ckpt / "lit_model.pth", weights_only=True)
    assert "lm_head.weight" in sd and "transformer.wte.weight" in sd and "vision_adapter.fc_1.weight" in sd
    assert "attn.attn.bias" in " ".join(sd)
    cfg = yaml.safe_load((tiny_ckpt / "model_config.yaml").read_text())
    assert cfg["padded_vocab_size"] == 181120 and cfg["tie_word_embeddings"] is True
    archive = torch.jit.load(str(tiny_ckpt / "ViT-B-32.pt"))  # a TorchScript archive, as OpenAI ships it
    assert "visual.proj" in archive.state_dict() and "text_projection" in archive.state_dict()
    small = torch.load(tiny_ckpt / "small.pt", weights_only=True)
    assert small["model_state_dict"]["encoder.conv1.weight"].dtype == torch.float16  # as the official file


def test_benchmark_checkpoints_leave_the_stop_rows_alone(tmp_path):
    """Test checkpoints boost the eot/eoa embedding rows (random answers end now and then); benchmark ones
    (--full-size) do not, so the official code, which cannot go on past an eoa, times a long answer too."""
    from omni.config import ModelConfig, Vocab
    from omni.random_checkpoint import TINY_LM, model_config, write_lm

    cfg = model_config(TINY_LM, 64, 32)
    rows = {}
    for boost in (True, False):
        write_lm(tmp_path / f"{boost}.pth", cfg, torch.Generator().manual_seed(0), boost_stops=boost)
        rows[boost] = torch.load(tmp_path / f"{boost}.pth", weights_only=True)["transformer.wte.weight"]
    v = Vocab.of(ModelConfig.from_dict(cfg))
    stops = [v.eot] + [v.layershift(v.eoa, j) for j in range(7)]
    assert torch.equal(rows[True][stops], 2 * rows[False][stops])
    others = torch.ones(rows[True].shape[0], dtype=torch.bool)
    others[stops] = False
    assert torch.equal(rows[True][others], rows[False][others])
