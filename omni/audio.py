"""Audio in: any file or array -> 16 kHz mono float32, then Whisper's 30 s log-mel and encoder features."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .errors import CheckpointError, OmniInputError, check_input_file
from .linear import best_ms, fast_linear_cast

SAMPLE_RATE = 16000
N_SAMPLES = 30 * SAMPLE_RATE  # Whisper's window
# The longest input the prompts can hold: int(ms / 20) + 1 must stay <= 1500 Whisper frames.
MAX_SAMPLES = N_SAMPLES - 1
MAX_AUDIO_BYTES = 100 * 1024 * 1024
MIN_SAMPLES = SAMPLE_RATE // 10  # 0.1 s: shorter is almost surely a mistake


class UnreadableAudio(OmniInputError):
    """A file that is not audio any decoder here can read."""


def to_mono_float32(data: np.ndarray) -> np.ndarray:
    """int16/int32/uint8/float samples, mono or multi-channel (either axis) -> mono float32 in [-1, 1]."""
    data = np.asarray(data)
    if data.dtype == np.int16:
        data = data.astype(np.float32) / 32768.0
    elif data.dtype == np.int32:
        data = data.astype(np.float32) / 2147483648.0
    elif data.dtype == np.uint8:
        data = (data.astype(np.float32) - 128.0) / 128.0
    else:
        data = data.astype(np.float32)
    if data.ndim == 2:  # (samples, channels) from files or (channels, samples) from WebRTC: average, as ffmpeg -ac 1
        data = data.mean(axis=0 if data.shape[0] < data.shape[1] else 1)
    elif data.ndim != 1:
        raise OmniInputError(f"audio array must be 1-D (mono) or 2-D (samples x channels), got shape {data.shape}")
    return data


def load_audio(audio, sample_rate: int | None = None) -> np.ndarray:
    """A path, a (sample_rate, array) tuple or an array at `sample_rate` -> 16 kHz mono float32 in [-1, 1].

    Like the official ffmpeg path, the result is quantised to 16-bit, so a 16 kHz mono 16-bit WAV gives
    exactly the samples the official code sees. Other rates are resampled with soxr.
    """
    if isinstance(audio, tuple) and len(audio) == 2:
        sample_rate, audio = audio
    if isinstance(audio, (str, Path)):
        audio, sample_rate = read_audio_file(Path(audio))
    elif sample_rate is None:
        raise OmniInputError("an audio array needs its sample rate: pass (sample_rate, array)")
    data = to_mono_float32(audio)
    if not np.all(np.isfinite(data)):
        raise OmniInputError("audio contains NaN or infinite samples")
    if sample_rate != SAMPLE_RATE:
        if sample_rate <= 0:
            raise OmniInputError(f"bad sample rate {sample_rate}")
        import soxr

        data = soxr.resample(data, sample_rate, SAMPLE_RATE, quality="HQ").astype(np.float32)
    if len(data) < MIN_SAMPLES:
        raise OmniInputError(f"audio is empty or too short ({len(data) / SAMPLE_RATE:.2f} s); record at least 0.1 s")
    if len(data) > MAX_SAMPLES:
        warnings.warn(f"audio is {len(data) / SAMPLE_RATE:.1f} s long; only the first 30 s are used", stacklevel=2)
        data = data[:MAX_SAMPLES]
    # 16-bit quantisation as ffmpeg's s16le output (then / 32768 as whisper.load_audio does)
    return (np.clip(np.round(data * 32768.0), -32768, 32767).astype(np.int16).astype(np.float32) / 32768.0)


def read_audio_file(path: Path) -> tuple[np.ndarray, int]:
    """An audio file as it is stored -> (samples, sample rate); clear errors for a missing, empty, oversized or
    undecodable file. `load_audio` goes on from here; the app reads uploads with it too."""
    import soundfile as sf

    check_input_file(path, "audio", MAX_AUDIO_BYTES)
    try:
        data, sr = sf.read(str(path), dtype="int16", always_2d=False)
        return data, sr
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError):
        pass
    try:  # mp3/m4a/webm and other formats soundfile cannot read
        import librosa

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            data, sr = librosa.load(str(path), sr=None, mono=True)
        return data, int(sr)
    except Exception as e:
        raise UnreadableAudio(f"cannot decode audio file {path} ({type(e).__name__}); use a WAV, FLAC, OGG or MP3 "
                              f"file") from None


# -- Whisper encoder -----------------------------------------------------------------------------------
def log_mel(audio16k: np.ndarray) -> torch.Tensor:
    """Whisper's 80-bin log-mel of the audio padded to 30 s: [80, 3000]."""
    import whisper

    return whisper.log_mel_spectrogram(whisper.pad_or_trim(torch.from_numpy(audio16k)))


def warm_up() -> None:
    """Compute one log-mel: the first call reads the mel filters and plans the FFT (~0.3 s on a 2-core CPU),
    which would otherwise delay the first question."""
    log_mel(np.zeros(MIN_SAMPLES, np.float32))


def _whisper_linear(x: torch.Tensor, mod: torch.nn.Module) -> torch.Tensor:
    if not isinstance(mod, torch.nn.Linear):  # int8 mode: a dynamically quantised module
        return mod(x)
    return fast_linear_cast(x, mod.weight, mod.bias)


def _split_heads(t: torch.Tensor, n_head: int) -> torch.Tensor:
    """[B, T, width] -> [B, n_head, T, width / n_head]"""
    return t.view(*t.shape[:2], n_head, -1).transpose(1, 2)


# How Whisper's attention is computed. "sdpa" (parity mode): F.scaled_dot_product_attention in the input's dtype.
# Speed modes may pick, by timing at load: "sdpa-bf16", the same kernel on bf16 copies (fast where the CPU has AMX),
# or "matmul-bf16": per head two bf16 matrix products around a softmax computed in fp32 and stored in bf16
# (fast where the CPU has AVX512-BF16 dot products but no AMX; the scores are rounded to bf16, as in
# Hugging Face's eager bf16 attention, so it is a little less exact than "sdpa-bf16").
ATTENTION_KINDS = ("sdpa", "sdpa-bf16", "matmul-bf16")


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kind: str = "sdpa") -> torch.Tensor:
    """Unmasked attention [B, H, Tq, D] x [B, H, T, D] -> [B, H, Tq, D] in q's dtype, computed the `kind` way."""
    if kind == "sdpa" or (kind == "sdpa-bf16" and q.dtype == torch.bfloat16):
        return F.scaled_dot_product_attention(q, k, v)
    if kind == "sdpa-bf16":
        return F.scaled_dot_product_attention(q.bfloat16(), k.bfloat16(), v.bfloat16()).to(q.dtype)
    if kind != "matmul-bf16":
        raise ValueError(f"unknown attention kind {kind!r} (one of {', '.join(ATTENTION_KINDS)})")
    B, H, Tq, D = q.shape
    qb = (q * D ** -0.5).bfloat16()  # the scale before rounding (a power of 2 for Whisper's 64-wide heads)
    kb, vb = k.bfloat16(), v.bfloat16()
    out = torch.empty(B, H, Tq, D, dtype=torch.bfloat16, device=q.device)
    for b in range(B):
        for h in range(H):  # one head's [Tq, T] scores at a time stay in the cache (4.5 MB for Whisper)
            torch.mm(torch.mm(qb[b, h], kb[b, h].t()).softmax(-1), vb[b, h], out=out[b, h])
    return out.to(q.dtype)


def whisper_encode(enc, mel: torch.Tensor, n_keep: int | None = None, cancel=None,
                   attention_kind: str = "sdpa") -> torch.Tensor | None:
    """openai-whisper's `AudioEncoder.forward` (same modules, same operations), with two speed-ups:
    linear layers go through `fast_linear`, and the last block computes its queries, MLP and ln_post only for
    the first `n_keep` positions (the prompt uses no others; keys and values still span the whole 30 s window,
    so the kept rows are unchanged). mel [B, n_mels, 3000] -> [B, n_keep or 1500, width]; None if the
    `cancel` event is set (checked between blocks). `attention_kind` (see ATTENTION_KINDS; a speed mode's choice)
    says how the attention itself is computed; by default as the official code, in the input's dtype."""
    x = F.gelu(enc.conv1(mel))
    x = F.gelu(enc.conv2(x)).permute(0, 2, 1)
    x = (x + enc.positional_embedding).to(x.dtype)
    last = len(enc.blocks) - 1
    for i, block in enumerate(enc.blocks):
        if cancel is not None and cancel.is_set():
            return None
        attn, keep = block.attn, (n_keep if i == last else None)
        h = block.attn_ln(x)
        q = _split_heads(_whisper_linear(h[:, :keep], attn.query), attn.n_head)
        k = _split_heads(_whisper_linear(h, attn.key), attn.n_head)
        v = _split_heads(_whisper_linear(h, attn.value), attn.n_head)
        a = attention(q, k, v, attention_kind).transpose(1, 2).flatten(2)
        x = x[:, :keep] + _whisper_linear(a, attn.out)
        fc, act, proj = block.mlp
        x = x + _whisper_linear(act(_whisper_linear(block.mlp_ln(x), fc)), proj)
    return enc.ln_post(x)


def fastest_attention(dims, candidates=("sdpa-bf16", "matmul-bf16"), reps: int = 2) -> str:
    """The fastest way to compute attention over Whisper's whole window on this CPU with these dims: the fastest of
    `candidates` if it beat fp32 "sdpa" by 20 %, else "sdpa". On a 2-core Xeon with AMX, "sdpa-bf16" took 19 instead
    of 44 ms a layer; on a 2-core EPYC (AVX512-BF16, no AMX) "matmul-bf16" took 29 instead of 47 ms, and
    "sdpa-bf16" was no faster. ~0.5 s; for speed modes only (fp32 "sdpa" is the parity path)."""
    g = torch.Generator().manual_seed(0)
    shape = (1, dims.n_audio_head, dims.n_audio_ctx, dims.n_audio_state // dims.n_audio_head)
    q, k, v = (torch.randn(shape, generator=g) for _ in range(3))

    def attention_ms(kind: str) -> float:
        attention(q, k, v, kind)  # the first call sets up the kernels
        return best_ms(lambda: attention(q, k, v, kind), reps)

    with torch.inference_mode():
        fp32 = attention_ms("sdpa")
        times = {kind: attention_ms(kind) for kind in candidates}
    best = min(times, key=times.get, default="sdpa")
    return best if best != "sdpa" and times[best] < 0.8 * fp32 else "sdpa"


def load_whisper_encoder(path: Path):
    """The audio encoder of an openai-whisper checkpoint (small.pt), computing in fp32, with the stored
    positional embedding; fp16-saved weights stay fp16 (cast per call)."""
    import whisper.model as whisper_model
    from whisper.model import AudioEncoder, ModelDimensions

    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)  # only encoder pages are read
    except Exception as e:
        raise CheckpointError(f"{path}: cannot read the Whisper checkpoint ({type(e).__name__}). Download it again.") from None
    if not isinstance(ckpt, dict) or "dims" not in ckpt or "model_state_dict" not in ckpt:
        raise CheckpointError(f"{path}: not an openai-whisper checkpoint (needs 'dims' and 'model_state_dict')")
    dims = ModelDimensions(**ckpt["dims"])
    with torch.device("meta"):  # no throw-away random init: the weights come from the file
        enc = AudioEncoder(dims.n_mels, dims.n_audio_ctx, dims.n_audio_state, dims.n_audio_head, dims.n_audio_layer)
    # Whisper's Linear/Conv1d cast their weights to the input's dtype on every call, so fp16 weights (OpenAI's
    # files) can stay fp16 in memory: the fp32 values computed with are the same, at half the memory (-168 MB),
    # for a cast per call (~40 ms of a 1.9 s encode on a CPU).
    cast_by_module = {f"{name}.{p}" for name, mod in enc.named_modules()
                      if isinstance(mod, (whisper_model.Linear, whisper_model.Conv1d)) for p in ("weight", "bias")}
    sd = {}
    for k, v in ckpt["model_state_dict"].items():
        if k.startswith("encoder."):
            k = k[len("encoder."):]
            if k in cast_by_module and v.dtype in (torch.float16, torch.float32):
                sd[k] = v.clone()
            else:
                sd[k] = v.float()
    want = enc.state_dict()
    missing = sorted(set(want) - set(sd))
    bad = [k for k in want if k in sd and tuple(sd[k].shape) != tuple(want[k].shape)]
    if missing or bad:
        raise CheckpointError(f"{path}: Whisper encoder keys missing {missing[:4]} or mis-shaped {bad[:4]}")
    enc.load_state_dict(sd, strict=False, assign=True)  # positional_embedding too: from the file, not recomputed
    return enc.eval(), dims
