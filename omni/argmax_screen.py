"""Exact greedy argmax over a big fp32 head that reads an int8 copy of it (CPU decoding, fp32 parity mode).

A CPU decode step is bound by memory bandwidth, and the head is a quarter of what a fp32 step reads (the text
slice alone is 152k x 896 fp32, 0.55 GB). Greedy decoding needs only the argmax of the scores, so the head is
first run from an int8 copy (a quarter of the bytes) and every approximate score gets a rigorous error bound:

    |w_i . x - a_i| <= ||w_i - w^_i|| ||x||  +  ||w^_i|| ||r||  +  1e-4 ||w_i|| ||x||

where w^_i is row i as quantised (its error norm is measured once), x is quantised in two 7-bit
passes (x ~ s1 q1 + s2 q2, r the exact remainder, computed per call), and the last term covers the fp32 rounding
of the approximate scores, with room to spare. A row can hold the argmax only if its upper bound reaches the best
lower bound; those few rows are scored again from the fp32 weights by `float64_scores`, and the argmax of these
scores is the token, the first index on equal scores (as torch.argmax).

What holds: the token is the argmax of `float64_scores` over the whole head, on every CPU. Those scores are the
exact dot products of the fp32 values to ~1e-15 relative and do not depend on the CPU, its kernels or which rows
are scored together, so identical rows always tie and the first of them wins. The full fp32 head (ours, or the
official code's) gives the same token unless its top two scores lie within its own fp32 rounding (~1e-6 relative
at this width) of each other; there every fp32 kernel decides by its rounding. (Re-scoring the candidates with a
fp32 matmul did not: on a Xeon with AMX the product of a few rows rounded three identical rows differently, and
the last of them won.) If the screen lets too many rows through (an odd activation), the whole fp32 head runs and
the rows within its rounding bound of the best are re-scored the same way; a non-finite activation takes the fp32
head's argmax as it is.

The int8 products are exact: oneDNN's u8 x s8 matmul accumulates in int32, and 7-bit activations (1..127 with
zero point 64) keep even the pairwise int16 sums of CPUs without VNNI from saturating (2 x 127 x 127 < 2^15).
"""

from __future__ import annotations

import torch

from .linear import fast_linear

_ZERO_POINT = 64  # activations: q in [-63, 63] stored as q + 64 in uint8
_Q_ACT = 63
_Q_WEIGHT = 127
_WIDEN = 1 + 1e-3
_MARGIN = 1e-4  # relative to ||w_i|| ||x||: fp32 rounding of the scaled products (far less), and of a fp32 head
# The build's chunks: each temporary stays under the 1 MiB mmap threshold the loader sets, so it reuses the heap
# instead of faulting in fresh pages (8192-row chunks of the full-size head, 29 MB each: 3.9 s at load; 512 KiB
# ones, 146 rows: 0.5-1.0 s; the same values)
_CHUNK_BYTES = 512 << 10


def float64_scores(rows: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """rows [n, D] @ x [D] in float64, the same bits on every CPU whichever rows are scored together.

    Each product of two fp32 values is exact in float64 (24 + 24 significant bits <= 53), and the D products are
    added in a fixed pairwise order by elementwise additions, each rounded as IEEE 754 prescribes: no matmul
    kernel, whose summation order may depend on the CPU and the shape, is involved. The error is at most
    (log2 D + 1) * 2^-53 of the sum of |products|."""
    n, d = rows.shape
    width = 1 << (d - 1).bit_length()  # D padded with zeros to a power of 2
    chunk = max(1, _CHUNK_BYTES // (8 * width))
    x64 = x.reshape(-1).double()
    out = torch.empty(n, dtype=torch.float64)
    for a in range(0, n, chunk):
        p = torch.nn.functional.pad(rows[a:a + chunk].double() * x64, (0, width - d))
        while p.shape[1] > 1:
            half = p.shape[1] // 2
            p = p[:, :half] + p[:, half:]
        out[a:a + chunk] = p[:, 0]
    return out


def _onednn_ops():
    ops = getattr(torch.ops, "onednn", None)
    try:
        return ops.qlinear_prepack, ops.qlinear_pointwise
    except (AttributeError, RuntimeError):
        return None


class ScreenedArgmax:
    """argmax of `weight @ x` within each of `groups` equal, consecutive slices of the rows; `weight` [N, D] is
    fp32 and stays the caller's (a view of the shared embedding matrix here: no fp32 copy is made)."""

    def __init__(self, weight: torch.Tensor, groups: int = 1, chunk: int | None = None):
        ops = _onednn_ops()
        if ops is None:
            raise RuntimeError("this torch build has no oneDNN quantised linear (torch.ops.onednn.qlinear_*)")
        self._prepack, self._matmul = ops
        n, d = weight.shape
        if n % groups:
            raise ValueError(f"{n} rows do not split into {groups} equal groups")
        self.weight, self.groups, self.group_size = weight, groups, n // groups
        q = torch.empty(n, d, dtype=torch.int8)
        self.scale = torch.empty(n)
        self.quant_norm = torch.empty(n)  # ||w^_i||
        self.weight_slack = torch.empty(n)  # ||w_i - w^_i|| + margin ||w_i||
        self.row_norm = torch.empty(n)  # ||w_i||: with ||x||, bounds a fp32 head's rounding (the fallback)
        chunk = chunk or max(1, _CHUNK_BYTES // (4 * d))  # rows at a time: no full-size temporary
        for a in range(0, n, chunk):
            w = weight[a:a + chunk].float()  # a view for fp32 weights: never written
            s = w.abs().amax(1) / _Q_WEIGHT
            s = torch.where(s > 0, s, torch.ones_like(s))
            qi = torch.round(w / s[:, None]).clamp_(-_Q_WEIGHT, _Q_WEIGHT)
            deq = qi * s[:, None]
            q[a:a + chunk] = qi.to(torch.int8)
            self.scale[a:a + chunk] = s
            # fp32 norms, widened by 0.1 %: far more than their rounding (~1e-5 relative)
            self.quant_norm[a:a + chunk] = deq.norm(dim=1) * _WIDEN
            self.row_norm[a:a + chunk] = w.norm(dim=1) * _WIDEN
            self.weight_slack[a:a + chunk] = (w - deq).norm(dim=1) * _WIDEN + _MARGIN * w.norm(dim=1)
        self.packed = self._prepack(q, [2, d])
        del q
        self._zero_points = torch.zeros(n, dtype=torch.int64)
        self._scores = torch.empty(groups, self.group_size, dtype=torch.float64)
        # any order of D fp32 additions and products is within D * 2^-24 of sum |w_ij x_j| <= ||w_i|| ||x||
        self._fp32_rounding = max(_MARGIN, 2 * d * 2.0 ** -24)
        self.calls = self.candidates = self.fallbacks = 0  # statistics for the bench
        self.max_candidates = max(64, n // 16)

    def approximate(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [D] fp32 -> (approximate scores a [N], error bounds b [N]) with |weight @ x - a| <= b."""
        x64 = x.double()
        s1 = float(x64.abs().max()) / _Q_ACT or 1.0
        q1 = torch.round(x64 / s1).clamp_(-_Q_ACT, _Q_ACT)
        r1 = x64 - q1 * s1
        s2 = float(r1.abs().max()) / _Q_ACT or 1.0
        q2 = torch.round(r1 / s2).clamp_(-_Q_ACT, _Q_ACT)
        rest = (r1 - q2 * s2).norm() * (1 + 1e-6)
        acts = (torch.stack([q1, q2]) + _ZERO_POINT).to(torch.uint8)
        # x_scale 1: out[k, i] = scale_i * (q_k . q_i), exact int32 sums, scaled in fp32
        out = self._matmul(acts, 1.0, _ZERO_POINT, self.packed, self.scale, self._zero_points, None, 1.0, 0,
                           torch.float32, "none", [], "")
        a = out[0].mul_(s1).add_(out[1], alpha=s2)
        b = self.weight_slack * float(x64.norm() * (1 + 1e-6))
        b.add_(self.quant_norm, alpha=float(rest))
        return a, b

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x [D] or [1, D] fp32 -> the argmax index within each group, LongTensor [groups]."""
        x = x.reshape(-1)
        self.calls += 1
        if not bool(torch.isfinite(x).all()):  # no bound holds: let the fp32 head decide, as it would
            return fast_linear(x[None], self.weight)[0].view(self.groups, -1).argmax(dim=1)
        rows = self._candidates(*self.approximate(x))
        if rows.numel() > self.max_candidates:
            self.fallbacks += 1
            scores = fast_linear(x[None], self.weight)[0]  # the whole fp32 head, within its rounding bound
            rows = self._candidates(scores, self.row_norm * (self._fp32_rounding * float(x.double().norm())))
        else:
            self.candidates += rows.numel()
        best = self._scores.fill_(float("-inf"))
        best.view(-1)[rows] = float64_scores(self.weight.index_select(0, rows), x)
        return best.argmax(dim=1)

    def _candidates(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Rows whose score can be their group's largest, given scores a +- b: ascending indices."""
        lower = (a - b).view(self.groups, -1).amax(dim=1, keepdim=True)
        keep = (a + b).view(self.groups, -1) >= lower
        return keep.view(-1).nonzero().squeeze(1)

    def stats(self) -> dict:
        return {"calls": self.calls, "mean_candidates": round(self.candidates / max(1, self.calls - self.fallbacks), 1),
                "fallbacks": self.fallbacks}


def screens_work() -> bool:
    """Whether this torch build has the oneDNN ops and they compute what this module assumes (~1 ms)."""
    if _onednn_ops() is None:
        return False
    g = torch.Generator().manual_seed(0)
    w = torch.randn(96, 64, generator=g)
    try:
        screen = ScreenedArgmax(w, groups=3)
        for _ in range(4):
            x = torch.randn(64, generator=g)
            a, b = screen.approximate(x)
            exact = float64_scores(w, x)
            if not bool(((exact - a).abs() <= b).all()) or not torch.equal(
                    screen(x), exact.view(3, -1).argmax(dim=1)):
                return False
    except (RuntimeError, TypeError):
        return False
    return True
