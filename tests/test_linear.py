"""fast_linear's CPU fp32 kernels (omni/linear.py): the values of F.linear for every shape, column blocks, and the
decoding kernel chosen by timing."""

import pytest
import torch
import torch.nn.functional as F


@pytest.fixture(params=["W @ x^T", "F.linear"])
def small_rows_kernel(request):
    """Each decoding kernel in turn (the one in use is chosen by timing at load), restored afterwards."""
    from omni import linear

    before = linear.small_rows_kernel()
    linear.set_small_rows_kernel(request.param)
    yield request.param
    linear.set_small_rows_kernel(before)


@pytest.mark.parametrize("shape", [(1, 24), (2, 24), (2, 1, 24), (3, 24), (4, 1, 24), (5, 24), (3, 7, 24), (64, 24), (0, 24)])
@pytest.mark.parametrize("bias", [False, True])
def test_fast_linear_matches_f_linear(shape, bias, small_rows_kernel):
    from omni.linear import fast_linear

    g = torch.Generator().manual_seed(0)
    w, x = torch.randn(40, 24, generator=g), torch.randn(*shape, generator=g)
    b = torch.randn(40, generator=g) if bias else None
    got, want = fast_linear(x, w, b), F.linear(x, w, b)
    assert got.shape == want.shape and torch.allclose(got, want, atol=1e-5)
    assert torch.equal(fast_linear(x.double(), w.double(), None if b is None else b.double()),
                       F.linear(x.double(), w.double(), None if b is None else b.double()))  # other dtypes: F.linear


@pytest.mark.parametrize("shape", [(1, 48), (2, 48), (2, 1, 48), (4, 48), (5, 48), (3, 7, 48), (0, 48)])
@pytest.mark.parametrize("bias", [False, True])
def test_a_linear_split_into_column_blocks_computes_the_same(shape, bias, small_rows_kernel):
    from omni.linear import Linear

    torch.manual_seed(0)
    lin = Linear(48, 40, bias=bias)
    x = torch.randn(*shape)
    want = F.linear(x, lin.weight, lin.bias)
    lin.split_input(4)
    assert not hasattr(lin, "weight") and lin.blocks.shape == (4, 40, 12)  # no second copy of the weight
    got = lin(x)
    assert got.shape == want.shape and torch.allclose(got, want, atol=1e-5)


def test_the_decoding_kernel_is_chosen_by_timing_both(monkeypatch, virtual_clock):
    """choose_small_rows_kernel picks whichever of W @ x^T and F.linear ran faster (here one made slow on purpose,
    on a virtual clock that each call advances by its kernel's cost: the choice does not hang on this machine)."""
    from omni import linear

    before = linear.small_rows_kernel()
    real_mm, real_linear = torch.mm, F.linear
    cost = {}
    monkeypatch.setattr(linear, "best_ms", virtual_clock.best_ms)
    monkeypatch.setattr(torch, "mm", lambda *a: (virtual_clock.advance(cost["mm"]), real_mm(*a))[1])
    monkeypatch.setattr(linear.F, "linear", lambda *a: (virtual_clock.advance(cost["linear"]), real_linear(*a))[1])
    try:
        cost.update(mm=2.0, linear=0.1)
        assert linear.choose_small_rows_kernel(64, 32, reps=2) == linear.PLAIN == linear.small_rows_kernel()
        cost.update(mm=0.1, linear=2.0)
        assert linear.choose_small_rows_kernel(64, 32, reps=2) == linear.TRANSPOSED == linear.small_rows_kernel()
    finally:
        linear.set_small_rows_kernel(before)
    with pytest.raises(ValueError):
        linear.set_small_rows_kernel("cuBLAS")


@torch.inference_mode()
def test_split_projections_give_the_same_greedy_tokens(tiny_ckpt, media):
    """load_model splits long-input projections on CPU fp32 (the real model's 4864-wide MLP projections); the
    tiny model's are narrower, so split them here and check the tokens do not move."""
    import omni
    from omni.linear import Linear, split_long_inputs

    model = omni.load_model(tiny_ckpt, device="cpu")
    opts = omni.DecodingOptions(max_new_tokens=16)
    want = model.generate("A1A2", audio=media["speech16k"], options=opts)
    n = split_long_inputs(model.lm, min_in=1)
    assert n == sum(type(m) is Linear for m in model.lm.modules()) and n > 0
    got = model.generate("A1A2", audio=media["speech16k"], options=opts)
    assert got.text_ids == want.text_ids and got.audio_ids == want.audio_ids
