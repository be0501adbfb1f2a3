"""Special-token ids against the official constants (omni/config.py)."""

from omni.config import Vocab

V = Vocab()  # official sizes: text 152000, audio 4160


def test_special_ids_match_the_official_constants():
    assert (V.eot, V.pad_t, V.input_t, V.answer_t, V.asr) == (151936, 151937, 151938, 151939, 151940)
    assert (V.eoa, V.pad_a, V.input_a, V.answer_a, V.image, V.eoimage) == (4096, 4097, 4098, 4099, 4101, 4102)
    # the per-layer table of spec section 3
    assert [V.layershift(V.eoa, i) for i in range(7)] == [156096, 160256, 164416, 168576, 172736, 176896, 181056]
    assert V.layershift(4159, 6) == 181119
