"""The SNAC 24 kHz speech codec: loading it, its faster CPU paths, and the load-time choices (dtype, warm-up)."""

from __future__ import annotations

import copy
import json
import types
from pathlib import Path

import torch

from .errors import CheckpointError
from .linear import best_ms
from .speech import SpeechDecoder


def load_snac(snac_dir: Path):
    from snac import SNAC

    cfg_path, weights = snac_dir / "config.json", snac_dir / "pytorch_model.bin"
    try:
        config = json.loads(cfg_path.read_text())
        model = SNAC(**config)
    except (OSError, json.JSONDecodeError, TypeError) as e:
        raise CheckpointError(f"{cfg_path}: not a SNAC config ({type(e).__name__}: {e})") from None
    try:
        state = torch.load(str(weights), map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{weights}: cannot read SNAC weights ({type(e).__name__}). Download it again.") from None
    try:
        model.load_state_dict(state)  # also accepts the weight_g/weight_v names of older weight_norm
    except RuntimeError as e:
        raise CheckpointError(f"{weights}: SNAC weights do not match {cfg_path}: {str(e).splitlines()[1:3]}") from None
    if config.get("sampling_rate", 24000) != 24000:
        raise CheckpointError(f"{cfg_path}: sampling_rate {config.get('sampling_rate')} (Mini-Omni2 speaks SNAC 24 kHz)")
    return _for_inference(model.eval())


def _for_inference(model):
    """Bake the weight norms into plain weights (recomputed on every call otherwise), run Snake in place, and on
    CPU the dilated depthwise convolutions as shifted multiply-adds and the pointwise and upsampling
    convolutions as matrix products.

    Same arithmetic as the snac package up to summation order, less than half the time per decode on CPU.
    """
    from torch.nn.utils import parametrize

    for module in model.modules():
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
        if type(module).__name__ == "Snake1d":
            module.register_buffer("inv_alpha", (module.alpha.detach() + 1e-9).reciprocal(), persistent=False)
            module.forward = types.MethodType(_snake_in_place, module)
        elif _is_dilated_depthwise(module):
            module.forward = types.MethodType(_dilated_depthwise, module)
        elif _is_pointwise(module):
            module.forward = types.MethodType(_pointwise, module)
        elif _is_upsampling(module):
            module.forward = types.MethodType(_upsampling, module)
    return model


def _is_pointwise(m) -> bool:
    """A kernel-1 convolution (the residual units' second one): a matrix product over the channels."""
    return type(m) is torch.nn.Conv1d and m.kernel_size == (1,) and m.groups == 1 and m.stride == (1,) \
        and m.padding == (0,) and m.dilation == (1,)


def _pointwise(self, x: torch.Tensor) -> torch.Tensor:
    """conv1d with kernel 1 as W @ x: oneDNN's convolution ran these at 30-60 GFLOPS, the product 2-4x faster
    (2-core Xeon). Other devices: the convolution."""
    if x.device.type != "cpu":
        return torch.nn.Conv1d.forward(self, x)
    w = self.weight[:, :, 0]
    if self.bias is None:
        return torch.matmul(w, x)
    if x.shape[0] == 1:
        return torch.addmm(self.bias[:, None], w, x[0]).unsqueeze(0)
    return torch.matmul(w, x) + self.bias[:, None]


def _is_upsampling(m) -> bool:
    """The decoder blocks' transposed convolutions: kernel 2 x stride, so each input step writes 2 output blocks."""
    return type(m) is torch.nn.ConvTranspose1d and m.groups == 1 and m.dilation == (1,) \
        and m.kernel_size[0] == 2 * m.stride[0] and m.padding_mode == "zeros"


def _upsampling(self, x: torch.Tensor) -> torch.Tensor:
    """conv_transpose1d (kernel 2s, stride s) as one matrix product and an overlap-add of its two halves:
    oneDNN's transposed convolution took 9-21 ms per SNAC layer for a 12-frame decode, this 4-8 ms (2-core Xeon).
    Other devices: the convolution."""
    if x.device.type != "cpu":
        return torch.nn.ConvTranspose1d.forward(self, x)
    if getattr(self, "_taps", None) is None or self._taps.dtype != self.weight.dtype:
        # [C_in, C_out, 2s] -> [C_out * 2s, C_in]: row (c, j) gives output tap j of channel c. A copy (43 MB for
        # SNAC 24 kHz): the transposed view of the weight multiplied 20-40 % slower in the decoder
        self._taps = self.weight.detach().permute(1, 2, 0).reshape(-1, self.in_channels).contiguous()
    B, _, T = x.shape
    s, pad, c_out = self.stride[0], self.padding[0], self.out_channels
    y = torch.matmul(self._taps, x).view(B, c_out, 2, s, T)  # input step t -> output blocks t (taps < s), t + 1
    blocks = torch.nn.functional.pad(y[:, :, 0], (0, 1))
    blocks[..., 1:] += y[:, :, 1]
    full = blocks.transpose(-1, -2).reshape(B, c_out, (T + 1) * s)
    length = (T - 1) * s - 2 * pad + self.kernel_size[0] + self.output_padding[0]
    out = full[..., pad:pad + length]
    if out.shape[-1] < length:
        out = torch.nn.functional.pad(out, (0, length - out.shape[-1]))
    return out + self.bias[:, None] if self.bias is not None else out.contiguous()


def _is_dilated_depthwise(m) -> bool:
    """The residual units' convolutions: one channel per group, dilation > 1, output as long as the input."""
    return (type(m) is torch.nn.Conv1d and m.groups == m.in_channels == m.out_channels and m.dilation[0] > 1
            and m.stride == (1,) and m.padding_mode == "zeros"
            and m.padding == ((m.kernel_size[0] - 1) * m.dilation[0] // 2,))


def _dilated_depthwise(self, x: torch.Tensor) -> torch.Tensor:
    """conv1d(groups=channels, dilation=d) as k shifted multiply-adds: oneDNN's dilated depthwise kernel is
    3-6x slower than this on CPU (the SNAC residual units, ~15 % of a decode). Other devices: the convolution."""
    if x.device.type != "cpu":
        return torch.nn.Conv1d.forward(self, x)
    length, d, pad = x.shape[-1], self.dilation[0], self.padding[0]
    w = self.weight[:, 0, :, None]  # [C, k, 1]
    xp = torch.nn.functional.pad(x, (pad, pad))
    y = xp[..., :length] * w[:, 0]
    if self.bias is not None:
        y += self.bias[:, None]
    for k in range(1, self.kernel_size[0]):
        y.addcmul_(xp[..., k * d:k * d + length], w[:, k])
    return y


def _snake_in_place(self, x: torch.Tensor) -> torch.Tensor:
    """snac's snake: x + 1/(alpha + 1e-9) * sin(alpha * x)^2, without the four temporaries."""
    shape = x.shape
    x = x.reshape(shape[0], shape[1], -1)
    y = torch.mul(self.alpha, x)
    y.sin_().pow_(2).mul_(self.inv_alpha)
    return y.add_(x).reshape(shape)


def warm_up(snac) -> None:
    """Decode silence once at each length the default smooth stream uses: the first call at a new length
    sets up the convolution kernels (~40-60 ms each on CPU), which would otherwise delay the first chunks."""
    dec = SpeechDecoder(snac)
    lengths, frame = set(), [0] * 7
    for _ in range(4 * dec.stride + dec.context + dec.lookahead):  # up to the first full-size chunk
        if (job := dec.add([frame])) is not None and len(job[0]) not in lengths:
            lengths.add(len(job[0]))
            dec.render(job)


def fastest_dtype(snac, frames: int = 8, reps: int = 2) -> torch.dtype:
    """torch.bfloat16 where this CPU decodes SNAC at least 20 % faster in it, else torch.float32. On a 2-core Zen 5
    EPYC (AVX512-BF16) a 20-frame decode takes 79 instead of 180 ms. For speed modes only: bf16 moves the
    waveform ~2 % (rms, with the decoder's noise off) from fp32's, far less than that noise moves it from one
    run to the next; the official code decodes in fp32. ~0.3 s; times a bf16 copy, `snac` is not changed."""
    g = torch.Generator().manual_seed(0)
    job = (torch.randint(0, 4096, (frames, 7), generator=g).tolist(), 0, frames)
    times = {}
    for dtype in (torch.float32, torch.bfloat16):
        model = snac if dtype == torch.float32 else copy.deepcopy(snac).to(dtype)
        dec = SpeechDecoder(model)
        dec.render(job)  # the first call at a length sets up the kernels
        times[dtype] = best_ms(lambda: dec.render(job), reps)
        del model, dec
    return torch.bfloat16 if times[torch.bfloat16] < 0.8 * times[torch.float32] else torch.float32
