"""Our forward pass against independent implementations: transformers' Qwen2 (converted weights) for the LM,
transformers' CLIPVisionModel for the image encoder, openai-whisper's own loader for the audio encoder."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

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


def test_the_decoding_kernel_is_chosen_by_timing_both(monkeypatch):
    """choose_small_rows_kernel picks whichever of W @ x^T and F.linear ran faster (here made slow on purpose)."""
    import time

    from omni import linear

    before = linear.small_rows_kernel()
    real_mm = torch.mm
    try:
        def slow_mm(*args):
            time.sleep(0.002)
            return real_mm(*args)
        monkeypatch.setattr(torch, "mm", slow_mm)
        assert linear.choose_small_rows_kernel(64, 32, reps=2) == linear.PLAIN == linear.small_rows_kernel()
        monkeypatch.setattr(torch, "mm", real_mm)
        real_linear = F.linear

        def slow_linear(*args):
            time.sleep(0.002)
            return real_linear(*args)
        monkeypatch.setattr(linear.F, "linear", slow_linear)
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
def test_clip_matches_transformers_clip_vision_model(tiny_model, media):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from omni.vision import open_image, preprocess

    clip = tiny_model.clip
    d = clip.dims
    hf = CLIPVisionModel(CLIPVisionConfig(hidden_size=d.width, intermediate_size=4 * d.width, num_hidden_layers=d.layers,
                                          num_attention_heads=d.heads, image_size=d.image_size, patch_size=d.patch_size,
                                          hidden_act="quick_gelu", layer_norm_eps=1e-5)).eval()
    sd = clip.state_dict()
    conv = {"embeddings.patch_embedding.weight": sd["conv1.weight"],
            "embeddings.class_embedding": sd["class_embedding"],
            "embeddings.position_embedding.weight": sd["positional_embedding"],
            "pre_layrnorm.weight": sd["ln_pre.weight"], "pre_layrnorm.bias": sd["ln_pre.bias"],
            "post_layernorm.weight": sd["ln_post.weight"],
            "post_layernorm.bias": sd["ln_post.bias"]}
    for i in range(d.layers):
        s, p = f"transformer.resblocks.{i}.", f"encoder.layers.{i}."
        wq, wk, wv = sd[s + "attn.in_proj_weight"].chunk(3)
        bq, bk, bv = sd[s + "attn.in_proj_bias"].chunk(3)
        conv.update({p + "self_attn.q_proj.weight": wq, p + "self_attn.k_proj.weight": wk,
                     p + "self_attn.v_proj.weight": wv, p + "self_attn.q_proj.bias": bq,
                     p + "self_attn.k_proj.bias": bk, p + "self_attn.v_proj.bias": bv,
                     p + "self_attn.out_proj.weight": sd[s + "attn.out_proj.weight"],
                     p + "self_attn.out_proj.bias": sd[s + "attn.out_proj.bias"],
                     p + "layer_norm1.weight": sd[s + "ln_1.weight"], p + "layer_norm1.bias": sd[s + "ln_1.bias"],
                     p + "layer_norm2.weight": sd[s + "ln_2.weight"], p + "layer_norm2.bias": sd[s + "ln_2.bias"],
                     p + "mlp.fc1.weight": sd[s + "mlp.c_fc.weight"], p + "mlp.fc1.bias": sd[s + "mlp.c_fc.bias"],
                     p + "mlp.fc2.weight": sd[s + "mlp.c_proj.weight"], p + "mlp.fc2.bias": sd[s + "mlp.c_proj.bias"]})
    missing, unexpected = hf.load_state_dict(conv, strict=False)
    assert not [m for m in missing if "position_ids" not in m] and not unexpected
    pixels = preprocess(open_image(media["image"]), d.image_size)
    ours = clip(pixels)
    hidden = hf(pixel_values=pixels).last_hidden_state  # pre-ln_post tokens
    ref = hf.post_layernorm(hidden) @ sd["proj"].float()  # the fork: ln_post + proj on all tokens
    assert ours.shape == (1, d.n_tokens, d.output_dim)
    assert torch.allclose(ours, ref, atol=1e-4)


def test_clip_preprocess_resizes_shorter_side_and_center_crops():
    from PIL import Image

    from omni.vision import MEAN, STD, preprocess

    img = Image.new("RGB", (448, 300), (255, 0, 0))
    x = preprocess(img, 224)
    assert x.shape == (1, 3, 224, 224)
    assert torch.allclose(x[0, :, 100, 100], torch.tensor([(1 - MEAN[0]) / STD[0], -MEAN[1] / STD[1], -MEAN[2] / STD[2]]),
                          atol=1e-3)


@torch.inference_mode()
def test_whisper_encoder_matches_openai_whisper_with_stored_positional_embedding(tiny_model, tiny_ckpt, media):
    import whisper

    from omni.audio import load_audio, log_mel, whisper_encode

    ref = whisper.load_model(str(tiny_ckpt / "small.pt"), device="cpu")  # openai-whisper's own loader
    stored = torch.load(tiny_ckpt / "small.pt", weights_only=True)["model_state_dict"]["encoder.positional_embedding"]
    assert torch.equal(tiny_model.whisper.positional_embedding, stored.float())
    mel = log_mel(load_audio(media["speech16k"]))
    assert torch.allclose(tiny_model.whisper(mel[None]), ref.embed_audio(mel[None]), atol=1e-5)
    feats = tiny_model.encode_audio(media["speech16k"])
    n = int(len(load_audio(media["speech16k"])) / 16000 * 1000 / 20) + 1
    assert feats.shape == (n, tiny_model.whisper_dims.n_audio_state)
    # the fast encoder (last block on the kept rows only) gives openai-whisper's values for those rows
    assert torch.allclose(feats, ref.embed_audio(mel[None])[0, :n], atol=1e-5)
    assert torch.allclose(whisper_encode(tiny_model.whisper, mel[None]), ref.embed_audio(mel[None]), atol=1e-5)


def test_audio_loading_matches_whisper_ffmpeg_path_for_16k_wav(media):
    import whisper

    from omni.audio import load_audio

    ours = load_audio(media["speech16k"])
    ref = whisper.load_audio(str(media["speech16k"]))  # ffmpeg, as the official code
    assert np.array_equal(ours, ref)


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


@torch.inference_mode()
def test_whisper_attention_in_bfloat16_approximates_float32(tiny_model, media):
    """int8 mode may run Whisper's attention in bf16 (where the CPU is faster in it), either way: close to the fp32
    features, and the fp32 path (parity mode) is untouched by the option's default."""
    from omni.audio import load_audio, log_mel, whisper_encode

    mel = log_mel(load_audio(media["speech16k"]))[None]
    want = whisper_encode(tiny_model.whisper, mel)
    assert torch.equal(whisper_encode(tiny_model.whisper, mel, attention_kind="sdpa"), want)
    for kind in ("sdpa-bf16", "matmul-bf16"):
        got = whisper_encode(tiny_model.whisper, mel, attention_kind=kind)
        assert got.dtype == want.dtype and not torch.equal(got, want), kind
        assert ((got - want).norm() / want.norm()) < 0.02, kind
    with pytest.raises(ValueError, match="unknown attention kind"):
        whisper_encode(tiny_model.whisper, mel, attention_kind="fp8")


def test_attention_kinds_compute_attention():
    """Each kind against the attention formula in fp64, with sharp and flat score rows, a subset of the queries
    (as in Whisper's last block) and a batch of 2."""
    from omni.audio import attention

    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 3, 40, 16, generator=g, dtype=torch.float64) for _ in range(3))
    q[0, 0] *= 6  # sharp rows: scores up to ~±20
    want = torch.softmax(q[:, :, :7] @ k.transpose(-1, -2) / 4, -1) @ v
    for kind, tol in (("sdpa", 1e-5), ("sdpa-bf16", 1.5e-2), ("matmul-bf16", 1.5e-2)):
        got = attention(q[:, :, :7].float(), k.float(), v.float(), kind)
        assert got.dtype == torch.float32 and got.shape == want.shape, kind
        assert ((got.double() - want).norm() / want.norm()) < tol, kind


def test_whisper_attention_kind_is_chosen_by_timing(tiny_model, monkeypatch, virtual_clock):
    """fastest_attention keeps the quickest kind only if it beats fp32 SDPA by 20 % (timed on a virtual clock)."""
    from omni import audio

    real = audio.attention

    def costs(cost):
        def attention(q, k, v, kind="sdpa"):
            virtual_clock.advance(cost[kind])
            return real(q, k, v, kind)
        return attention

    monkeypatch.setattr(audio, "best_ms", virtual_clock.best_ms)
    dims = tiny_model.whisper_dims
    kinds = ("sdpa", "sdpa-bf16", "matmul-bf16")
    for fast in kinds:
        monkeypatch.setattr(audio, "attention", costs({k: 1.0 if k == fast else 10.0 for k in kinds}))
        assert audio.fastest_attention(dims) == fast
    # a bf16 kind 10 % faster is not worth leaving fp32 for; 25 % faster is
    monkeypatch.setattr(audio, "attention", costs({"sdpa": 10.0, "sdpa-bf16": 9.0, "matmul-bf16": 9.5}))
    assert audio.fastest_attention(dims) == "sdpa"
    monkeypatch.setattr(audio, "attention", costs({"sdpa": 10.0, "sdpa-bf16": 9.0, "matmul-bf16": 7.5}))
    assert audio.fastest_attention(dims) == "matmul-bf16"
