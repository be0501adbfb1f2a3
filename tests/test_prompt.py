"""Prompt layouts against the spec's tables (official vocabulary)."""

import torch

from omni.config import Vocab
from omni.prompt import build_prompt, whisper_frames

V = Vocab()  # official sizes: text 152000, audio 4160


def test_whisper_frame_count_and_prompt_lengths():
    assert whisper_frames(int(3.2 * 16000)) == 161  # spec 8.2 worked example
    assert build_prompt("A1A2", V, n_frames=161).length == 164
    assert build_prompt("IMAGE_A1A2", V, n_frames=161, n_image=50).length == 216
    assert whisper_frames(479_999) == 1500 and whisper_frames(480_000) == 1501


def test_a1a2_batch_layout():
    p = build_prompt("A1A2", V, n_frames=3)
    assert p.ids.shape == (2, 8, 6) and p.audio_slots == (1, 3) and p.image_slots is None
    assert p.ids[0, 0].tolist() == [156098, 156097, 156097, 156097, 156096, 156099]
    assert p.ids[0, 6].tolist() == [181058, 181057, 181057, 181057, 181056, 181059]
    assert p.ids[0, 7].tolist() == [151938, 151937, 151937, 151937, 151936, 151939]
    # row 1 is the A1T2 row: identical except the last audio token is pad_a
    assert p.ids[1, 0].tolist() == [156098, 156097, 156097, 156097, 156096, 156097]
    assert torch.equal(p.ids[0, :, :-1], p.ids[1, :, :-1]) and torch.equal(p.ids[0, 7], p.ids[1, 7])


def test_a1t2_and_asr_layouts():
    a = build_prompt("A1T2", V, n_frames=2)
    assert a.ids.shape == (1, 8, 5)
    assert a.ids[0, 2].tolist() == [164418, 164417, 164417, 164416, 164417]
    assert a.ids[0, 7].tolist() == [151938, 151937, 151937, 151936, 151939]
    asr = build_prompt("ASR", V, n_frames=2)
    assert asr.ids[0, 7].tolist() == [151938, 151937, 151937, 151936, 151940]
    assert torch.equal(asr.ids[0, :7], a.ids[0, :7])


def test_text_layouts():
    ta = build_prompt("T1A2", V, text_ids=[10, 20])
    assert ta.ids.shape == (1, 8, 5) and ta.audio_slots is None
    assert ta.ids[0, 0].tolist() == [156097, 156097, 156097, 156097, 156099]
    assert ta.ids[0, 7].tolist() == [151938, 10, 20, 151936, 151939]
    tt = build_prompt("T1T2", V, text_ids=[10, 20])
    assert tt.ids[0, 5].tolist() == [176897] * 5
    assert tt.ids[0, 7].tolist() == [151938, 10, 20, 151936, 151939]


def test_image_layout_and_one_slot_feature_shift():
    p = build_prompt("IMAGE_A1A2", V, n_frames=2, n_image=50)
    assert p.ids.shape == (2, 8, 57)
    assert p.ids[0, 0].tolist() == [156101] + [156097] * 50 + [156102, 156098, 156097, 156097, 156096, 156099]
    assert p.ids[0, 3, 0] == 168581 and p.ids[0, 3, 51] == 168582  # image / eoimage on layer 3
    assert p.ids[1, 0, -1] == 156097
    assert p.ids[0, 7].tolist() == [151937] * 56 + [151939]
    assert p.image_slots == (1, 50)
    assert p.audio_slots == (52, 2)  # the first Whisper feature lands on input_a (position 52)
