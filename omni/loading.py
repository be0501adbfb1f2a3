"""Loading a checkpoint part by part, each checked against model_config.yaml, then readying the parts for the
device: int8 packing, the CPU kernel choices, CUDA graphs, the allocator settings for decoding, warm-ups."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from . import audio as audio_io
from .checkpoint import load_lm, verify_known_file
from .codec import fastest_dtype as fastest_snac_dtype
from .codec import load_snac
from .codec import warm_up as warm_up_snac
from .config import ModelConfig, Vocab
from .device import keep_freed_heap, release_freed_memory, set_mmap_threshold
from .errors import CheckpointError
from .linear import TRANSPOSED, choose_small_rows_kernel, small_rows_kernel, split_long_inputs
from .model import OmniLM
from .vision import VisionTransformer, load_vision_encoder


@dataclass
class Parts:
    """What a checkpoint loads into, and the ways of computing chosen for this device."""

    cfg: ModelConfig
    vocab: Vocab
    tokenizer: object  # a tokenizers.Tokenizer
    lm: OmniLM
    whisper: torch.nn.Module  # openai-whisper's AudioEncoder
    whisper_dims: object  # its ModelDimensions
    clip: VisionTransformer
    snac: torch.nn.Module
    int8_engines: dict[str, str] = field(default_factory=dict)  # quantised engine each part was packed for
    whisper_attention: str = "sdpa"  # fp32 SDPA, as the official code; speed modes may choose another way
    decode_path: str = "eager"  # or "cuda graph"


def load_parts(checkpoint_dir: Path, snac_dir: Path, device: torch.device, dtype: torch.dtype,
               quantize: str | None, say: Callable[[str], None], cuda_graphs: bool = True) -> Parts:
    """Read every part (`read_parts`), then ready them for `device` and `dtype`."""
    # While loading, blocks over 1 MiB are mmapped, so the weight copies freed while reading
    # go straight back to the OS (glibc would otherwise keep them: peak RSS 4.2 -> 3.4 GB at full size).
    # Afterwards a 32 MiB threshold keeps the big activation buffers of decoding in the reusable heap.
    set_mmap_threshold(1 << 20)
    parts = read_parts(checkpoint_dir, snac_dir, say)
    if quantize == "int8":
        from .quantize import quantize_int8

        say("quantising linear layers to int8 ...")
        parts.int8_engines = quantize_int8(parts)
        say(f"int8 packed for: LM {parts.int8_engines['lm']}, Whisper {parts.int8_engines['whisper']}")
    parts.lm.to(device, dtype)
    if device.type == "cpu" and dtype == torch.float32:
        choose_cpu_kernels(parts.lm, say)
    if device.type == "cuda" and cuda_graphs:
        parts.decode_path = capture_graphs(parts.lm, say)
    parts.clip.to(device)  # computes in the model's dtype (see Omni.encode_image); fp16-saved weights stay fp16
    parts.whisper.to(device)  # computes in fp32 always (as the official code; LayerNorm needs it on CPU)
    parts.snac.to(device)
    audio_io.warm_up()
    release_freed_memory()
    set_mmap_threshold(32 << 20)
    keep_freed_heap(256 << 20)
    if quantize == "int8":
        # a speed mode already: Whisper's attention in bf16 too where this CPU runs that faster. Timed after
        # the heap settings above: before them each head's 4.5 MB of scores was a fresh mmap (+60 %)
        parts.whisper_attention = audio_io.fastest_attention(parts.whisper_dims)
        say(f"Whisper attention: {parts.whisper_attention}")
        if device.type == "cpu" and fastest_snac_dtype(parts.snac) == torch.bfloat16:
            parts.snac.to(torch.bfloat16)  # 40 MB less, too
            say("SNAC decodes in bfloat16")
    warm_up_snac(parts.snac)  # once its dtype is settled
    return parts


def read_parts(checkpoint_dir: Path, snac_dir: Path, say: Callable[[str], None]) -> Parts:
    """Config, tokenizer, LM, Whisper, CLIP and SNAC from the official layout, on the CPU as stored; the encoders'
    widths must be the adapters' (model_config.yaml)."""
    cfg = ModelConfig.from_file(checkpoint_dir / "model_config.yaml")
    tokenizer = load_tokenizer(checkpoint_dir / "tokenizer.json")
    say("loading language model (lit_model.pth) ...")
    lm = load_lm(checkpoint_dir, cfg)
    release_freed_memory()
    say("loading Whisper encoder (small.pt) ...")
    verify_known_file(checkpoint_dir / "small.pt")
    # the fp16-saved weights stay fp16 and are cast per call: fp32 copies would save ~0.1 s a question on
    # a CPU but cost 168 MB, which the int8 screens of the heads need more
    whisper, whisper_dims = audio_io.load_whisper_encoder(checkpoint_dir / "small.pt")
    if whisper_dims.n_audio_state != cfg.whisper_adapter_dim:
        raise CheckpointError(f"small.pt has width {whisper_dims.n_audio_state} but model_config.yaml says "
                              f"whisper_adapter_dim {cfg.whisper_adapter_dim}")
    release_freed_memory()
    say("loading CLIP image encoder (ViT-B-32.pt) ...")
    verify_known_file(checkpoint_dir / "ViT-B-32.pt")
    clip = load_vision_encoder(checkpoint_dir / "ViT-B-32.pt")
    if clip.dims.output_dim != cfg.vision_adapter_dim:
        raise CheckpointError(f"ViT-B-32.pt projects to {clip.dims.output_dim} but model_config.yaml says "
                              f"vision_adapter_dim {cfg.vision_adapter_dim}")
    release_freed_memory()
    say("loading SNAC codec ...")
    snac = load_snac(snac_dir)
    return Parts(cfg, Vocab.of(cfg), tokenizer, lm, whisper, whisper_dims, clip, snac)


def load_tokenizer(path: Path):
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:
        raise CheckpointError(f"{path}: not a tokenizers file ({e})") from None


def choose_cpu_kernels(lm: OmniLM, say: Callable[[str], None]) -> None:
    """CPU fp32: the decoding matmul this CPU runs faster, and the int8 screen of the greedy heads."""
    # the faster decoding matmul differs between CPUs (see omni/linear.py): timed here, ~20 ms
    if choose_small_rows_kernel() == TRANSPOSED:
        split_long_inputs(lm)  # the MLP projections as column blocks: faster with that kernel
    say(f"decoding matmuls: {small_rows_kernel()}")
    # greedy ids through an int8 screen of the head (same ids, a quarter of its bytes), ~1 s
    if lm.screen_heads():
        say("greedy heads screened in int8")


def capture_graphs(lm: OmniLM, say: Callable[[str], None]) -> str:
    """The decode step captured as CUDA graphs; returns the decode path ("cuda graph", or "eager" if that failed)."""
    from .graphs import capture_decode_graphs

    say("capturing the decode step as CUDA graphs ...")
    try:
        lm.static_steps = capture_decode_graphs(lm)
        return "cuda graph"
    except RuntimeError as e:  # an unsupported op or driver: decode eagerly, as without the option
        say(f"CUDA graph capture failed ({str(e).splitlines()[0][:120]}); decoding eagerly")
        lm.static_steps = None
        return "eager"
