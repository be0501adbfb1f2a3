"""What lets the official inference code load a checkpoint our training wrote. Its loader builds LitGPT's `Config`
from model_config.yaml's keys (no others accepted) and calls `load_state_dict(strict=True)` on lit_model.pth. The
official code was run on the demo's outputs and gave our tokens (docs/training.md, "The official code"); CI has no
official code, so this guards the property that run relied on, on every stage the demo writes."""

from __future__ import annotations

import json

import torch
import yaml

from omni.train import demo as demo_module


def test_every_stage_keeps_the_init_s_weight_keys_and_only_the_irq_stage_adds_config_keys(tmp_path, run_cli,
                                                                                          monkeypatch):
    monkeypatch.setattr(demo_module, "DEMO_PLAN", tuple((s, {**p, "steps": 2}) for s, p in demo_module.DEMO_PLAN))
    monkeypatch.setattr(demo_module, "DEMO_SIZE", (2, 1, 3, 3))
    rc, _out, err = run_cli("train", "--demo", "--out", tmp_path, "--threads", 1)
    assert rc == 0, err
    assert set(json.loads((tmp_path / "train_summary.json").read_text())["stages"]) == {"1", "2", "3", "irq"}

    init_cfg = (tmp_path / "init" / "model_config.yaml").read_bytes()
    init = torch.load(tmp_path / "init" / "lit_model.pth", weights_only=True)
    previous = init
    for stage in ("1", "2", "3", "irq"):
        out = tmp_path / f"stage{stage}"
        sd = torch.load(out / "lit_model.pth", weights_only=True)
        # strict=True in the official loader: the same keys, and each tensor the init's shape and dtype (fp32)
        assert set(sd) == set(init), stage
        for k, v in init.items():
            assert (sd[k].shape, sd[k].dtype) == (v.shape, v.dtype), (stage, k)
        assert any(not torch.equal(sd[k], previous[k]) for k in sd), f"stage {stage} changed no weight"
        previous = sd
        cfg = (out / "model_config.yaml").read_bytes()
        if stage != "irq":
            assert cfg == init_cfg, stage
        else:
            # two keys the official Config rejects; without them it is the init's config (the documented workaround)
            raw = yaml.safe_load(cfg)
            assert set(raw) - set(yaml.safe_load(init_cfg)) == {"irq_token", "n_irq_token"}
            del raw["irq_token"], raw["n_irq_token"]
            assert raw == yaml.safe_load(init_cfg)
