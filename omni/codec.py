"""SNAC 24 kHz speech codec: loading, and turning delayed token rows into PCM chunks while they are generated."""

from __future__ import annotations

import copy
import json
import types
from pathlib import Path

import numpy as np
import torch

from .errors import CheckpointError
from .linear import best_ms
from .tokens import frames_to_codes

SAMPLES_PER_FRAME = 2048  # one 7-token frame = 4 codebook-2 codes x 512-sample hop = 85.3 ms at 24 kHz


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


def to_int16(wave: torch.Tensor, official: bool = False) -> np.ndarray:
    x = wave.detach().reshape(-1).cpu().double().numpy()  # on the CPU first: MPS has no float64
    if official:  # float64 * 32768 -> int16 by truncation, as the official server does
        return (x * 32768).astype(np.int16)
    return np.clip(np.round(x * 32767.0), -32768, 32767).astype(np.int16)


class SpeechDecoder:
    """Turns complete 7-token frames into PCM jobs as they arrive.

    mode "official": every `stride` frames are decoded on their own (clicks at chunk borders; a tail of up to
    stride-1 frames is never played), as the official server does.
    mode "smooth" (default): chunks start at `first` frames and double every second chunk up to `stride`, so
    the first sound comes early, the player's buffer grows, and later chunks cost less SNAC time per frame
    (on 2 CPU cores, int8: sizes 2,2,4,4,... start as early as 1,1,2,2,... once gaps are counted). Each chunk is
    decoded with `context` frames before it and `lookahead` frames after it (waiting for those), so its samples
    match a whole-utterance decode and chunk borders join without a click; `flush()` plays the tail. Frames
    holding a special id (>= n_codes) play as silence. `add`/`flush` only pick frames (cheap, in order); `render`
    runs SNAC, so it can run on a worker thread. `stride` defaults to 16 frames (smooth) or 4 (official).
    """

    def __init__(self, snac, n_codes: int = 4096, stride: int | None = None, mode: str = "smooth",
                 context: int = 2, lookahead: int = 2, first: int = 2):
        if mode not in ("smooth", "official"):
            raise ValueError(f"mode must be 'smooth' or 'official', not {mode!r}")
        if stride is None:
            stride = 16 if mode == "smooth" else 4
        self.snac, self.n_codes, self.stride, self.mode = snac, n_codes, max(1, stride), mode
        smooth = mode == "smooth"
        self.context, self.lookahead = (context, lookahead) if smooth else (0, 0)
        self.chunk = min(max(1, first), self.stride) if smooth else self.stride  # size of the next chunk
        self.frames: list[list[int]] = []
        self.emitted = 0  # frames already handed out as jobs
        self.n_chunks = 0

    def add(self, frames: list[list[int]]) -> tuple | None:
        """Add newly completed frames; return a render job if a chunk is due."""
        self.frames.extend(frames)
        ready = len(self.frames) - self.lookahead
        if ready - self.emitted < self.chunk:
            return None
        if self.mode == "official":
            end = self.emitted + (ready - self.emitted) // self.stride * self.stride
        else:
            end = ready
            self.n_chunks += 1
            if self.n_chunks % 2 == 0:  # sizes 2, 2, 4, 4, 8, 8, ...: the buffer grows before the chunks do
                self.chunk = min(self.chunk * 2, self.stride)
        return self._job(self.emitted, end)

    def flush(self) -> tuple | None:
        """A job for the frames not yet played (none in official mode: the official stream drops them)."""
        if self.mode == "official" or self.emitted >= len(self.frames):
            return None
        return self._job(self.emitted, len(self.frames))

    def _job(self, start: int, end: int) -> tuple:
        first, last = max(0, start - self.context), min(len(self.frames), end + self.lookahead)
        self.emitted = end
        return self.frames[first:last], start - first, end - start

    def render(self, job: tuple) -> np.ndarray:
        """job (frames, skip, count) -> int16 PCM of `count` frames starting `skip` frames into `frames`."""
        frames, skip, count = job
        bad = [i for i, f in enumerate(frames) if any(t >= self.n_codes or t < 0 for t in f)]
        if bad:
            frames = [[0] * 7 if i in bad else f for i, f in enumerate(frames)]
        device = next(self.snac.parameters()).device
        with torch.inference_mode():
            wave = self.snac.decode([c.to(device) for c in frames_to_codes(frames)]).reshape(-1).float()
            for i in bad:
                wave[i * SAMPLES_PER_FRAME:(i + 1) * SAMPLES_PER_FRAME] = 0
        wave = wave[skip * SAMPLES_PER_FRAME:(skip + count) * SAMPLES_PER_FRAME]
        return to_int16(wave, official=self.mode == "official")


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


def decode_frames(snac, frames: list[list[int]], n_codes: int = 4096) -> np.ndarray:
    """Whole-utterance decode in one SNAC call (used for --out-wav and replay)."""
    if not frames:
        return np.zeros(0, np.int16)
    dec = SpeechDecoder(snac, n_codes, stride=len(frames), mode="smooth", context=0, lookahead=0, first=len(frames))
    return dec.render(dec.add(frames))
