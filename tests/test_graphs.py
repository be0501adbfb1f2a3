"""The static-shape decode step that CUDA graphs capture (omni/graphs.py), run eagerly on the CPU: the same
tokens as the ordinary loop, also for a second request over the same (stale) cache, for both batch sizes, and for
requests decoding at once, each on a stepper of its own."""

import pytest
import torch

import omni
from omni.events import Finished
from omni.graphs import StaticStepper, static_steppers


@pytest.fixture
def static_steps(tiny_model):
    lm = tiny_model.lm
    lm.static_steps = static_steppers(lm, slots=2)
    yield lm.static_steps
    lm.static_steps = None


def answers(model, media):
    opts = omni.DecodingOptions(max_new_tokens=20, ignore_stop=True)
    out = []
    for task, kw in (("A1A2", {"audio": media["speech16k"]}), ("T1A2", {"text": "what is in the picture"}),
                     ("T1T2", {"text": "hello there"}), ("A1A2", {"audio": media["speech16k"]})):
        r = model.generate(task, options=opts, **kw)
        out.append((r.text_ids, r.audio_ids))
    return out


def test_static_step_decodes_the_tokens_of_the_eager_loop(tiny_model, media, static_steps):
    taken = []
    take = static_steps.take
    static_steps.take = lambda b: taken.append(b) or take(b)
    static = answers(tiny_model, media)
    assert sorted(set(taken)) == [1, 2]  # both batch sizes stepped statically
    assert static_steps.free(1) == 2 and static_steps.free(2) == 2  # every stepper given back
    # the static caches span the whole context and were written by the requests before: slots past the
    # position are masked, so the repeated first request still decodes the same
    assert static[0] == static[3]
    tiny_model.lm.static_steps = None
    assert answers(tiny_model, media) == static


def interleaved(model, requests: list[tuple[str, dict]], opts) -> list[list]:
    """Advance every request's stream one event at a time, round-robin, as the app's model worker does."""
    streams = [model.stream(task, options=opts, **kw) for task, kw in requests]
    results: list = [None] * len(streams)
    while any(r is None for r in results):
        for i, s in enumerate(streams):
            if results[i] is None:
                ev = next(s)
                if isinstance(ev, Finished):
                    results[i] = [ev.result.text_ids, ev.result.audio_ids]
    return results


def test_requests_decoding_at_once_each_keep_their_own_cache(tiny_model, media, static_steps):
    """Four requests interleaved with two steppers per batch size step statically, each on a cache of its own; a
    fifth finds the pool empty and decodes eagerly. Each answer equals its solo run, token for token."""
    opts = omni.DecodingOptions(max_new_tokens=30, ignore_stop=True)
    requests = [("A1A2", {"audio": media["speech16k"]}), ("T1A2", {"text": "hello there"}),
                ("A1A2", {"audio": media["flac"]}), ("T1T2", {"text": "what is the weather like today"})]
    solo = [interleaved(tiny_model, [r], opts)[0] for r in requests]
    assert solo[1][0] != solo[3][0]  # different prompts: a shared cache would show
    lent = []
    take = static_steps.take
    static_steps.take = lambda b: (lambda s: lent.append(s) or s)(take(b))
    together = interleaved(tiny_model, requests, opts)
    assert len(lent) == 4 and None not in lent
    assert together == solo
    more = interleaved(tiny_model, requests + [("T1A2", {"text": "and one more"})], opts)
    assert lent[-1] is None  # a third batch-1 request while two hold the batch-1 steppers: eager
    assert more[:4] == solo
    assert static_steps.free(1) == 2 and static_steps.free(2) == 2


def test_a_stepper_comes_back_when_a_request_is_abandoned(tiny_model, static_steps):
    """A stream closed early (a cancelled or interrupted answer) returns its stepper at once."""
    s = tiny_model.stream("T1T2", text="hello there", options=omni.DecodingOptions(max_new_tokens=20))
    next(s)
    assert static_steps.free(1) == 1
    s.close()
    assert static_steps.free(1) == 2


def test_the_static_cache_starts_zeroed_and_the_position_is_checked(tiny_model):
    step = StaticStepper(tiny_model.lm, 2)
    assert all(bool((k == 0).all()) for k in step.cache.k)
    assert step.cache.capacity == tiny_model.cfg.block_size
    with pytest.raises(ValueError, match="past the KV cache"):
        step.step(torch.zeros(2, 8, dtype=torch.long), tiny_model.cfg.block_size)


def test_eager_steppers_are_used_without_captured_graphs(tiny_model):
    from omni.model import EagerStepper

    assert tiny_model.lm.static_steps is None and tiny_model.decode_path == "eager"
    s = tiny_model.lm.stepper(2, 50)
    assert isinstance(s, EagerStepper) and s.cache.capacity == 50
