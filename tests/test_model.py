"""The language model (omni/model.py) against transformers' Qwen2 (converted weights), and its shortcuts (the
one-pass shared prefill, the last block's kept positions, rope with the sign folded in) against the plain forms."""

import pytest
import torch

from omni.prompt import build_prompt


def qwen2_reference(lm):
    """transformers Qwen2ForCausalLM holding our weights (fused LitGPT qkv split per group)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    c = lm.cfg
    hf = Qwen2ForCausalLM(Qwen2Config(
        hidden_size=c.n_embd, num_hidden_layers=c.n_layer, num_attention_heads=c.n_head,
        num_key_value_heads=c.n_query_groups, head_dim=c.head_size, intermediate_size=c.intermediate_size,
        vocab_size=c.padded_vocab_size, max_position_embeddings=c.block_size, rms_norm_eps=c.norm_eps,
        rope_theta=c.rope_base, rope_parameters={"rope_type": "default", "rope_theta": c.rope_base},
        tie_word_embeddings=True, attn_implementation="eager"))
    sd = {"model.embed_tokens.weight": lm.transformer.wte.weight, "model.norm.weight": lm.transformer.ln_f.weight,
          "lm_head.weight": lm.transformer.wte.weight}
    q, hs, g = c.q_per_kv, c.head_size, c.n_query_groups
    for i, b in enumerate(lm.transformer.h):
        p = f"model.layers.{i}."
        w = b.attn.attn.weight.view(g, q + 2, hs, -1)
        bias = b.attn.attn.bias.view(g, q + 2, hs)
        sd[p + "self_attn.q_proj.weight"] = w[:, :q].reshape(-1, w.shape[-1])
        sd[p + "self_attn.k_proj.weight"] = w[:, q].reshape(-1, w.shape[-1])
        sd[p + "self_attn.v_proj.weight"] = w[:, q + 1].reshape(-1, w.shape[-1])
        sd[p + "self_attn.q_proj.bias"] = bias[:, :q].reshape(-1)
        sd[p + "self_attn.k_proj.bias"] = bias[:, q].reshape(-1)
        sd[p + "self_attn.v_proj.bias"] = bias[:, q + 1].reshape(-1)
        sd[p + "self_attn.o_proj.weight"] = b.attn.proj.weight
        sd[p + "mlp.gate_proj.weight"] = b.mlp.fc_1.weight
        sd[p + "mlp.up_proj.weight"] = b.mlp.fc_2.weight
        sd[p + "mlp.down_proj.weight"] = b.mlp.proj.weight
        sd[p + "input_layernorm.weight"] = b.norm_1.weight
        sd[p + "post_attention_layernorm.weight"] = b.norm_2.weight
    missing, unexpected = hf.load_state_dict({k: v.detach().clone() for k, v in sd.items()}, strict=False)
    assert not [m for m in missing if "rotary" not in m] and not unexpected
    return hf.eval()


@torch.inference_mode()
def test_lm_logits_match_transformers_qwen2_in_prefill_and_cached_decode(tiny_model, tiny_ckpt):
    from omni.checkpoint import load_lm

    lm = load_lm(tiny_ckpt, tiny_model.cfg)
    hf = qwen2_reference(lm)
    prompt = build_prompt("A1A2", tiny_model.vocab, n_frames=20)
    feats = torch.randn(20, lm.cfg.whisper_adapter_dim, generator=torch.Generator().manual_seed(1))
    x = lm.embed(prompt.ids, feats, prompt.audio_slots)
    # 3 decode positions after the prompt, with arbitrary ids
    step_ids = torch.randint(0, lm.cfg.padded_vocab_size, (3, 2, 8), generator=torch.Generator().manual_seed(0))
    steps = [lm.embed_step(ids) for ids in step_ids]
    cache = lm.new_cache(2, prompt.length + 3)
    ours = [lm(x, cache, 0)]
    for k, s in enumerate(steps):
        ours.append(lm(s, cache, prompt.length + k))
    ours = torch.cat(ours, dim=1)
    ref = hf.model(inputs_embeds=torch.cat([x] + steps, dim=1)).last_hidden_state
    assert torch.allclose(ours, ref, atol=2e-4, rtol=1e-4), (ours - ref).abs().max()
    ref_logits = hf.lm_head(ref[:, -1])
    assert torch.allclose(lm.text_logits(ours[:, -1]), ref_logits[:, : lm.cfg.text_vocab_size], atol=2e-3)
    audio = lm.audio_logits(ours[:, -1])
    assert torch.allclose(audio[:, 3], ref_logits[:, lm.cfg.text_vocab_size + 3 * lm.cfg.audio_vocab_size:
                                                   lm.cfg.text_vocab_size + 4 * lm.cfg.audio_vocab_size], atol=2e-3)
    assert torch.equal(ref_logits.argmax(-1), torch.cat([lm.text_logits(ours[:, -1]),
                                                        audio.flatten(1)], dim=-1).argmax(-1))


@torch.inference_mode()
def test_embedding_is_mean_of_8_rows_with_features_on_audio_rows_only(tiny_model, tiny_ckpt):
    from omni.checkpoint import load_lm

    lm = load_lm(tiny_ckpt, tiny_model.cfg)
    p = build_prompt("A1T2", tiny_model.vocab, n_frames=4)
    feats = torch.randn(4, lm.cfg.whisper_adapter_dim)
    x = lm.embed(p.ids, feats, p.audio_slots)
    wte = lm.transformer.wte.weight
    adapted = lm.whisper_adapter(feats)
    pos = 2  # a feature slot: 7 copies of the adapted feature + the text row's pad_t embedding
    want = (7 * adapted[pos - 1] + wte[p.ids[0, 7, pos]]) / 8
    assert torch.allclose(x[0, pos], want, atol=1e-5)
    want0 = wte[p.ids[0, :, 0]].sum(0) / 8  # position 0 (input_a) keeps its token embeddings
    assert torch.allclose(x[0, 0], want0, atol=1e-6)


@torch.inference_mode()
def test_shared_prefix_prefill_equals_the_full_batch_prefill(tiny_model, media):
    lm = tiny_model.lm
    prompt, x = tiny_model.prepare("A1A2", audio=media["speech16k"])
    assert torch.equal(x[0, :-1], x[1, :-1]) and not torch.equal(x[0, -1], x[1, -1])
    shared, full = lm.new_cache(2, prompt.length + 1), lm.new_cache(2, prompt.length + 1)
    h_shared = lm.prefill(x, shared)
    h_full = lm(x, full, 0)[:, -1]
    # equal up to summation order (one pass over the prefix and both last tokens, against a pass over both rows)
    assert torch.allclose(h_shared, h_full, atol=1e-4), (h_shared - h_full).abs().max()
    L = prompt.length
    assert all(torch.allclose(a[:, :, :L], b[:, :, :L], atol=1e-4) for a, b in zip(shared.k + shared.v, full.k + full.v))


@torch.inference_mode()
def test_the_last_block_computes_only_the_kept_positions(tiny_model):
    """The prefill needs the last position's hidden state only: the last block computes queries, output and MLP for
    the kept positions alone, while every position's keys and values still reach the cache (from the start, and for
    a chunk after earlier positions)."""
    lm = tiny_model.lm
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 12, lm.cfg.n_embd, generator=g)
    rows = []
    hook = lm.transformer.h[-1].mlp.register_forward_hook(lambda m, args, out: rows.append(args[0].shape[1]))
    try:
        for start, keep in ((0, 1), (0, 3), (5, 2)):
            kept, full = lm.new_cache(1, 20), lm.new_cache(1, 20)
            if start:  # earlier positions already cached
                lm(x[:, :start], kept, 0), lm(x[:, :start], full, 0)
            rows.clear()
            got = lm(x[:, start:], kept, start, keep=keep)
            assert rows == [keep]  # the last block's MLP ran on the kept positions only
            want = lm(x[:, start:], full, start)[:, -keep:]
            assert got.shape == want.shape and torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
            assert all(torch.allclose(a[:, :, :12], b[:, :, :12], atol=1e-5)
                       for a, b in zip(kept.k + kept.v, full.k + full.v))
    finally:
        hook.remove()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rope_with_the_sign_folded_into_sin_is_litgpt_rope_bit_for_bit(tiny_model, dtype):
    """apply_rope takes sin with its first half negated (rope_cache) instead of negating half of x each call;
    the values must be LitGPT's x * cos + cat(-x2, x1) * sin exactly, queries and keys roped together."""
    from omni.model import rope_cache, split_heads

    c = tiny_model.lm.cfg
    cos, sin_folded = rope_cache(c)
    n = c.rope_n_elem
    angles = torch.outer(torch.arange(c.block_size).float(),
                         1.0 / (c.rope_base ** (torch.arange(0, n, 2).float() / n))).repeat(1, 2)
    assert torch.equal(cos, angles.cos())
    L, start = 5, 7
    cos, sin, sin_folded = (t[start:start + L].to(dtype) for t in (cos, angles.sin(), sin_folded))

    def litgpt(x):  # [B, H, L, hs]
        x1, x2 = x[..., : n // 2], x[..., n // 2:]
        return (x * cos + torch.cat((-x2, x1), dim=-1) * sin).to(dtype)

    g = torch.Generator().manual_seed(1)
    qkv = torch.randn(2, L, c.n_query_groups, c.q_per_kv + 2, c.head_size, generator=g).to(dtype)
    q, k, v = split_heads(qkv, cos, sin_folded, c)
    assert torch.equal(q, litgpt(qkv[:, :, :, : c.q_per_kv].reshape(2, L, c.n_head, c.head_size).transpose(1, 2)))
    assert torch.equal(k, litgpt(qkv[:, :, :, c.q_per_kv].transpose(1, 2)))
    assert torch.equal(v, qkv[:, :, :, c.q_per_kv + 1].transpose(1, 2))
