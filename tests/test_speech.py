"""Speech out (omni/speech.py): the delay pattern undone, the SNAC frame order, the chunks the decoder picks
(smooth and official), and the speech stream."""

import numpy as np
import torch

from omni.speech import frames_from_delayed, frames_to_codes


def test_snac_frame_order():
    frames = [[10 * t + j for j in range(7)] for t in range(3)]
    c0, c1, c2 = frames_to_codes(frames)
    assert c0.shape == (1, 3) and c1.shape == (1, 6) and c2.shape == (1, 12)
    t = 2
    assert c0[0, t] == frames[t][0]
    assert (c1[0, 2 * t], c1[0, 2 * t + 1]) == (frames[t][1], frames[t][4])
    assert [int(c2[0, 4 * t + i]) for i in range(4)] == [frames[t][2], frames[t][3], frames[t][5], frames[t][6]]


def test_snac_frames_round_trip():
    g = torch.Generator().manual_seed(1)
    codes = [torch.randint(0, 4096, (1, n), generator=g) for n in (5, 10, 20)]
    c0, c1, c2 = (c[0].tolist() for c in codes)
    # each frame read from the codes by the spec's order: coarse, mid-a, fine-a, fine-b, mid-b, fine-c, fine-d
    frames = [[c0[t], c1[2 * t], c2[4 * t], c2[4 * t + 1], c1[2 * t + 1], c2[4 * t + 2], c2[4 * t + 3]]
              for t in range(5)]
    back = frames_to_codes(frames)
    assert all(torch.equal(a, b) for a, b in zip(codes, back))


def test_delay_pattern_undo():
    # row j at step k holds 1000*j + k: frame f, layer j must come from step f + j + 1
    rows = [[1000 * j + k for k in range(12)] for j in range(7)]
    frames = frames_from_delayed(rows)
    assert len(frames) == 12 - 7
    assert frames[0] == [1000 * j + j + 1 for j in range(7)]
    assert frames[4][6] == 6000 + 4 + 7
    assert frames_from_delayed(rows, n_frames=1, start=2) == [frames[2]]
    assert frames_from_delayed([r[:7] for r in rows]) == []


def test_a_speech_stream_renders_the_chunks_its_decoder_picks(tiny_model, monkeypatch):
    """Entries in (the delayed layout), PCM out: each frame reaches the chunk picker once complete, the tail comes
    with finish(), none without the flush; on a worker thread (overlap) the same chunks come, in order."""
    import snac.layers

    from omni.speech import SpeechDecoder, SpeechStream

    monkeypatch.setattr(snac.layers.NoiseBlock, "forward", lambda self, x: x)  # SNAC adds random noise otherwise
    rng = np.random.RandomState(0)
    entries = [list(rng.randint(0, 4096, 7)) for _ in range(30)]
    frames = frames_from_delayed([[e[j] for e in entries] for j in range(7)])
    picker = SpeechDecoder(tiny_model.snac, 4096, stride=4)
    want = [picker.render(job) for job in [picker.add([f]) for f in frames] + [picker.flush()] if job is not None]
    for overlap in (False, True):
        stream = SpeechStream(tiny_model.snac, 4096, stride=4, overlap=overlap)
        try:
            got = [chunk for e in entries for chunk in stream.add(e)] + list(stream.finish())
        finally:
            stream.close()
        assert stream.rows == [[e[j] for e in entries] for j in range(7)]
        assert [len(c) for c in got] == [len(c) for c in want] and sum(map(len, got)) == len(frames) * 2048
        # the same samples (up to float summation order on another thread, as SNAC's convolutions may split)
        assert all(np.abs(a.astype(np.int32) - b).max() <= (4 if overlap else 0) for a, b in zip(got, want))
    unflushed = SpeechStream(tiny_model.snac, 4096, stride=4)
    kept = [chunk for e in entries for chunk in unflushed.add(e)] + list(unflushed.finish(flush=False))
    assert sum(map(len, kept)) < len(frames) * 2048  # the tail is not played without the flush


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


def test_first_smooth_chunk_waits_only_for_its_lookahead(tiny_model):
    from omni.speech import SpeechDecoder

    dec = SpeechDecoder(tiny_model.snac, 4096, mode="smooth", first=2, lookahead=2)
    frame = [1, 2, 3, 4, 5, 6, 7]
    assert all(dec.add([frame]) is None for _ in range(3))
    frames, skip, count = dec.add([frame])  # the 4th frame lets the first two be decoded seamlessly
    assert (len(frames), skip, count) == (4, 0, 2)
    assert len(dec.render((frames, skip, count))) == 2 * 2048
