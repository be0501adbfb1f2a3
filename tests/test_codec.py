"""The SNAC codec as loaded (omni/codec.py): its faster CPU paths decode as the snac package does, the bf16 choice
and the warm-up."""

import numpy as np
import pytest
import torch

import omni


def test_prepared_snac_decodes_as_the_snac_package_does(tiny_ckpt, tiny_model):
    """load_snac bakes weight norms, runs Snake in place, the dilated depthwise convolutions as shifted
    multiply-adds and the pointwise and upsampling ones as matrix products; the waveform must stay the snac
    package's own (same noise seed)."""
    import json

    from snac import SNAC

    from omni.codec import _is_dilated_depthwise, _is_pointwise, _is_upsampling
    from omni.speech import frames_to_codes

    d = tiny_ckpt / "snac_24khz"
    ref = SNAC(**json.loads((d / "config.json").read_text()))
    ref.load_state_dict(torch.load(d / "pytorch_model.bin", weights_only=True))
    ref.eval()
    ours = tiny_model.snac
    for fast_path in (_is_dilated_depthwise, _is_pointwise, _is_upsampling):  # each is in use
        assert sum(fast_path(m) for m in ours.decoder.modules()) >= 2, fast_path.__name__
    rng = np.random.RandomState(1)
    codes = frames_to_codes([list(rng.randint(0, 4096, 7)) for _ in range(9)])
    with torch.inference_mode():
        torch.manual_seed(3)
        a = ours.decode(codes)
        torch.manual_seed(3)
        b = ref.decode(codes)
    assert a.shape == b.shape
    assert (a - b).abs().max() < 1e-4 * b.abs().max()


@pytest.mark.parametrize("stride,batch,bias", [(8, 1, True), (4, 2, True), (2, 1, False), (3, 1, True), (5, 2, False)])
@torch.inference_mode()
def test_upsampling_as_a_matrix_product_matches_conv_transpose(stride, batch, bias):
    """SNAC's padding (ceil(s/2)) and output_padding (s % 2) for any stride, batches, with and without bias."""
    import math
    import types

    from omni.codec import _is_upsampling, _upsampling

    torch.manual_seed(stride)
    conv = torch.nn.ConvTranspose1d(12, 6, 2 * stride, stride, padding=math.ceil(stride / 2),
                                    output_padding=stride % 2, bias=bias)
    x = torch.randn(batch, 12, 9)
    want = conv(x)
    assert _is_upsampling(conv)
    conv.forward = types.MethodType(_upsampling, conv)
    got = conv(x)
    assert got.shape == want.shape and torch.allclose(got, want, atol=1e-5)


def test_snac_in_bfloat16_is_chosen_by_timing_and_stays_close_to_float32(tiny_ckpt, monkeypatch, virtual_clock):
    """int8 mode may decode speech with a bf16 copy of SNAC where this CPU is faster in it (at least 20 %); the
    waveform (the decoder's noise left out) must stay close to fp32's, and the fp32 model is never changed.
    Timed on a virtual clock that each decode advances by its dtype's cost."""
    from omni import codec
    from omni.speech import frames_to_codes

    real = codec.SpeechDecoder.render

    def costs(fp32, bf16):
        def render(self, job):
            virtual_clock.advance(fp32 if next(self.snac.parameters()).dtype == torch.float32 else bf16)
            return real(self, job)
        return render

    monkeypatch.setattr(codec, "best_ms", virtual_clock.best_ms)
    snac = codec.load_snac(tiny_ckpt / "snac_24khz")
    for (fp32, bf16), want in (((1.0, 10.0), torch.float32), ((10.0, 1.0), torch.bfloat16),
                               ((10.0, 9.0), torch.float32)):  # 10 % faster: not worth it
        monkeypatch.setattr(codec.SpeechDecoder, "render", costs(fp32, bf16))
        assert codec.fastest_dtype(snac) == want
        assert next(snac.parameters()).dtype == torch.float32  # timed on a copy

    monkeypatch.setattr(codec.SpeechDecoder, "render", costs(10.0, 1.0))
    m = omni.load_model(tiny_ckpt, device="cpu", quantize="int8")
    assert m.snac_dtype == "bfloat16"
    assert omni.load_model(tiny_ckpt, device="cpu").snac_dtype == "float32"  # the exact mode never switches
    monkeypatch.setattr(codec.SpeechDecoder, "render", real)
    r = m.generate("T1A2", text="hi", options=omni.DecodingOptions(max_new_tokens=12, ignore_stop=True))
    assert r.audio.dtype == np.int16 and len(r.audio) == (12 - 7) * 2048 and np.abs(r.audio).max() > 0

    for mod in list(snac.modules()) + list(m.snac.modules()):
        if type(mod).__name__ == "NoiseBlock":
            mod.forward = lambda x: x  # random by design: would hide the dtype's own error
    rng = np.random.RandomState(2)
    codes = frames_to_codes([list(rng.randint(0, 4096, 7)) for _ in range(9)])
    with torch.inference_mode():
        want, got = snac.decode(codes), m.snac.decode(codes).float()
    err = float((got - want).norm() / want.norm())
    assert 0 < err < 0.05, err


def test_warm_up_decodes_each_length_of_the_default_stream_once(tiny_model, monkeypatch):
    from omni import codec

    lengths = []
    real = codec.SpeechDecoder.render
    monkeypatch.setattr(codec.SpeechDecoder, "render", lambda self, job: (lengths.append(len(job[0])), real(self, job))[1])
    codec.warm_up(tiny_model.snac)
    # chunks of 2, 2, 4, 4, 8, 8, 16 frames with up to 2 frames of context and 2 of lookahead
    assert lengths == [4, 6, 8, 12, 20]
