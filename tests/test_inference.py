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


def test_budget_error_comes_before_the_encoders_run(tiny_model, media, monkeypatch):
    ran = []
    monkeypatch.setattr(tiny_model, "_whisper_features", lambda samples: ran.append(1))
    with pytest.raises(omni.OmniInputError, match="exceeds"):
        tiny_model.generate("A1A2", audio=media["speech16k"], options=omni.DecodingOptions(max_new_tokens=2040))
    assert ran == []


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
