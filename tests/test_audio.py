"""Audio in (omni/audio.py): loading as the official ffmpeg path, the Whisper encoder against openai-whisper, and
the ways of computing its attention."""

import numpy as np
import pytest
import torch


def test_audio_loading_matches_whisper_ffmpeg_path_for_16k_wav(media):
    import whisper

    from omni.audio import load_audio

    ours = load_audio(media["speech16k"])
    ref = whisper.load_audio(str(media["speech16k"]))  # ffmpeg, as the official code
    assert np.array_equal(ours, ref)


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
