"""int8 dynamic quantisation (CPU speed mode): a transform over a loaded model, not a flag inside it."""

from __future__ import annotations

import warnings

import torch
import torch.nn as nn


def _plain_linear(mod: nn.Linear) -> nn.Linear:
    out = nn.Linear(mod.in_features, mod.out_features, bias=mod.bias is not None, device="meta")
    out.weight = nn.Parameter(mod.weight.detach().float(), requires_grad=False)  # shared when already fp32
    if mod.bias is not None:
        out.bias = nn.Parameter(mod.bias.detach().float(), requires_grad=False)
    return out


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
    heads = nn.ModuleList([nn.Linear(w.shape[1], text, bias=False, device="meta"),
                           nn.Linear(w.shape[1], w.shape[0] - text, bias=False, device="meta")])
    heads[0].weight = nn.Parameter(w[:text], requires_grad=False)
    heads[1].weight = nn.Parameter(w[text:], requires_grad=False)
    lm.split_heads = _dynamic(heads)
    for part in (lm.transformer.h, lm.whisper_adapter, lm.vision_adapter):
        _swap_subclassed_linears(part)
        _dynamic(part)
    _swap_subclassed_linears(omni.whisper)
    _dynamic(omni.whisper)
