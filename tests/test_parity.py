"""Token parity with the official implementation.

tests/data/official_tokens.json holds the greedy tokens that the official Mini-Omni2 code produced (CPU, fp32) on
random checkpoints from `omni tiny --seed S`, for deterministic inputs rebuilt here. The cases cover all six
tasks, both audio layouts, the image layout with its one-slot feature shift, eot->pad forcing, the layer-6 eoa
stop, eot stops of the text tasks and budget-limited answers.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import omni
from omni.bench import spoken_question

DATA = json.loads((Path(__file__).parent / "data" / "official_tokens.json").read_text())
CASES = DATA["cases"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    from PIL import Image

    d = tmp_path_factory.mktemp("parity")
    out = {}
    for seconds in sorted({c["audio_seconds"] for c in CASES}):
        sr, x = spoken_question(seconds)
        path = d / f"q{seconds}.wav"
        sf.write(path, np.round(x * 32767).astype(np.int16), sr, subtype="PCM_16")
        out[seconds] = path
    Image.fromarray((np.random.RandomState(0).rand(240, 320, 3) * 255).astype(np.uint8)).save(d / "img.png")
    out["image"] = d / "img.png"
    return out


@pytest.fixture(scope="module")
def models(tiny_model, tmp_path_factory):
    cache = {0: tiny_model}  # the session's tiny checkpoint is seed 0

    def get(seed):
        if seed not in cache:
            d = omni.make_tiny_checkpoint(tmp_path_factory.mktemp(f"seed{seed}") / "ckpt", seed=seed)
            cache[seed] = omni.load_model(d, device="cpu")
        return cache[seed]
    return get


def test_cases_cover_the_rules():
    tasks = {c["task"] for c in CASES}
    assert tasks == set(omni.TASKS)
    speech = [c["official"] for c in CASES if c["task"] in omni.SPEECH_TASKS]
    assert any(151937 in o["text"] for o in speech)  # eot -> pad forcing happened
    assert any(len(o["text"]) < 64 for o in speech)  # a layer-6 eoa stop happened


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"seed{c['seed']}-{c['task']}-{c['text'] or c['audio_seconds']}")
def test_greedy_tokens_equal_the_official_code(case, models, inputs):
    model = models(case["seed"])
    result = model.generate(case["task"], audio=inputs[case["audio_seconds"]], image=inputs["image"],
                            text=case["text"], options=omni.DecodingOptions(max_new_tokens=case["max_new_tokens"]),
                            decode_audio=False)
    assert model.token_record(result) == case["official"]
