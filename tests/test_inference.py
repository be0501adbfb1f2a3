"""The public API on a tiny random checkpoint: every task, streaming events and modes, cancellation, budget."""

import threading

import numpy as np
import pytest
import torch

import omni
from omni.events import AudioChunk, Finished, TextDelta
from omni.speech import frames_from_delayed

N = 24
OPTS = omni.DecodingOptions(max_new_tokens=N)


def inputs(media):
    return dict(audio=media["speech16k"], image=media["image"], text="What is the capital of France?")


@pytest.mark.parametrize("task", omni.TASKS)
def test_every_task_generates_with_the_official_structure(tiny_model, media, task):
    r = tiny_model.generate(task, **inputs(media), options=OPTS)
    assert r.task == task and r.stats.prompt_length == r.prompt_length
    if task in omni.SPEECH_TASKS:
        assert len(r.audio_ids) == 7 and all(len(row) == len(r.text_ids) for row in r.audio_ids)
        assert 1 <= len(r.text_ids) <= N
        n_frames = len(frames_from_delayed(r.audio_ids))
        assert n_frames == max(0, len(r.text_ids) - 7)
        assert len(r.audio) == n_frames * 2048 and r.audio.dtype == np.int16
    else:
        assert r.audio_ids == [] and len(r.audio) == 0
    # the text is the answer's text tokens decoded, up to the eot that ends it (in a text answer an eot sampled
    # from the prefill, entry 0, does not); special ids are not text
    eot, first = tiny_model.vocab.eot, 0 if task in omni.SPEECH_TASKS else 1
    end = r.text_ids.index(eot, first) if eot in r.text_ids[first:] else len(r.text_ids)
    assert r.text == tiny_model.tokenizer.decode([t for t in r.text_ids[:end] if t < eot])


def test_stream_and_generate_give_the_same_tokens_in_both_modes(tiny_model, media):
    ref = tiny_model.generate("A1A2", audio=media["speech16k"], options=OPTS)
    for mode in ("smooth", "official"):
        fin = [e for e in tiny_model.stream("A1A2", audio=media["speech16k"], options=OPTS, mode=mode)
               if isinstance(e, Finished)][0]
        assert fin.result.text_ids == ref.text_ids and fin.result.audio_ids == ref.audio_ids


def test_snac_on_a_worker_thread_gives_the_same_stream(tiny_model, media, monkeypatch):
    """overlap=True (the CUDA default) renders on a worker thread; the events are those of the serial CPU path."""
    import snac.layers

    monkeypatch.setattr(snac.layers.NoiseBlock, "forward", lambda self, x: x)  # SNAC adds random noise otherwise
    runs = {}
    for overlap in (False, True):
        events = list(tiny_model.stream("A1A2", audio=media["speech16k"], options=OPTS, overlap=overlap))
        runs[overlap] = ("".join(e.text for e in events if isinstance(e, TextDelta)),
                         [e.pcm for e in events if isinstance(e, AudioChunk)], events[-1].result.audio_ids)
    (text0, pcm0, ids0), (text1, pcm1, ids1) = runs[False], runs[True]
    assert text0 == text1 and ids0 == ids1 and len(pcm0) == len(pcm1) > 1
    # the same samples up to float summation order (a thread may split SNAC's convolutions differently)
    assert all(len(a) == len(b) and np.abs(a.astype(np.int32) - b).max() <= 4 for a, b in zip(pcm0, pcm1))


def test_official_chunking_drops_the_tail_and_smooth_mode_keeps_it(tiny_model, media):
    q = dict(audio=media["speech16k"], options=omni.DecodingOptions(max_new_tokens=N))
    off = list(tiny_model.stream("A1A2", mode="official", stride=4, **q))
    n_frames = len(off[-1].result.text_ids) - 7
    assert n_frames >= 9  # enough for two chunks and a tail
    chunks = [e.pcm for e in off if isinstance(e, AudioChunk)]
    assert [len(c) for c in chunks] == [4 * 2048] * (n_frames // 4)  # 16,384-byte chunks, the tail is lost
    smooth = list(tiny_model.stream("A1A2", mode="smooth", stride=4, **q))
    total = sum(len(e.pcm) for e in smooth if isinstance(e, AudioChunk))
    assert total == n_frames * 2048
    fin = smooth[-1]
    assert isinstance(fin, Finished) and fin.stats.audio_seconds == pytest.approx(total / 24000)
    assert fin.stats.time_to_first_audio_s is not None and fin.stats.steps == n_frames + 6


def _chunked(snac, frames, **kw) -> list[np.ndarray]:
    from omni.speech import SpeechDecoder

    dec = SpeechDecoder(snac, 4096, **kw)
    jobs = [dec.add([f]) for f in frames] + [dec.flush()]
    return [dec.render(j).astype(np.float64) for j in jobs if j is not None]


def test_smooth_chunks_match_a_whole_utterance_decode_and_official_ones_click(tiny_model, monkeypatch):
    """With left context and lookahead, every smooth chunk equals the same samples of a whole-utterance decode
    (SNAC's noise switched off so the two can be compared); official chunks (no context) jump at the borders."""
    import snac.layers

    from omni.speech import decode_frames

    monkeypatch.setattr(snac.layers.NoiseBlock, "forward", lambda self, x: x)
    rng = np.random.RandomState(0)
    frames = [list(rng.randint(0, 4096, 7)) for _ in range(40)]
    whole = decode_frames(tiny_model.snac, frames).astype(np.float64)
    smooth = _chunked(tiny_model.snac, frames, stride=8, mode="smooth")
    assert [len(c) // 2048 for c in smooth] == [2, 2, 4, 4, 8, 8, 8, 4]  # doubling every 2nd chunk up to the stride; the tail
    joined = np.concatenate(smooth)
    assert len(joined) == len(whole)
    peak = np.abs(whole).max()
    assert np.abs(joined - whole).max() < 0.01 * peak
    official = np.concatenate(_chunked(tiny_model.snac, frames, stride=4, mode="official"))
    assert np.abs(official - whole[:len(official)]).max() > 0.05 * peak
    no_lookahead = np.concatenate(_chunked(tiny_model.snac, frames, stride=8, mode="smooth", lookahead=0))
    assert np.abs(no_lookahead - whole).max() > 0.05 * peak  # what the lookahead is for


def test_warm_up_decodes_each_length_of_the_default_stream_once(tiny_model, monkeypatch):
    from omni import codec

    lengths = []
    real = codec.SpeechDecoder.render
    monkeypatch.setattr(codec.SpeechDecoder, "render", lambda self, job: (lengths.append(len(job[0])), real(self, job))[1])
    codec.warm_up(tiny_model.snac)
    # chunks of 2, 2, 4, 4, 8, 8, 16 frames with up to 2 frames of context and 2 of lookahead
    assert lengths == [4, 6, 8, 12, 20]


def test_first_smooth_chunk_waits_only_for_its_lookahead(tiny_model):
    from omni.speech import SpeechDecoder

    dec = SpeechDecoder(tiny_model.snac, 4096, mode="smooth", first=2, lookahead=2)
    frame = [1, 2, 3, 4, 5, 6, 7]
    assert all(dec.add([frame]) is None for _ in range(3))
    frames, skip, count = dec.add([frame])  # the 4th frame lets the first two be decoded seamlessly
    assert (len(frames), skip, count) == (4, 0, 2)
    assert len(dec.render((frames, skip, count))) == 2 * 2048


def test_text_deltas_concatenate_to_the_final_text(tiny_model):
    events = list(tiny_model.stream("T1T2", text="Tell me a story", options=OPTS))
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert text == events[-1].result.text and len(text) > 0


def test_cancel_stops_within_one_step_and_reports_it(tiny_model, media, monkeypatch):
    lm = tiny_model.lm
    calls = []
    real_forward = lm.forward
    monkeypatch.setattr(lm, "forward", lambda *a, **k: (calls.append(1), real_forward(*a, **k))[1])
    cancel = threading.Event()
    forwards_at_cancel = None
    fin = None
    for ev in tiny_model.stream("A1A2", audio=media["speech16k"], options=omni.DecodingOptions(max_new_tokens=200),
                                cancel=cancel):
        if forwards_at_cancel is None and len(calls) >= 3:  # cancel a few steps into the answer
            cancel.set()
            forwards_at_cancel = len(calls)
        if isinstance(ev, Finished):
            fin = ev
    assert fin.stats.cancelled and fin.stats.stop_reason == "cancelled"
    assert forwards_at_cancel is not None and len(calls) <= forwards_at_cancel + 1  # at most one more step
    assert fin.stats.steps < 199


def test_consumer_stopping_early_frees_the_generator(tiny_model):
    gen = tiny_model.stream("T1T2", text="hi", options=omni.DecodingOptions(max_new_tokens=50))
    next(gen)
    gen.close()  # must not raise; the KV cache goes with the closed loop
    r = tiny_model.generate("T1T2", text="hi", options=omni.DecodingOptions(max_new_tokens=5))
    assert len(r.text_ids) >= 1


def test_greedy_is_deterministic_and_seeded_sampling_reproducible(tiny_model):
    g1 = tiny_model.generate("T1A2", text="hello", options=OPTS)
    g2 = tiny_model.generate("T1A2", text="hello", options=OPTS)
    assert g1.text_ids == g2.text_ids and g1.audio_ids == g2.audio_ids
    s = lambda seed: tiny_model.generate("T1T2", text="hello", options=omni.DecodingOptions(
        max_new_tokens=12, temperature=1.5, seed=seed)).text_ids
    assert s(1) == s(1) and s(1) != s(2)


def test_budget_beyond_the_context_is_refused_before_any_work(tiny_model):
    with pytest.raises(omni.OmniInputError, match="exceeds the model's 2048-token context"):
        tiny_model.generate("T1T2", text="hi", options=omni.DecodingOptions(max_new_tokens=2046))
    r = tiny_model.generate("T1T2", text="hi", options=omni.DecodingOptions(max_new_tokens=3))
    assert len(r.text_ids) <= 3


def test_audio_as_array_at_any_rate_and_channels(tiny_model, media):
    import soundfile as sf

    data, sr = sf.read(media["stereo"], dtype="float32")
    assert data.ndim == 2 and sr != 16000
    r = tiny_model.generate("ASR", audio=(sr, data), options=omni.DecodingOptions(max_new_tokens=4))
    r2 = tiny_model.generate("ASR", audio=media["stereo"], options=omni.DecodingOptions(max_new_tokens=4))
    assert r.prompt_length == r2.prompt_length > 3


def test_int8_speed_mode_runs(tiny_ckpt, tiny_model, media):
    m = omni.load_model(tiny_ckpt, device="cpu", quantize="int8")
    # the whole budget (int8 rounding differs between CPUs' engines; random weights may end an answer early)
    r = m.generate("A1A2", audio=media["speech16k"], options=omni.DecodingOptions(max_new_tokens=10, ignore_stop=True))
    assert len(r.text_ids) == 10 and len(r.audio) == 3 * 2048
    # the int8 head slices (quantised from views of the shared matrix) approximate the fp32 heads
    h = torch.randn(2, m.cfg.n_embd, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        for head in ("text_logits", "audio_logits"):
            got, want = getattr(m.lm, head)(h).flatten(), getattr(tiny_model.lm, head)(h).flatten()
            assert got.shape == want.shape and torch.corrcoef(torch.stack([got, want]))[0, 1] > 0.99


def test_budget_error_comes_before_the_encoders_run(tiny_model, media, monkeypatch):
    ran = []
    monkeypatch.setattr(tiny_model, "_whisper_features", lambda samples: ran.append(1))
    with pytest.raises(omni.OmniInputError, match="exceeds"):
        tiny_model.generate("A1A2", audio=media["speech16k"], options=omni.DecodingOptions(max_new_tokens=2040))
    assert ran == []


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


def test_a_request_reuses_the_features_of_the_audio_just_encoded(tiny_model, media, monkeypatch):
    """The app encodes a spoken turn while the end-of-turn silence runs out; the answer must then skip Whisper
    and give the tokens it gives without that head start."""
    import threading

    from omni import audio as audio_io

    opts = omni.DecodingOptions(max_new_tokens=12)
    want = tiny_model.generate("A1A2", audio=media["speech16k"], options=opts)
    fresh = omni.load_model(tiny_model.checkpoint_dir, device="cpu").generate("A1A2", audio=media["stereo"],
                                                                               options=opts)
    tiny_model.forget_audio()
    calls = []
    real = audio_io.whisper_encode
    monkeypatch.setattr(audio_io, "whisper_encode", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    cancelled = threading.Event()
    cancelled.set()
    assert tiny_model.encode_audio(media["stereo"], cancel=cancelled) is None  # stopped, nothing kept
    feats = tiny_model.encode_audio(media["stereo"])
    assert feats is not None and len(calls) == 2
    got = tiny_model.generate("A1A2", audio=media["stereo"], options=opts)
    assert len(calls) == 2  # Whisper did not run again
    assert got.text_ids == fresh.text_ids and got.audio_ids == fresh.audio_ids
    again = tiny_model.generate("A1A2", audio=media["speech16k"], options=opts)  # other audio: encoded anew
    assert len(calls) == 3 and again.text_ids == want.text_ids and again.audio_ids == want.audio_ids


def test_the_features_of_the_last_few_audios_are_kept(tiny_model, media, monkeypatch):
    """Several people's turns encoded early, one after another: each answer finds its own features; the oldest
    are dropped past KEPT_FEATURES."""
    from omni import audio as audio_io
    from omni.inference import KEPT_FEATURES

    tiny_model.forget_audio()
    calls = []
    real = audio_io.whisper_encode
    monkeypatch.setattr(audio_io, "whisper_encode", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    base = audio_io.load_audio(media["speech16k"])
    audios = [(16000, base * (1 - 0.01 * i)) for i in range(KEPT_FEATURES + 1)]  # different samples, same length
    firsts = [tiny_model.encode_audio(a) for a in audios[:KEPT_FEATURES]]
    assert len(calls) == KEPT_FEATURES
    for a, f in zip(audios[:KEPT_FEATURES], firsts):
        assert torch.equal(tiny_model.encode_audio(a), f)
    assert len(calls) == KEPT_FEATURES  # every one reused
    tiny_model.encode_audio(audios[-1])  # one more: the least recently used is dropped
    tiny_model.encode_audio(audios[0])
    assert len(calls) == KEPT_FEATURES + 2
    tiny_model.encode_audio(audios[-1])
    assert len(calls) == KEPT_FEATURES + 2


def test_int8_parts_are_packed_for_the_engine_timed_fastest(monkeypatch, virtual_clock):
    """fastest_engine times each quantised engine's packing of one matmul and keeps the quickest, but another
    engine must be clearly faster (15 %) to replace "x86", whose packing takes half the memory. Timed on a virtual
    clock that each packed layer's call advances by its engine's cost."""
    from omni import quantize

    assert len(quantize.engines()) >= 2  # the pinned CPU torch ships x86 (fbgemm) and oneDNN
    first, other = quantize.engines()[:2]
    real, cost = quantize._dynamic, {}

    def packed_with_cost(module, engine=None):
        out = real(module, engine)
        forward = out.forward
        out.forward = lambda x: (virtual_clock.advance(cost[engine]), forward(x))[1]
        return out
    monkeypatch.setattr(quantize, "_dynamic", packed_with_cost)
    monkeypatch.setattr(quantize, "best_ms", virtual_clock.best_ms)
    for first_ms, other_ms, want in ((10.0, 1.0, other), (1.0, 0.8, other),  # 20 % faster
                                     (1.0, 0.9, first),  # 10 % faster: not enough
                                     (0.9, 1.0, first)):
        cost.update({first: first_ms, other: other_ms})
        assert quantize.fastest_engine(8, 32, 16, reps=2) == want, (first_ms, other_ms)


@torch.inference_mode()
def test_int8_packings_give_the_same_values():
    """The engine choice is speed only: x86/fbgemm and oneDNN packings of one weight compute the same."""
    import copy

    from omni import quantize

    torch.manual_seed(0)
    lin, x = torch.nn.Linear(48, 40), torch.randn(30, 48)
    outs = [quantize._dynamic(torch.nn.Sequential(copy.deepcopy(lin)), e)(x) for e in quantize.engines()]
    assert all(torch.allclose(o, outs[0], atol=1e-5) for o in outs)
    assert torch.allclose(outs[0], lin(x), atol=0.05)  # and approximate the float layer


def test_int8_load_reports_its_engines(tiny_ckpt):
    m = omni.load_model(tiny_ckpt, device="cpu", quantize="int8")
    assert set(m.int8_engines) == {"lm", "whisper"}
    from omni import quantize
    assert set(m.int8_engines.values()) <= set(quantize.engines())


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


def test_loading_leaves_glibc_keeping_freed_heap(tiny_ckpt, monkeypatch):
    """After loading, large temporaries must be reused, not handed back and faulted in again on every call
    (setting the mmap threshold pins glibc's trim threshold at 128 KiB: oneDNN int8 matmuls ran 2x slower)."""
    from omni import device

    calls = []

    class FakeLibc:
        def mallopt(self, param, value):
            calls.append((param, value))

        def malloc_trim(self, pad):
            pass
    monkeypatch.setattr(device, "_glibc", lambda: FakeLibc())
    omni.load_model(tiny_ckpt, device="cpu")
    final = dict(calls)  # the last value set for each parameter
    assert final[-3] == 32 << 20  # M_MMAP_THRESHOLD
    assert final[-1] >= 256 << 20  # M_TRIM_THRESHOLD


@torch.inference_mode()
def test_int8_fuses_each_blocks_gate_and_up_projection(tiny_ckpt, tiny_model):
    """int8 decodes with one [fc_1; fc_2] layer per block, quantised per output channel: close to the fp32 MLP."""
    m = omni.load_model(tiny_ckpt, device="cpu", quantize="int8")
    x = torch.randn(2, 1, m.cfg.n_embd, generator=torch.Generator().manual_seed(0))
    for ours, ref in zip(m.lm.transformer.h, tiny_model.lm.transformer.h):
        assert ours.mlp.gate_up is not None and not hasattr(ours.mlp, "fc_1") and not hasattr(ours.mlp, "fc_2")
        got, want = ours.mlp(x).flatten(), ref.mlp(x).flatten()
        assert torch.corrcoef(torch.stack([got, want]))[0, 1] > 0.99
    assert m.lm.whisper_adapter.gate_up is None  # the adapters run once a request: left as they were
