"""int8 dynamic quantisation (CPU speed mode): a transform over a loaded model, not a flag inside it."""

from __future__ import annotations

import warnings

import torch
import torch.nn as nn


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


def _dynamic(module: nn.Module) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # quantize_dynamic's deprecation notice
        return torch.ao.quantization.quantize_dynamic(module, {nn.Linear}, dtype=torch.qint8, inplace=True)


def quantize_int8(omni) -> None:
    """Quantise the LM body, adapters, both head slices and the Whisper encoder's linear layers to int8."""
    lm = omni.lm
    text = lm.cfg.text_vocab_size
    w = lm.lm_head.weight.detach()
    # views of the shared matrix (row slices are contiguous): no fp32 copy next to the loaded weights
    heads = nn.ModuleList([_linear_over(w[:text]), _linear_over(w[text:])])
    lm.split_heads = _dynamic(heads)
    for part in (lm.transformer.h, lm.whisper_adapter, lm.vision_adapter):
        _swap_subclassed_linears(part)
        _dynamic(part)
    _swap_subclassed_linears(omni.whisper)
    _dynamic(omni.whisper)
