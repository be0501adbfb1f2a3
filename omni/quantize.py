"""int8 dynamic quantisation (CPU speed mode): a transform over a loaded model, not a flag inside it.

Each part is packed for the quantised engine that runs its usual shape fastest on this CPU, timed once at load:
packed weights keep their engine's kernel whatever engine is current later. On a 2-core Intel Xeon with AMX
(torch 2.13): oneDNN's packing runs Whisper's 1500-row matmuls 2-3x faster than fbgemm's ("x86"), while "x86"
runs the 2-row decoding matmuls 1.7x faster than oneDNN. Both give the same values (the same int8 rounding).
"""

from __future__ import annotations

import contextlib
import warnings

import torch
import torch.nn as nn

from .linear import best_ms


def _linear_over(weight: torch.Tensor, bias: torch.Tensor | None = None) -> nn.Linear:
    """A plain nn.Linear whose parameters are these tensors (no copy, no random init)."""
    out = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    out.weight = nn.Parameter(weight, requires_grad=False)
    if bias is not None:
        out.bias = nn.Parameter(bias, requires_grad=False)
    return out


def _plain_linear(mod: nn.Linear) -> nn.Linear:
    # .float() shares the tensor when it is already fp32
    return _linear_over(mod.weight.detach().float(), None if mod.bias is None else mod.bias.detach().float())


def _swap_subclassed_linears(root: nn.Module) -> None:
    """quantize_dynamic matches exact types; Linear subclasses (ours, whisper's) would be skipped."""
    for name, child in list(root.named_children()):
        if isinstance(child, nn.Linear) and type(child) is not nn.Linear:
            setattr(root, name, _plain_linear(child))
        else:
            _swap_subclassed_linears(child)


@contextlib.contextmanager
def _engine(name: str | None):
    before = torch.backends.quantized.engine
    if name is not None:
        torch.backends.quantized.engine = name
    try:
        yield
    finally:
        torch.backends.quantized.engine = before


def _dynamic(module: nn.Module, engine: str | None = None, per_channel: bool = False) -> nn.Module:
    """quantize_dynamic in place, packed for `engine` (default: the current one); weights per tensor or per
    output channel."""
    from torch.ao.quantization import per_channel_dynamic_qconfig

    spec = {nn.Linear: per_channel_dynamic_qconfig} if per_channel else {nn.Linear}
    with warnings.catch_warnings(), _engine(engine):
        warnings.simplefilter("ignore")  # quantize_dynamic's deprecation notice
        return torch.ao.quantization.quantize_dynamic(module, spec, dtype=torch.qint8, inplace=True)


def _fuse_gate_up(mlp: nn.Module, engine: str | None) -> None:
    """Replace a SwiGLU's fc_1 and fc_2 by one int8 layer over both weights ([gate; up]): one call and one
    activation quantisation instead of two (a 2-row int8 decoding step ~4 ms faster on 2 cores). Its weights
    are quantised per output channel, so each half keeps a scale of its own (no coarser than before)."""
    w = torch.cat([mlp.fc_1.weight.detach().float(), mlp.fc_2.weight.detach().float()])
    del mlp.fc_1, mlp.fc_2  # the fp32 originals go once packed
    mlp.gate_up = _dynamic(nn.Sequential(_linear_over(w)), engine, per_channel=True)[0]


def engines() -> list[str]:
    """The quantised engines worth timing here ("x86" is fbgemm with oneDNN for some shapes)."""
    have = torch.backends.quantized.supported_engines
    return [e for e in ("x86", "onednn", "fbgemm") if e in have][:2] or [torch.backends.quantized.engine]


def fastest_engine(rows: int, out_features: int, in_features: int, reps: int = 3, margin: float = 0.15) -> str:
    """The engine whose packed int8 matmul of [rows, in] x [in, out] ran fastest (best of `reps`). The first of
    `engines()` ("x86") is kept unless another is at least `margin` faster: oneDNN's packing keeps a second copy
    of the int8 weights (+325 MB for the full-size LM), and on this 2-core Zen 5 a near-tie in the timing picked
    it for the LM although its decode steps ran slower (29 against 23 ms, bench)."""
    candidates = engines()
    if len(candidates) == 1:
        return candidates[0]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(rows, in_features, generator=g)
    times = {}
    with torch.inference_mode():
        for name in candidates:
            lin = nn.Linear(in_features, out_features, bias=False)
            packed = _dynamic(nn.Sequential(lin), name)
            packed(x)  # first call sets up the kernel
            times[name] = best_ms(lambda: packed(x), reps)
    best = min(times, key=times.get)
    return best if times[best] < (1 - margin) * times[candidates[0]] else candidates[0]


def quantize_int8(parts) -> dict[str, str]:
    """Quantise the LM body, adapters, both head slices and the Whisper encoder's linear layers of the loaded
    `parts` (omni/loading.py) to int8. Returns the engine each part was packed for: {"lm": ..., "whisper": ...}."""
    lm = parts.lm
    cfg = lm.cfg
    # the LM's time is in decoding (2 rows); Whisper always runs its whole 30 s window
    chosen = {"lm": fastest_engine(2, cfg.intermediate_size, cfg.n_embd),
              "whisper": fastest_engine(parts.whisper_dims.n_audio_ctx, 4 * parts.whisper_dims.n_audio_state,
                                        parts.whisper_dims.n_audio_state)}
    text = cfg.text_vocab_size
    w = lm.lm_head.weight.detach()
    # views of the shared matrix (row slices are contiguous): no fp32 copy next to the loaded weights
    heads = nn.ModuleList([_linear_over(w[:text]), _linear_over(w[text:])])
    lm.split_heads = _dynamic(heads, chosen["lm"])
    for block in lm.transformer.h:  # decoding runs these every step
        _fuse_gate_up(block.mlp, chosen["lm"])
    for part in (lm.transformer.h, lm.whisper_adapter, lm.vision_adapter):
        _swap_subclassed_linears(part)
        _dynamic(part, chosen["lm"])
    _swap_subclassed_linears(parts.whisper)
    _dynamic(parts.whisper, chosen["whisper"])
    return chosen
