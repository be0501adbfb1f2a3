"""CLIP ViT image encoder, as in the mini-omni/CLIP fork: ln_post and the projection apply to all tokens.

Reads OpenAI's TorchScript `ViT-B-32.pt` (only its `visual.*` tensors); every dimension comes from the shapes.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from .errors import CheckpointError, OmniInputError, check_input_file
from .linear import Linear, fast_linear_cast

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
MAX_IMAGE_BYTES = 25 * 1024 * 1024
# One limit for the CLI, the Python API and the app: 16.7 megapixels (48 MB decoded; CLIP sees 224 x 224). Larger
# pictures are refused from their header, before decoding, with a message that says so.
MAX_IMAGE_PIXELS = 4096 * 4096


class ImageTooLarge(OmniInputError):
    """A picture over MAX_IMAGE_PIXELS."""


class UnreadableImage(OmniInputError):
    """A file that is not an image PIL can read (or is cut short)."""


@dataclass(frozen=True)
class VisionDimensions:
    width: int
    layers: int
    heads: int
    patch_size: int
    n_tokens: int  # 1 class token + grid^2 patches (50 for ViT-B/32)
    output_dim: int

    @property
    def image_size(self) -> int:
        return self.patch_size * math.isqrt(self.n_tokens - 1)

    @classmethod
    def from_state_dict(cls, sd: dict[str, torch.Tensor]) -> "VisionDimensions":
        width = sd["conv1.weight"].shape[0]
        layers = len({k.split(".")[2] for k in sd if k.startswith("transformer.resblocks.")})
        return cls(width=width, layers=layers, heads=width // 64, patch_size=sd["conv1.weight"].shape[-1],
                   n_tokens=sd["positional_embedding"].shape[0], output_dim=sd["proj"].shape[1])


class LayerNorm(nn.LayerNorm):
    """CLIP computes LayerNorm in fp32 whatever the weights' dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype) if x.dtype != self.weight.dtype else super().forward(x)


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class Attention(nn.Module):
    """nn.MultiheadAttention's parameters (fused in_proj), batch first, computing in the input's dtype."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * width))
        self.out_proj = Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, tokens, width]
        B, T, width = x.shape
        qkv = fast_linear_cast(x, self.in_proj_weight, self.in_proj_bias)
        q, k, v = qkv.view(B, T, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(y.transpose(1, 2).reshape(B, T, width))


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.attn = Attention(width, heads)
        self.ln_1 = LayerNorm(width)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", Linear(width, width * 4))
        self.mlp.add_module("gelu", QuickGELU())
        self.mlp.add_module("c_proj", Linear(width * 4, width))
        self.ln_2 = LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [batch, tokens, width]
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int):
        super().__init__()
        self.resblocks = nn.Sequential(*[ResidualAttentionBlock(width, heads) for _ in range(layers)])

    def forward(self, x):
        return self.resblocks(x)


class VisionTransformer(nn.Module):
    def __init__(self, d: VisionDimensions):
        super().__init__()
        self.dims = d
        self.conv1 = nn.Conv2d(3, d.width, kernel_size=d.patch_size, stride=d.patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(d.width))
        self.positional_embedding = nn.Parameter(torch.zeros(d.n_tokens, d.width))
        self.ln_pre = LayerNorm(d.width)
        self.transformer = Transformer(d.width, d.layers, d.heads)
        self.ln_post = LayerNorm(d.width)
        self.proj = nn.Parameter(torch.zeros(d.width, d.output_dim))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels [B, 3, S, S] -> [B, n_tokens, output_dim]: class token first, then patches row-major.
        Computes in the dtype of `pixels` (fp16-kept weights are cast)."""
        x = F.conv2d(pixels, self.conv1.weight.to(pixels.dtype), stride=self.conv1.stride)
        x = x.flatten(2).transpose(1, 2)  # [B, grid^2, width]
        cls = self.class_embedding.to(x.dtype) + torch.zeros(x.shape[0], 1, x.shape[-1], dtype=x.dtype, device=x.device)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.ln_pre(x)
        x = self.transformer(x)
        return self.ln_post(x) @ self.proj.to(x.dtype)  # the fork: every token, not only the class token


def load_clip_state(path: Path) -> dict[str, torch.Tensor]:
    """visual.* tensors of an OpenAI CLIP TorchScript archive (read by torch.jit.load: no pickle)."""
    try:
        archive = torch.jit.load(str(path), map_location="cpu")
    except Exception as e:  # a corrupt or non-TorchScript file: say which file and why
        raise CheckpointError(f"{path}: not a readable TorchScript CLIP archive ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}). Download it again.") from None
    sd = {k[len("visual."):]: v for k, v in archive.state_dict().items() if k.startswith("visual.")}
    for key in ("conv1.weight", "positional_embedding", "proj", "ln_post.weight", "class_embedding"):
        if key not in sd:
            raise CheckpointError(f"{path}: missing key visual.{key} (is this a ViT CLIP archive?)")
    return sd


def _fp16_rounded(key: str) -> bool:
    """Tensors that the official CLIP loader converts to fp16 (then back to fp32 on the CPU)."""
    if key in ("proj", "conv1.weight"):
        return True
    return key.startswith("transformer.") and ("attn." in key or ".mlp." in key)


def load_vision_encoder(path: Path) -> VisionTransformer:
    sd = load_clip_state(path)
    # The official loader rounds these to fp16 (then computes in fp32 on the CPU): keeping them in fp16 gives the
    # same values at half the memory (the layers cast them to the input's dtype per call).
    sd = {k: v.half() if _fp16_rounded(k) else v.float() for k, v in sd.items()}
    dims = VisionDimensions.from_state_dict(sd)
    with torch.device("meta"):
        model = VisionTransformer(dims)
    missing, unexpected = model.load_state_dict(sd, strict=False, assign=True)
    if missing or unexpected:
        raise CheckpointError(f"{path}: CLIP keys do not match a ViT of width {dims.width}: "
                              f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model.eval()


# -- images -----------------------------------------------------------------------------------------
def open_image(image) -> Image.Image:
    """A path, binary file object (an upload's bytes), PIL image or HxWx3 uint8 array -> PIL image, with clear
    errors for bad files (`UnreadableImage`) and pictures over MAX_IMAGE_PIXELS (`ImageTooLarge`)."""
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, np.ndarray):
        if image.ndim == 2:
            image = np.stack([image] * 3, axis=-1)
        if image.ndim != 3 or image.shape[-1] not in (3, 4) or image.size == 0:
            raise OmniInputError(f"image array must be HxWx3 (got shape {tuple(image.shape)})")
        _check_pixels(image.shape[1], image.shape[0], "the image array")
        if image.dtype != np.uint8:
            image = np.clip(image * (255.0 if image.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
        return Image.fromarray(image[..., :3])
    name = "the uploaded image" if hasattr(image, "read") else Path(image)
    if not hasattr(image, "read"):
        check_input_file(name, "image", MAX_IMAGE_BYTES)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the size is checked right here
            img = Image.open(image)
        _check_pixels(img.width, img.height, name)
        img.load()
    except Image.DecompressionBombError:  # PIL refuses headers over ~179 megapixels outright
        raise ImageTooLarge(f"image is too large (limit {MAX_IMAGE_PIXELS / 1e6:.1f} megapixels): {name}. "
                            "Resize it first.") from None
    except OmniInputError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise UnreadableImage(f"not a readable image ({type(e).__name__}): {name}. Use a PNG, JPEG or WebP "
                              "file.") from None
    return img


def _check_pixels(width: int, height: int, name) -> None:
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageTooLarge(f"image is too large ({width}x{height} pixels; limit {MAX_IMAGE_PIXELS / 1e6:.1f} "
                            f"megapixels): {name}. Resize it first.")


def preprocess(img: Image.Image, size: int) -> torch.Tensor:
    """CLIP's transform (resize shorter side, bicubic; center crop; RGB; normalize) -> [1, 3, size, size]."""
    w, h = img.size
    if min(w, h) != size:  # torchvision skips the resize when the shorter side already fits
        if w <= h:
            new_w, new_h = size, int(size * h / w)
        else:
            new_w, new_h = int(size * w / h), size
        img = img.resize((new_w, new_h), Image.BICUBIC)
    w, h = img.size
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    img = img.crop((left, top, left + size, top + size)).convert("RGB")
    x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float().div(255.0)
    x = (x - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
    return x.unsqueeze(0)
