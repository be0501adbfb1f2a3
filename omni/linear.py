"""F.linear with faster CPU fp32 kernels. Same values up to summation order; other devices and dtypes: F.linear.

Which kernel is fastest for decoding depends on the CPU, so `choose_small_rows_kernel` times the two
candidates once at load (torch 2.13, MKL + oneDNN, fp32, 2 cores, 2 rows x 896 -> 4864):
- 2-core AMD EPYC: MKL streams an [out, in] weight 3-5x faster through W @ x^T than through F.linear's
  x @ W^T (20-34 vs 6-10 GB/s), and two rows run faster than one, so a single row is doubled there. A long
  `in` (the MLP projection, 4864 -> 896) streams at only ~20 GB/s that way; stored as 4 contiguous
  [out, in/4] blocks and multiplied as a batch it reaches ~35 GB/s (`Linear.split_input`).
- 2-core Intel Xeon (Sapphire Rapids class): the opposite. F.linear streams a matrix held in its 300 MB L3 at
  36-48 GB/s, one row or two, long `in` too; W @ x^T gets 15-16 GB/s for two rows (a fp32 decode step, which
  streams 2.1 GB from memory at ~20 GB/s, took 222 instead of 116-130 ms with it).
- 5+ rows (prefill, Whisper, CLIP): oneDNN's matmul on the plain weight reaches 180-200 GFLOPS on both
  (MKL's sgemm: 130-160 on the EPYC, 170-205 on the Xeon).
"""

from __future__ import annotations

import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def _onednn_linear():
    op = getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None)
    if op is None or not torch.backends.mkldnn.is_available():
        return None
    try:  # a private op: check it exists and agrees with F.linear before relying on it
        x, w, b = torch.randn(5, 8), torch.randn(3, 8), torch.randn(3)
        if not torch.allclose(op(x, w, b, "none", [], ""), F.linear(x, w, b), atol=1e-5):
            return None
    except (RuntimeError, TypeError):
        return None
    return op


_ONEDNN = _onednn_linear()
_SMALL_ROWS = 4  # up to this many rows: the decoding kernel below
TRANSPOSED, PLAIN = "W @ x^T", "F.linear"
_small_rows_kernel = PLAIN  # until `choose_small_rows_kernel` has timed this CPU


def best_ms(fn, reps: int) -> float:
    """The fastest of `reps` calls of `fn`, in ms (the load-time kernel choices time their candidates with it)."""
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1000


def choose_small_rows_kernel(out_features: int = 4864, in_features: int = 896, reps: int = 7) -> str:
    """Time W @ x^T against F.linear for 2 rows on an [out, in] fp32 matrix (the model's MLP width by default)
    and use the faster for CPU fp32 matmuls of 1-4 rows from now on. Returns TRANSPOSED or PLAIN. ~20 ms.

    The two differ 2.5-5x in opposite directions on the CPUs measured (see the module note), so a few
    repetitions (best of each, interleaved) are enough to tell them apart on a busy machine.
    """
    global _small_rows_kernel
    g = torch.Generator().manual_seed(0)
    w, x = torch.randn(out_features, in_features, generator=g), torch.randn(2, in_features, generator=g)
    transposed = plain = float("inf")
    with torch.inference_mode():
        for _ in range(2 * reps):  # alternating, so a busy spell slows both alike
            transposed = min(transposed, best_ms(lambda: torch.mm(w, x.t()), 1))
            plain = min(plain, best_ms(lambda: F.linear(x, w), 1))
    _small_rows_kernel = TRANSPOSED if transposed < plain else PLAIN
    return _small_rows_kernel


def small_rows_kernel() -> str:
    return _small_rows_kernel


def set_small_rows_kernel(kernel: str) -> None:
    """Use this kernel for 1-4 rows (tests compare the two; `choose_small_rows_kernel` times them)."""
    global _small_rows_kernel
    if kernel not in (TRANSPOSED, PLAIN):
        raise ValueError(f"kernel must be {TRANSPOSED!r} or {PLAIN!r}")
    _small_rows_kernel = kernel


def fast_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear(x, weight, bias), faster for CPU fp32 (see the module note)."""
    if not (x.device.type == "cpu" and x.dtype == torch.float32 == weight.dtype and x.numel()):
        return F.linear(x, weight, bias)
    rows = x.numel() // x.shape[-1]
    if rows > _SMALL_ROWS:
        if _ONEDNN is None:
            return F.linear(x, weight, bias)
        return _ONEDNN(x.contiguous(), weight.contiguous(), bias, "none", [], "")
    if _small_rows_kernel == PLAIN:
        return F.linear(x, weight, bias)
    # the W @ x^T path needs x row-major (x^T as a transposed view); the copies are a few KB
    x2 = x.reshape(rows, x.shape[-1]).contiguous()
    if rows == 1:
        x2 = x2.expand(2, -1).contiguous()
    y = torch.mm(weight, x2.t())[:, :rows].t().contiguous()
    if bias is not None:
        y = y + bias
    return y.reshape(*x.shape[:-1], weight.shape[0])


def fast_linear_cast(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`fast_linear` in x's dtype: weights kept in another dtype (CLIP's and Whisper's fp16) are cast per call."""
    return fast_linear(x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype))


class Linear(nn.Linear):
    """nn.Linear (same parameters and state dict) computed through `fast_linear`, in the input's dtype.
    On CPU fp32, `split_input` may trade the weight for column blocks (then `blocks` is set, `weight` gone)."""

    blocks: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.blocks is not None:
            return blocked_linear(x, self.blocks, self.bias)
        return fast_linear_cast(x, self.weight, self.bias)

    def split_input(self, n_blocks: int = 4) -> None:
        """Keep the weight as `n_blocks` contiguous column blocks [n_blocks, out, in / n_blocks] instead (CPU
        fp32 only, same memory). The module then has no `weight`: call this after loading and quantising."""
        w = self.weight.detach()
        self.blocks = w.view(w.shape[0], n_blocks, -1).transpose(0, 1).contiguous()
        del self.weight


def blocked_linear(x: torch.Tensor, blocks: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear(x, W, bias) for W kept as column blocks [k, out, in / k] (see `Linear.split_input`)."""
    k, out, width = blocks.shape
    rows = x.numel() // x.shape[-1]
    xb = x.reshape(rows, k, width)
    if rows <= _SMALL_ROWS or _ONEDNN is None:
        y = torch.bmm(blocks, xb.permute(1, 2, 0)).sum(0).t()  # the k partial products, added
    else:
        y = _ONEDNN(xb[:, 0].contiguous(), blocks[0], None, "none", [], "")
        for j in range(1, k):
            y += _ONEDNN(xb[:, j].contiguous(), blocks[j], None, "none", [], "")
    if bias is not None:
        y = y + bias
    return y.reshape(*x.shape[:-1], out)


def split_long_inputs(model: nn.Module, min_in: int = 2048, n_blocks: int = 4) -> int:
    """`split_input` on every fp32 CPU `Linear` of `model` with at least `min_in` inputs; returns how many.
    Only worth it where W @ x^T is the decoding kernel (with F.linear the blocks would be slower)."""
    n = 0
    for m in model.modules():
        if type(m) is Linear and m.blocks is None and m.in_features >= min_in and m.in_features % n_blocks == 0 \
                and m.weight.device.type == "cpu" and m.weight.dtype == torch.float32:
            m.split_input(n_blocks)
            n += 1
    return n
