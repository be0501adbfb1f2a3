"""int8 speed mode (omni/quantize.py): the engine chosen by timing, the same values either way, the fused gate/up
projection, and a whole request."""

import torch

import omni


def test_int8_speed_mode_runs(tiny_ckpt, tiny_model, media):
    m = omni.load_model(tiny_ckpt, device="cpu", quantize="int8")
    # the whole budget (int8 rounding differs between CPUs' engines; random weights may end an answer early)
    r = m.generate("A1A2", audio=media["speech16k"], options=omni.DecodingOptions(max_new_tokens=10, ignore_stop=True))
    assert len(r.text_ids) == 10 and len(r.audio) == 3 * 2048
    # the int8 head slices (quantised from views of the shared matrix) approximate the fp32 heads
    h = torch.randn(2, m.cfg.n_embd, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        for head in ("text_logits", "audio_logits"):
            got, want = getattr(m.lm, head)(h).flatten(), getattr(tiny_model.lm, head)(h).flatten()
            assert got.shape == want.shape and torch.corrcoef(torch.stack([got, want]))[0, 1] > 0.99


def test_int8_parts_are_packed_for_the_engine_timed_fastest(monkeypatch, virtual_clock):
    """fastest_engine times each quantised engine's packing of one matmul and keeps the quickest, but another
    engine must be clearly faster (15 %) to replace "x86", whose packing takes half the memory. Timed on a virtual
    clock that each packed layer's call advances by its engine's cost."""
    from omni import quantize

    assert len(quantize.engines()) >= 2  # the pinned CPU torch ships x86 (fbgemm) and oneDNN
    first, other = quantize.engines()[:2]
    real, cost = quantize._dynamic, {}

    def packed_with_cost(module, engine=None):
        out = real(module, engine)
        forward = out.forward
        out.forward = lambda x: (virtual_clock.advance(cost[engine]), forward(x))[1]
        return out
    monkeypatch.setattr(quantize, "_dynamic", packed_with_cost)
    monkeypatch.setattr(quantize, "best_ms", virtual_clock.best_ms)
    for first_ms, other_ms, want in ((10.0, 1.0, other), (1.0, 0.8, other),  # 20 % faster
                                     (1.0, 0.9, first),  # 10 % faster: not enough
                                     (0.9, 1.0, first)):
        cost.update({first: first_ms, other: other_ms})
        assert quantize.fastest_engine(8, 32, 16, reps=2) == want, (first_ms, other_ms)


@torch.inference_mode()
def test_int8_packings_give_the_same_values():
    """The engine choice is speed only: x86/fbgemm and oneDNN packings of one weight compute the same."""
    import copy

    from omni import quantize

    torch.manual_seed(0)
    lin, x = torch.nn.Linear(48, 40), torch.randn(30, 48)
    outs = [quantize._dynamic(torch.nn.Sequential(copy.deepcopy(lin)), e)(x) for e in quantize.engines()]
    assert all(torch.allclose(o, outs[0], atol=1e-5) for o in outs)
    assert torch.allclose(outs[0], lin(x), atol=0.05)  # and approximate the float layer


def test_int8_load_reports_its_engines(tiny_ckpt):
    m = omni.load_model(tiny_ckpt, device="cpu", quantize="int8")
    assert set(m.int8_engines) == {"lm", "whisper"}
    from omni import quantize
    assert set(m.int8_engines.values()) <= set(quantize.engines())


@torch.inference_mode()
def test_int8_fuses_each_blocks_gate_and_up_projection(tiny_ckpt, tiny_model):
    """int8 decodes with one [fc_1; fc_2] layer per block, quantised per output channel: close to the fp32 MLP."""
    m = omni.load_model(tiny_ckpt, device="cpu", quantize="int8")
    x = torch.randn(2, 1, m.cfg.n_embd, generator=torch.Generator().manual_seed(0))
    for ours, ref in zip(m.lm.transformer.h, tiny_model.lm.transformer.h):
        assert ours.mlp.gate_up is not None and not hasattr(ours.mlp, "fc_1") and not hasattr(ours.mlp, "fc_2")
        got, want = ours.mlp(x).flatten(), ref.mlp(x).flatten()
        assert torch.corrcoef(torch.stack([got, want]))[0, 1] > 0.99
    assert m.lm.whisper_adapter.gate_up is None  # the adapters run once a request: left as they were
