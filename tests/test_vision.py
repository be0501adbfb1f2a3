"""The CLIP image encoder (omni/vision.py) against transformers' CLIPVisionModel, and its preprocessing."""

import torch


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
