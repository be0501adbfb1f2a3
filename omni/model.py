"""The Mini-Omni2 language model: a Qwen2 body (LitGPT parameter names), input adapters, one sliced head.

Parameter names follow the official `lit_model.pth` so its state dict loads as is. The KV cache keeps the
n_query_groups key/value heads (not the expanded n_head copies) and is sized to the request, not to block_size.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ModelConfig
from .linear import Linear, fast_linear


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return (x * self.weight.float()).to(dtype)


class SwiGLU(nn.Module):
    """LitGPT's LLaMAMLP (also the whisper/vision adapters): proj(silu(fc_1 x) * fc_2 x).

    A speed mode may replace fc_1 and fc_2 by one module computing both (`gate_up`: [fc_1 x, fc_2 x])."""

    def __init__(self, d_in: int, d_hidden: int, d_out: int):
        super().__init__()
        self.gate_up: nn.Module | None = None
        self.fc_1 = Linear(d_in, d_hidden, bias=False)
        self.fc_2 = Linear(d_in, d_hidden, bias=False)
        self.proj = Linear(d_hidden, d_out, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate_up is not None:
            gate, up = self.gate_up(x).chunk(2, dim=-1)
            return self.proj(F.silu(gate) * up)
        return self.proj(F.silu(self.fc_1(x)) * self.fc_2(x))


class KVCache:
    """Static per-layer key/value buffers [batch, n_query_groups, capacity, head_size]. `zeroed` for the static
    decode step, which multiplies the unwritten slots by 0 (uninitialised memory may hold NaN)."""

    def __init__(self, cfg: ModelConfig, batch: int, capacity: int, device, dtype, zeroed: bool = False):
        shape = (batch, cfg.n_query_groups, capacity, cfg.head_size)
        new = torch.zeros if zeroed else torch.empty
        self.k = [new(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.v = [new(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.capacity = capacity

    def copy_row(self, src: int, dst: int, length: int) -> None:
        for k, v in zip(self.k, self.v):
            k[dst, :, :length] = k[src, :, :length]
            v[dst, :, :length] = v[src, :, :length]


def rope_cache(cfg: ModelConfig, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin) [block_size, rope_n_elem]; sin's first half is negated, see `apply_rope`."""
    n = cfg.rope_n_elem
    inv_freq = 1.0 / (cfg.rope_base ** (torch.arange(0, n, 2, device=device).float() / n))
    angles = torch.outer(torch.arange(cfg.block_size, device=device).float(), inv_freq).repeat(1, 2)
    sin = angles.sin()
    sin[:, : n // 2].neg_()
    return angles.cos(), sin


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """LitGPT's rotary embedding, x * cos + cat(-x2, x1) * sin, with the minus folded into `sin` (rope_cache):
    (-a) * b and a * (-b) are the same float, so the values are LitGPT's with one kernel less."""
    n = cos.shape[-1]
    xr, xp = x[..., :n], x[..., n:]
    half = n // 2
    out = xr * cos + torch.cat((xr[..., half:], xr[..., :half]), dim=-1) * sin
    return torch.cat((out, xp), dim=-1) if xp.shape[-1] else out


def split_heads(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cfg: ModelConfig):
    """qkv [B, L, groups, q_per_kv + 2, head_size] (LitGPT layout: per group, q_per_kv query heads, then one key
    head, then one value head) -> q [B, n_head, L, hs] and k [B, groups, L, hs], both roped (in one call: the
    query and key heads of a group are adjacent), and v [B, groups, L, hs]."""
    B, L = qkv.shape[:2]
    qk = apply_rope(qkv[:, :, :, : cfg.q_per_kv + 1], cos[:, None, None], sin[:, None, None])
    q = qk[:, :, :, : cfg.q_per_kv].reshape(B, L, cfg.n_head, cfg.head_size).transpose(1, 2)
    return q, qk[:, :, :, cfg.q_per_kv].transpose(1, 2), qkv[:, :, :, cfg.q_per_kv + 1].transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.attn = Linear(cfg.n_embd, cfg.qkv_size, bias=cfg.add_qkv_bias)  # fused, grouped per KV head
        self.proj = Linear(cfg.n_head * cfg.head_size, cfg.n_embd, bias=False)

    def forward(self, x, cos, sin, cache_k, cache_v, start: int, fork: torch.Tensor | None = None,
                keep: int | None = None) -> torch.Tensor:
        """Keys and values of every position go to the cache; `keep` computes queries and output only for the last
        `keep` positions (the prefill's last block: no later layer reads the others)."""
        c = self.cfg
        B, L, _ = x.shape
        q, k, v = split_heads(self.attn(x).view(B, L, c.n_query_groups, c.q_per_kv + 2, c.head_size), cos, sin, c)
        Lq = L
        if keep is not None and keep < L:
            q, Lq = q[:, :, -keep:], keep
        if fork is not None:  # OmniLM.forward_forked: one sequence holding two rows' prompts, see there
            n = L - 1
            cache_k[0, :, :n], cache_v[0, :, :n] = k[0, :, :n], v[0, :, :n]
            cache_k[1, :, n - 1], cache_v[1, :, n - 1] = k[0, :, n], v[0, :, n]
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=fork[-Lq:], enable_gqa=True)
            return self.proj(y.transpose(1, 2).reshape(B, Lq, -1))
        end = start + L
        cache_k[:, :, start:end] = k
        cache_v[:, :, start:end] = v
        keys, values = cache_k[:, :, :end], cache_v[:, :, :end]
        if L == 1:
            # one new position attends to every cached one: fold the query heads of a group into the
            # "sequence" axis so each group is one matmul against its own K/V, no expansion, no mask
            y = F.scaled_dot_product_attention(q.view(B, c.n_query_groups, c.q_per_kv, c.head_size), keys, values)
        elif start == 0 and Lq == L:  # a whole prompt from the start: causal (fused on GPUs; same values on CPU)
            y = F.scaled_dot_product_attention(q, keys, values, is_causal=True, enable_gqa=True)
        else:  # a prompt chunk after cached positions, or only its last Lq queries: each sees up to itself
            mask = torch.ones(L, end, dtype=torch.bool, device=x.device).tril(diagonal=start)[-Lq:]
            y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, enable_gqa=True)
        return self.proj(y.reshape(B, c.n_head, Lq, c.head_size).transpose(1, 2).reshape(B, Lq, -1))

    def forward_static(self, x, cos, sin, cache_k, cache_v, pos: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """One position, static shapes (CUDA graphs): K/V written at the position in the 1-element tensor `pos`,
        attention over every cache slot with `visible` ([1, 1, 1, capacity] bool) masking the unwritten ones."""
        c = self.cfg
        B = x.shape[0]
        q, k, v = split_heads(self.attn(x).view(B, 1, c.n_query_groups, c.q_per_kv + 2, c.head_size), cos, sin, c)
        cache_k.index_copy_(2, pos, k)
        cache_v.index_copy_(2, pos, v)
        y = F.scaled_dot_product_attention(q.view(B, c.n_query_groups, c.q_per_kv, c.head_size), cache_k, cache_v,
                                           attn_mask=visible)
        return self.proj(y.reshape(B, 1, -1))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm_1 = RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.norm_2 = RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.mlp = SwiGLU(cfg.n_embd, cfg.intermediate_size, cfg.n_embd)

    def forward(self, x, cos, sin, cache_k, cache_v, start: int, fork: torch.Tensor | None = None,
                keep: int | None = None):
        """-> [B, L, D], or only the last `keep` positions (their keys and values are cached for all L)."""
        a = self.attn(self.norm_1(x), cos, sin, cache_k, cache_v, start, fork, keep)
        x = x[:, -a.shape[1]:] + a
        return x + self.mlp(self.norm_2(x))

    def forward_static(self, x, cos, sin, cache_k, cache_v, pos, visible):
        x = x + self.attn.forward_static(self.norm_1(x), cos, sin, cache_k, cache_v, pos, visible)
        return x + self.mlp(self.norm_2(x))


class OmniLM(nn.Module):
    """Qwen2 body + whisper/vision adapters + one head sliced into text and 7 audio heads."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        # registration order as in the official model (matters only for how tied weights load there)
        self.whisper_adapter = SwiGLU(cfg.whisper_adapter_dim, cfg.intermediate_size, cfg.n_embd)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.padded_vocab_size, bias=False)
        self.vision_adapter = SwiGLU(cfg.vision_adapter_dim, cfg.intermediate_size, cfg.n_embd)
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(cfg.padded_vocab_size, cfg.n_embd),
            h=nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer)),
            ln_f=RMSNorm(cfg.n_embd, cfg.norm_eps),
        ))
        self.lm_head.weight = self.transformer.wte.weight  # tied: wte is the shared matrix (spec 1.5)
        self._rope: tuple[torch.Tensor, torch.Tensor] | None = None
        self.split_heads: nn.ModuleList | None = None  # set by quantisation: [text head, audio heads]
        self.screens: tuple | None = None  # set by `screen_heads`: int8-screened greedy [text, audio] heads
        self.static_steps = None  # a StepperPool (omni/graphs.py): captured CUDA graphs, one per active request

    # -- inputs -------------------------------------------------------------------------------------
    def embed(self, ids: torch.Tensor, audio_features: torch.Tensor | None = None,
              audio_slots: tuple[int, int] | None = None, image_features: torch.Tensor | None = None,
              image_slots: tuple[int, int] | None = None) -> torch.Tensor:
        """ids [B, 8, L] -> mean of the 8 row embeddings [B, L, D]; adapted features replace the audio rows' slots."""
        emb = self.token_embedding(ids)  # [B, 8, L, D]
        for feats, slots, adapter in ((audio_features, audio_slots, self.whisper_adapter),
                                      (image_features, image_slots, self.vision_adapter)):
            if feats is None or slots is None:
                continue
            first, count = slots
            adapted = adapter(feats[:count].to(emb.dtype))  # [count, D], the same for every batch row
            emb[:, :7, first:first + count] = adapted
        return emb.sum(dim=1) / ids.shape[1]

    def embed_step(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [B, 8] (one position) -> [B, 1, D]."""
        return (self.token_embedding(ids).sum(dim=1) / ids.shape[1]).unsqueeze(1)

    def token_embedding(self, ids: torch.Tensor) -> torch.Tensor:
        return self.transformer.wte(ids)

    # -- body ---------------------------------------------------------------------------------------
    def rope(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        if self._rope is None or self._rope[0].device != torch.device(device):
            self._rope = rope_cache(self.cfg, device)
        return self._rope

    def new_cache(self, batch: int, capacity: int, zeroed: bool = False) -> KVCache:
        p = self.transformer.ln_f.weight
        return KVCache(self.cfg, batch, min(capacity, self.cfg.block_size), p.device, p.dtype, zeroed)

    def stepper(self, batch: int, capacity: int):
        """What a decode loop steps with, as a context manager held for the whole request: a static (on CUDA,
        captured) stepper of its own from `self.static_steps` (omni/graphs.py) while one is free, else the eager
        forward over a cache sized to the request."""
        if self.static_steps is not None and (s := self.static_steps.take(batch)) is not None:
            return s
        return EagerStepper(self, batch, capacity)

    def prefill(self, x: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Prompt forward from position 0 -> hidden state of the last position [B, D].

        The batch-of-2 prompts are identical except for their last token, so the shared part is computed once,
        in one pass with both last tokens (`forward_forked`), and its keys/values copied to the second row: half
        the prefill work, the same result up to summation order.
        """
        B, L, _ = x.shape
        if B == 2 and L > 1 and torch.equal(x[0, :-1], x[1, :-1]):
            return self.forward_forked(torch.cat((x[0], x[1, -1:]))[None], cache, keep=2)[0]
        return self(x, cache, 0, keep=1)[:, -1]

    def forward_forked(self, x: torch.Tensor, cache: KVCache, keep: int | None = None) -> torch.Tensor:
        """Two prompts that differ only in their last token, as one sequence x [1, L + 1, D]: the shared L - 1
        positions, row 0's last token, then row 1's last token, at the same position L - 1 and blind to row 0's.
        Fills both cache rows; returns the final-norm hidden states [1, L + 1, D] (the last `keep` of them with
        `keep`: the last block computes no others). Saves the 2-row pass that the
        two last tokens would otherwise need after the prefix (one decode step's weight reads)."""
        n = x.shape[1] - 1
        if n < 1 or n > cache.capacity:
            raise ValueError(f"a forked prompt of {n} positions does not fit the KV cache ({cache.capacity})")
        positions = torch.cat((torch.arange(n), torch.tensor([n - 1]))).to(x.device)
        cos, sin = self.rope(x.device)
        cos, sin = cos[positions].to(x.dtype), sin[positions].to(x.dtype)
        fork = torch.ones(n + 1, n + 1, dtype=torch.bool, device=x.device).tril()
        fork[n, n - 1] = False  # row 1's last token does not see row 0's
        last = len(self.transformer.h) - 1
        for i, block in enumerate(self.transformer.h):
            x = block(x, cos, sin, cache.k[i], cache.v[i], 0, fork, keep if i == last else None)
        cache.copy_row(0, 1, n - 1)
        return self.transformer.ln_f(x)

    def forward(self, x: torch.Tensor, cache: KVCache, start: int, keep: int | None = None) -> torch.Tensor:
        """x [B, L, D] at positions start..start+L-1 -> final-norm hidden states [B, L, D], or of the last `keep`
        positions only (all L are cached; the last block computes queries, output and MLP for those only)."""
        L = x.shape[1]
        if start + L > cache.capacity:
            raise ValueError(f"sequence of {start + L} positions exceeds the KV cache ({cache.capacity})")
        cos, sin = self.rope(x.device)
        cos, sin = cos[start:start + L].to(x.dtype), sin[start:start + L].to(x.dtype)
        last = len(self.transformer.h) - 1
        for i, block in enumerate(self.transformer.h):
            x = block(x, cos, sin, cache.k[i], cache.v[i], start, None, keep if i == last else None)
        return self.transformer.ln_f(x)

    def forward_static(self, x: torch.Tensor, cache: KVCache, pos: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """x [B, 1, D] at the position in the 1-element long tensor `pos` -> [B, 1, D], with no shape or Python
        value depending on the position (see Attention.forward_static); `cache` must be zeroed."""
        cos, sin = self.rope(x.device)
        cos, sin = cos.index_select(0, pos).to(x.dtype), sin.index_select(0, pos).to(x.dtype)
        for i, block in enumerate(self.transformer.h):
            x = block.forward_static(x, cos, sin, cache.k[i], cache.v[i], pos, visible)
        return self.transformer.ln_f(x)

    # -- heads --------------------------------------------------------------------------------------
    def text_logits(self, h: torch.Tensor) -> torch.Tensor:
        """[..., D] -> [..., text_vocab_size]: only the text columns of the head are computed."""
        if self.split_heads is not None:  # separate (e.g. quantised) copies of the two head slices
            return self.split_heads[0](h)
        return fast_linear(h, self.lm_head.weight[: self.cfg.text_vocab_size])

    def audio_logits(self, h: torch.Tensor) -> torch.Tensor:
        """[..., D] -> [..., 7, audio_vocab_size]."""
        if self.split_heads is not None:
            out = self.split_heads[1](h)
        else:
            out = fast_linear(h, self.lm_head.weight[self.cfg.text_vocab_size:])
        return out.view(*h.shape[:-1], 7, self.cfg.audio_vocab_size)

    def text_argmax(self, h: torch.Tensor) -> torch.Tensor:
        """[1, D] -> the greedy text id [1]: text_logits(h).argmax(-1) (screened: see `screen_heads`)."""
        if self._screened(h):
            return self.screens[0](h)
        return self.text_logits(h).argmax(dim=-1)

    def audio_argmax(self, h: torch.Tensor) -> torch.Tensor:
        """[1, D] -> the greedy ids of the 7 audio layers [1, 7]: audio_logits(h).argmax(-1) (or screened)."""
        if self._screened(h):
            return self.screens[1](h)[None]
        return self.audio_logits(h).argmax(dim=-1)

    def _screened(self, h: torch.Tensor) -> bool:
        return self.screens is not None and h.shape[0] == 1 and h.dtype == torch.float32 and h.device.type == "cpu"

    def screen_heads(self) -> bool:
        """Greedy decoding on a CPU in fp32: take the head's argmax through an int8 screen (omni/argmax_screen.py),
        which reads a quarter of the head's bytes; its ids are the argmax of exact scores on every CPU, those of the
        fp32 head but where two top scores lie within fp32 rounding of each other. False where it does not apply."""
        from .argmax_screen import ScreenedArgmax, screens_work

        w = self.lm_head.weight
        if self.split_heads is not None or w.dtype != torch.float32 or w.device.type != "cpu" or not screens_work():
            return False
        w, text = w.detach(), self.cfg.text_vocab_size  # row slices of the shared matrix: views, no copies
        self.screens = (ScreenedArgmax(w[:text]), ScreenedArgmax(w[text:], groups=7))
        return True


class EagerStepper:
    """Decode steps through the ordinary forward, with a KV cache sized to the request."""

    def __init__(self, lm, batch: int, capacity: int):
        self.lm, self.cache = lm, lm.new_cache(batch, capacity)

    def __enter__(self) -> "EagerStepper":
        return self

    def __exit__(self, *exc) -> None:
        self.cache = None  # freed now, also while the generator object lingers

    def step(self, ids: torch.Tensor, pos: int) -> torch.Tensor:
        """ids [B, 8] fed at position pos -> final hidden state [B, D]."""
        return self.lm(self.lm.embed_step(ids), self.cache, pos)[:, -1]
