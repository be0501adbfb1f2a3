"""The differentiable forward of training: the model's own modules and weights, plain F.linear (the inference fast
paths in omni/linear.py have no backward) and one causal pass over whole sequences (no KV cache)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..model import OmniLM, split_heads
from .sequence import IGNORE, Example


def swiglu(m, x: torch.Tensor) -> torch.Tensor:
    return F.linear(F.silu(F.linear(x, m.fc_1.weight)) * F.linear(x, m.fc_2.weight), m.proj.weight)


def embed(lm: OmniLM, ex: Example) -> torch.Tensor:
    """ids [R, 8, L] -> [R, L, D]: as OmniLM.embed, the adapted features replacing the audio rows at their slots."""
    emb = lm.transformer.wte(ex.ids)
    for feats, slots, adapter in ((ex.audio_features, ex.audio_slots, lm.whisper_adapter),
                                  (ex.image_features, ex.image_slots, lm.vision_adapter)):
        if feats is None or slots is None:
            continue
        first, count = slots
        emb[:, :7, first:first + count] = swiglu(adapter, feats[:count].to(emb.dtype))
    return emb.sum(dim=1) / ex.ids.shape[1]


def block_forward(block, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    c, a = block.attn.cfg, block.attn
    B, L, _ = x.shape
    qkv = F.linear(block.norm_1(x), a.attn.weight, a.attn.bias).view(B, L, c.n_query_groups, c.q_per_kv + 2,
                                                                     c.head_size)
    q, k, v = split_heads(qkv, cos, sin, c)
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    x = x + F.linear(y.transpose(1, 2).reshape(B, L, -1), a.proj.weight)
    return x + swiglu(block.mlp, block.norm_2(x))


def hidden_states(lm: OmniLM, x: torch.Tensor, grad_checkpointing: bool = False) -> torch.Tensor:
    """x [B, L, D] from position 0 -> final-norm hidden states [B, L, D] (right padding does not reach earlier
    positions: the pass is causal)."""
    L = x.shape[1]
    cos, sin = lm.rope(x.device)
    cos, sin = cos[:L].to(x.dtype), sin[:L].to(x.dtype)
    for block in lm.transformer.h:
        if grad_checkpointing and torch.is_grad_enabled():
            x = checkpoint(block_forward, block, x, cos, sin, use_reentrant=False)
        else:
            x = block_forward(block, x, cos, sin)
    return lm.transformer.ln_f(x)


def batch_loss(lm: OmniLM, examples: list[Example], grad_checkpointing: bool = False,
               status_tokens: tuple[int, int] | None = None) -> tuple[torch.Tensor, dict]:
    """Mean cross-entropy of the text head over its target positions plus that of the 7 audio heads over theirs.
    Logits are computed only where a head has a target (the text head is 152k wide). With `status_tokens`
    (irq, n_irq) the text head chooses between those two rows only, as the listener reads it (omni/listen.py)."""
    rows = [embed(lm, ex) for ex in examples]
    L = max(r.shape[1] for r in rows)
    x = torch.cat([F.pad(r, (0, 0, 0, L - r.shape[1])) for r in rows])
    text_t = torch.cat([F.pad(ex.text_targets, (0, L - ex.length), value=IGNORE) for ex in examples])
    audio_t = torch.cat([F.pad(ex.audio_targets, (0, L - ex.length), value=IGNORE) for ex in examples])
    h = hidden_states(lm, x, grad_checkpointing)
    cfg, w = lm.cfg, lm.lm_head.weight
    text_at = text_t != IGNORE
    if status_tokens is not None:
        rows, targets = w[list(status_tokens)], (text_t[text_at] == status_tokens[1]).long()  # irq 0, n-irq 1
    else:
        rows, targets = w[: cfg.text_vocab_size], text_t[text_at]
    loss = text_loss = F.cross_entropy(F.linear(h[text_at], rows).float(), targets)
    parts = {"text_loss": float(text_loss.detach())}
    audio_at = (audio_t != IGNORE).any(dim=1)
    if bool(audio_at.any()):
        logits = F.linear(h[audio_at], w[cfg.text_vocab_size:]).float().view(-1, cfg.audio_vocab_size)
        audio_loss = F.cross_entropy(logits, audio_t.transpose(1, 2)[audio_at].reshape(-1), ignore_index=IGNORE)
        loss = loss + audio_loss
        parts["audio_loss"] = float(audio_loss.detach())
    return loss, parts
