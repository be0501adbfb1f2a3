"""The int8 screen of the greedy heads (omni/argmax_screen.py): its error bounds hold, and its argmax is the exact
one — for ordinary and outlier-heavy activations, near-ties, exact ties, groups, and the fallbacks — computed the
same way on every CPU, whichever rows are re-scored together."""

import math
from fractions import Fraction

import torch

import omni
from omni.argmax_screen import ScreenedArgmax, float64_scores, screens_work


def test_this_torch_has_the_ops_the_screen_needs():
    assert screens_work()  # the pinned CPU torch: oneDNN's quantised linear, exact int32 sums


def exact_scores(w, x):
    return (w.double() @ x.double().reshape(-1)).float()


def activations(g, d, n):
    """Gaussian, heavy-tailed, a few huge outlier dimensions (as LLM hidden states have), tiny, and sparse."""
    out = []
    for i in range(n):
        x = torch.randn(d, generator=g)
        kind = i % 5
        if kind == 1:
            x = x ** 3
        elif kind == 2:
            x[torch.randint(0, d, (3,), generator=g)] *= 200
        elif kind == 3:
            x *= 1e-6
        elif kind == 4:
            x[torch.rand(d, generator=g) < 0.9] = 0
        out.append(x)
    return out


def test_bounds_hold_and_argmax_is_the_fp32_one():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(4000, 96, generator=g) * torch.rand(4000, 1, generator=g)  # rows of different norms
    w[7] *= 50  # one outlier row
    screen = ScreenedArgmax(w)
    for x in activations(g, 96, 40):
        a, b = screen.approximate(x)
        exact = exact_scores(w, x)
        assert bool(((exact - a).abs() <= b).all())
        assert int(screen(x)[0]) == int(exact.argmax())
    assert screen.calls == 40
    # the screen lets few rows through: most of the head is never read in fp32
    assert screen.candidates / max(1, screen.calls - screen.fallbacks) < 400


def test_the_chunk_size_of_the_build_does_not_change_the_screen():
    g = torch.Generator().manual_seed(5)
    w = torch.randn(1000, 2048, generator=g) * torch.rand(1000, 1, generator=g)
    # the default chunks, 512 KiB: 64 rows of 2048 (15 chunks and a 40-row tail), against one chunk
    chunked, whole = ScreenedArgmax(w), ScreenedArgmax(w, chunk=1000)
    for name in ("scale", "quant_norm", "weight_slack"):
        assert torch.equal(getattr(chunked, name), getattr(whole, name)), name
    x = torch.randn(2048, generator=g)
    assert torch.equal(chunked.approximate(x)[0], whole.approximate(x)[0])


def test_groups_take_their_own_argmax():
    g = torch.Generator().manual_seed(2)
    w = torch.randn(7 * 300, 64, generator=g)
    screen = ScreenedArgmax(w, groups=7)
    for x in activations(g, 64, 20):
        assert torch.equal(screen(x), exact_scores(w, x).view(7, -1).argmax(dim=1))


def test_exact_ties_go_to_the_first_index_and_near_ties_are_resolved_exactly():
    """Row 1901 holds the argmax; copies of it at 1500 and 1700 must give 1500 on every CPU (re-scored by a fp32
    matmul of the candidate rows, a Xeon with AMX gave the three copies different scores and answered 1901)."""
    g = torch.Generator().manual_seed(3)
    w = torch.randn(2000, 64, generator=g)
    x = torch.randn(64, generator=g)
    top = w[int(exact_scores(w, x).argmax())].clone()
    w[1500] = top  # two exact copies: the first of them is the argmax
    w[1700] = top
    w[1800] = top * (1 - 1e-6)  # a near-tie far below the int8 resolution
    assert int(ScreenedArgmax(w)(x)[0]) == int(exact_scores(w, x).argmax()) == min(1500, int(exact_scores(w, x).argmax()))
    w[1200] = top * (1 + 1e-6)  # ... and one just above: it wins
    assert int(ScreenedArgmax(w)(x)[0]) == int(exact_scores(w, x).argmax()) == 1200


def test_ties_do_not_hang_on_how_a_matmul_rounds_each_row(monkeypatch):
    """A fp32 matmul may round a row by its place in the product (this EPYC's gave two identical rows of a 3-row
    product scores 1 ulp apart, the first higher; the Xeon's, the last): here one that rounds later rows up, by up
    to 16 ulps. The screen's choice must not move with it, on either path (screened, and the whole-head fallback,
    whose bounds allow for any fp32 rounding)."""
    from omni import argmax_screen

    real = argmax_screen.fast_linear

    def rounds_by_place(x, w, bias=None):
        y = real(x, w, bias)
        return y * (1 + 16 * 2.0 ** -24 * torch.arange(y.shape[-1]) / y.shape[-1])

    monkeypatch.setattr(argmax_screen, "fast_linear", rounds_by_place)
    g = torch.Generator().manual_seed(3)
    w = torch.randn(2000, 64, generator=g)
    x = torch.randn(64, generator=g)
    top = int(exact_scores(w, x).argmax())
    w[top // 2] = w[top]  # an exact copy before the argmax: it is the first index of the maximum
    assert int(ScreenedArgmax(w)(x)[0]) == top // 2
    crowded = w[0] + 1e-4 * torch.randn(3000, 64, generator=g)  # too many candidates: the whole head runs
    best = int(exact_scores(crowded, x).argmax())
    crowded[best // 2] = crowded[best]
    screen = ScreenedArgmax(crowded)
    assert int(screen(x)[0]) == best // 2 and screen.fallbacks == 1


def test_float64_scores_are_the_same_bits_for_any_rows_on_any_cpu():
    """Identical rows score identically wherever they sit, a row's score does not depend on the rows scored with
    it (chunks included), and each is the pairwise sum that plain IEEE 754 double arithmetic gives (Python floats):
    no CPU-dependent kernel is involved."""
    g = torch.Generator().manual_seed(8)
    w = torch.randn(300, 896, generator=g) * torch.rand(300, 1, generator=g)
    w[250] = w[3]
    x = torch.randn(896, generator=g)
    whole = float64_scores(w, x)
    assert whole[250] == whole[3]
    for rows in ([250], [3, 250], list(range(0, 300, 7)), list(range(299, -1, -1))):
        assert torch.equal(float64_scores(w[rows], x), whole[rows])

    def pairwise(values):  # the documented order: zero-padded to a power of 2, halves added elementwise
        values = values + [0.0] * ((1 << (len(values) - 1).bit_length()) - len(values))
        while len(values) > 1:
            half = len(values) // 2
            values = [a + b for a, b in zip(values[:half], values[half:])]
        return values[0]
    xs = x.tolist()
    for i in (0, 3, 299):
        assert float(whole[i]) == pairwise([a * b for a, b in zip(w[i].tolist(), xs)])


def test_float64_scores_are_within_their_bound_of_the_exact_dot_product():
    g = torch.Generator().manual_seed(9)
    w, x = torch.randn(20, 896, generator=g) ** 3, torch.randn(896, generator=g) ** 3  # heavy-tailed
    got = float64_scores(w, x)
    xs = [Fraction(v) for v in x.tolist()]
    for i in range(20):
        products = [Fraction(a) * b for a, b in zip(w[i].tolist(), xs)]  # exact rational arithmetic
        bound = (math.log2(1024) + 1) * 2.0 ** -53 * float(sum(abs(p) for p in products))
        assert abs(Fraction(float(got[i])) - sum(products)) <= Fraction(bound)


def test_too_many_candidates_fall_back_to_the_whole_head():
    g = torch.Generator().manual_seed(4)
    base = torch.randn(1, 64, generator=g)
    w = base + 1e-4 * torch.randn(3000, 64, generator=g)  # every row within the int8 error of every other
    screen = ScreenedArgmax(w)
    x = torch.randn(64, generator=g)
    assert int(screen(x)[0]) == int(exact_scores(w, x).argmax())
    assert screen.fallbacks == 1


def test_non_finite_activations_use_the_whole_head():
    w = torch.randn(500, 32, generator=torch.Generator().manual_seed(5))
    x = torch.ones(32)
    x[3] = float("inf")
    screen = ScreenedArgmax(w)
    assert int(screen(x)[0]) == int((w @ x).argmax())


def test_the_weights_are_not_copied_or_changed():
    w = torch.randn(1000, 32, generator=torch.Generator().manual_seed(6))
    before = w.clone()
    screen = ScreenedArgmax(w[100:900])
    assert screen.weight.data_ptr() == w[100].data_ptr() and torch.equal(w, before)


def test_loaded_model_screens_its_heads_and_decodes_the_same_tokens(tiny_model, media):
    lm = tiny_model.lm
    assert lm.screens is not None  # CPU fp32: on by default
    opts = omni.DecodingOptions(max_new_tokens=24)
    screened = tiny_model.generate("A1A2", audio=media["speech16k"], options=opts)
    calls = lm.screens[0].calls
    saved, lm.screens = lm.screens, None
    try:
        full = tiny_model.generate("A1A2", audio=media["speech16k"], options=opts)
    finally:
        lm.screens = saved
    assert calls >= 1 and screened.text_ids == full.text_ids and screened.audio_ids == full.audio_ids
    h = torch.randn(1, tiny_model.cfg.n_embd, generator=torch.Generator().manual_seed(7))
    with torch.inference_mode():
        assert torch.equal(lm.text_argmax(h), lm.text_logits(h).argmax(-1))
        assert torch.equal(lm.audio_argmax(h), lm.audio_logits(h).argmax(-1))


def test_speed_modes_do_not_screen(tiny_ckpt):
    m = omni.load_model(tiny_ckpt, device="cpu", quantize="int8")
    assert m.lm.screens is None and m.lm.split_heads is not None
