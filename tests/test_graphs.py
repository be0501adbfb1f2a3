"""The static-shape decode step that CUDA graphs capture (omni/graphs.py), run eagerly on the CPU: the same
tokens as the ordinary loop, also for a second request over the same (stale) cache, and for both batch sizes."""

import pytest
import torch

import omni
from omni.graphs import StaticStepper


@pytest.fixture
def static_steps(tiny_model):
    lm = tiny_model.lm
    lm.graphs = {1: StaticStepper(lm, 1), 2: StaticStepper(lm, 2)}
    yield lm.graphs
    lm.graphs = None


def answers(model, media):
    opts = omni.DecodingOptions(max_new_tokens=20, ignore_stop=True)
    out = []
    for task, kw in (("A1A2", {"audio": media["speech16k"]}), ("T1A2", {"text": "what is in the picture"}),
                     ("T1T2", {"text": "hello there"}), ("A1A2", {"audio": media["speech16k"]})):
        r = model.generate(task, options=opts, **kw)
        out.append((r.text_ids, r.audio_ids))
    return out


def test_static_step_decodes_the_tokens_of_the_eager_loop(tiny_model, media, static_steps):
    static = answers(tiny_model, media)
    assert int(static_steps[2].pos) > 0 and int(static_steps[1].pos) > 0  # both were stepped
    # the static caches span the whole context and were written by the requests before: slots past the
    # position are masked, so the repeated first request still decodes the same
    assert static[0] == static[3]
    tiny_model.lm.graphs = None
    assert answers(tiny_model, media) == static
    assert static_steps[2].cache.capacity == tiny_model.cfg.block_size


def test_the_static_cache_starts_zeroed_and_the_position_is_checked(tiny_model):
    step = StaticStepper(tiny_model.lm, 2)
    assert all(bool((k == 0).all()) for k in step.cache.k)
    with pytest.raises(ValueError, match="past the KV cache"):
        step.step(torch.zeros(2, 8, dtype=torch.long), tiny_model.cfg.block_size)


def test_eager_steppers_are_used_without_captured_graphs(tiny_model):
    from omni.model import EagerStepper

    assert tiny_model.lm.graphs is None and tiny_model.decode_path == "eager"
    s = tiny_model.lm.stepper(2, 50)
    assert isinstance(s, EagerStepper) and s.cache.capacity == 50
