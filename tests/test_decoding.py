"""The decode-loop rules, checked with a scripted LM whose outputs we choose and whose inputs we record:
delay-slot feedback, the layer-6 eoa stop, eot->pad forcing, entry-0 quirks, batch-of-2 text guidance,
budget, cancellation, and the sampler."""

import threading

import pytest
import torch

from omni.config import Vocab
from omni.decoding import DecodingOptions, Sampler, speech_entries, text_entries
from omni.model import EagerStepper

V = Vocab()
PAD_A = [V.layershift(V.pad_a, i) for i in range(7)]


class ScriptedLM:
    """Stands in for OmniLM in the loops: row b's hidden state is b; logits come from per-step scripts."""

    def __init__(self, text_script, audio_script):
        self.text_script, self.audio_script = text_script, audio_script  # step -> {row: id(s)}
        self.step = -1
        self.fed: list[torch.Tensor] = []  # ids given to embed_step, one [B, 8] per decode step
        self.starts: list[int] = []

    def new_cache(self, batch, capacity):
        return None

    def stepper(self, batch, capacity):
        return EagerStepper(self, batch, capacity)

    def __call__(self, x, cache, start):
        self.step += 1
        self.starts.append(start)
        B, L = x.shape[:2]
        return torch.arange(B, dtype=torch.float).view(B, 1, 1).expand(B, L, 1).clone()

    def prefill(self, x, cache):
        return self(x, cache, 0)[:, -1]

    def embed_step(self, ids):
        self.fed.append(ids.clone())
        return torch.zeros(ids.shape[0], 1, 1)

    def _row(self, h):
        return int(h[0, 0])

    def text_logits(self, h):
        out = torch.zeros(h.shape[0], V.text_vocab_size)
        out[0, self.text_script(self.step, self._row(h))] = 1.0
        return out

    def text_argmax(self, h):  # as OmniLM without a screen
        return self.text_logits(h).argmax(dim=-1)

    def audio_argmax(self, h):
        return self.audio_logits(h).argmax(dim=-1)

    def audio_logits(self, h):
        out = torch.zeros(h.shape[0], 7, V.audio_vocab_size)
        for j, tok in enumerate(self.audio_script(self.step, self._row(h))):
            out[0, j, tok] = 1.0
        return out


def prefill(batch, length=5):
    return torch.zeros(batch, length, 1)


def run_speech(text_fn, audio_fn, batch=2, n=10, cancel=None):
    lm = ScriptedLM(text_fn, audio_fn)
    info = {}
    entries = list(speech_entries(lm, V, prefill(batch), n, DecodingOptions(), cancel, info))
    return lm, entries, info


def codes(step):
    return [(step * 10 + j) % 4096 for j in range(7)]


def test_batch_of_2_takes_audio_from_row_0_text_from_row_1_and_feeds_both():
    text = {0: 100, 1: 101, 2: 102, 3: 103}
    lm, entries, info = run_speech(lambda s, row: text.get(s, 104) + (5000 if row == 0 else 0),
                                   lambda s, row: codes(s) if row == 0 else [1] * 7, n=5)
    assert [e[7] for e in entries] == [100, 101, 102, 103, 104]  # row 1's text; row 0's text ignored
    assert [e[:7] for e in entries] == [codes(s) for s in range(5)]
    assert len(lm.fed) == 4 and lm.starts == [0, 5, 6, 7, 8]
    for k, ids in enumerate(lm.fed):  # decode step k+1 is fed entry k
        prev = entries[k]
        assert ids[0, :7].tolist() == [V.layershift(a, i) for i, a in enumerate(prev[:7])]
        assert ids[1, :7].tolist() == PAD_A  # row 1 always gets pad_a on the audio layers
        assert ids[0, 7] == ids[1, 7] == prev[7]  # both rows get row 1's text
    assert info["stop"] == "budget"


def test_stop_before_the_step_whose_layer_6_is_eoa_but_not_at_entry_0():
    def audio(s, row):
        c = codes(s)
        if s in (0, 4):
            c[6] = V.eoa
        if s == 2:
            c[3] = V.eoa  # an eoa on another layer does not stop
        return c
    lm, entries, info = run_speech(lambda s, r: 100 + s, audio)
    assert len(entries) == 4 and entries[0][6] == V.eoa
    assert info["stop"] == "eoa"


def test_ignore_stop_runs_the_whole_budget_with_the_same_entries_before_the_stop():
    """Benchmarks time a long answer even where random weights end it early (vLLM's ignore_eos)."""
    def audio(s, row):
        c = codes(s)
        if s == 4:
            c[6] = V.eoa
        return c
    _, stopped, _ = run_speech(lambda s, r: 100 + s, audio)
    lm = ScriptedLM(lambda s, r: 100 + s, audio)
    info = {}
    entries = list(speech_entries(lm, V, prefill(2), 10, DecodingOptions(ignore_stop=True), None, info))
    assert len(stopped) == 4 and len(entries) == 10 and entries[:4] == stopped
    assert entries[4][6] == V.eoa and info["stop"] == "budget"
    script = {1: 7, 2: V.eot}
    lm = ScriptedLM(lambda s, r: script.get(s, 9), lambda s, r: [0] * 7)
    out = list(text_entries(lm, V, prefill(1), 6, DecodingOptions(ignore_stop=True), None, info))
    assert out == [9, 7, V.eot, 9, 9, 9] and info["stop"] == "budget"


def test_eot_is_fed_back_once_then_text_is_forced_to_pad():
    lm, entries, _ = run_speech(lambda s, r: V.eot if s == 2 else 100 + s, lambda s, r: codes(s), n=7)
    assert [e[7] for e in entries] == [100, 101, V.eot, V.pad_t, V.pad_t, V.pad_t, V.pad_t]
    assert lm.fed[2][0, 7] == V.eot and lm.fed[3][0, 7] == V.pad_t


@pytest.mark.parametrize("opts", [DecodingOptions(), DecodingOptions(temperature=0.01, top_k=2, seed=0)])
def test_greedy_skips_the_text_head_once_text_is_forced_and_sampling_still_draws_it(opts):
    lm = ScriptedLM(lambda s, r: V.eot if s == 2 else 100 + s, lambda s, r: codes(s))
    calls = []
    real = lm.text_logits
    lm.text_logits = lambda h: (calls.append(lm.step), real(h))[1]
    entries = list(speech_entries(lm, V, prefill(2), 7, opts))
    assert [e[7] for e in entries][2:] == [V.eot] + [V.pad_t] * 4
    # greedy: the head runs up to the eot step only; sampling draws every step (the official random stream)
    assert calls == ([0, 1, 2] if opts.greedy else list(range(7)))


def test_eot_at_entry_0_does_not_start_pad_forcing():
    _, entries, _ = run_speech(lambda s, r: V.eot if s == 0 else 100 + s, lambda s, r: codes(s), n=4)
    assert [e[7] for e in entries] == [V.eot, 101, 102, 103]


def test_single_row_feeds_its_own_text():
    lm, entries, _ = run_speech(lambda s, r: 200 + s, lambda s, r: codes(s), batch=1, n=4)
    assert [e[7] for e in entries] == [200, 201, 202, 203]
    assert all(ids.shape == (1, 8) for ids in lm.fed)
    assert lm.fed[1][0, 7] == 201


def test_budget_is_entries_not_steps():
    lm, entries, info = run_speech(lambda s, r: 100, lambda s, r: codes(s), n=1)
    assert len(entries) == 1 and lm.fed == [] and info["stop"] == "budget"


def test_cancel_stops_within_one_step():
    cancel = threading.Event()
    lm = ScriptedLM(lambda s, r: 100 + s, lambda s, r: codes(s))
    info = {}
    got = []
    for e in speech_entries(lm, V, prefill(2), 50, DecodingOptions(), cancel, info):
        got.append(e)
        if len(got) == 3:
            cancel.set()
    assert len(got) == 3 and lm.step == 2 and info["stop"] == "cancelled"


def test_text_loop_keeps_entry_0_eot_stops_at_next_eot_and_feeds_pad_a():
    script = {0: V.eot, 1: 7, 2: 8, 3: V.eot}
    lm = ScriptedLM(lambda s, r: script.get(s, 9), lambda s, r: [0] * 7)
    info = {}
    out = list(text_entries(lm, V, prefill(1), 10, DecodingOptions(), None, info))
    assert out == [V.eot, 7, 8] and info["stop"] == "eot"
    assert all(ids[0, :7].tolist() == PAD_A for ids in lm.fed)
    assert [int(ids[0, 7]) for ids in lm.fed] == [V.eot, 7, 8]


def test_sampler_greedy_topk_topp_and_seed():
    logits = torch.tensor([[0.0, 3.0, 2.9, -1.0]])
    assert Sampler(DecodingOptions(), "cpu")(logits).tolist() == [1]
    assert Sampler(DecodingOptions(temperature=0.9, top_k=1), "cpu")(logits).tolist() == [1]
    draws = lambda seed: [int(Sampler(DecodingOptions(temperature=5.0, seed=seed), "cpu")(logits.repeat(64, 1))[i])
                          for i in range(64)]
    assert draws(3) == draws(3)
    assert len(set(draws(3))) > 1  # a high temperature really samples
    top2 = Sampler(DecodingOptions(temperature=5.0, top_k=2, seed=0), "cpu")(logits.repeat(200, 1))
    assert set(top2.tolist()) == {1, 2}
    nucleus = Sampler(DecodingOptions(temperature=1.0, top_p=0.5, seed=0), "cpu")(logits.repeat(200, 1))
    assert set(nucleus.tolist()) == {1}  # the top token alone already holds >= 50 % of the mass


@pytest.mark.parametrize("bad", [dict(max_new_tokens=0), dict(temperature=-1), dict(top_k=0), dict(top_p=1.5)])
def test_bad_options_are_rejected(bad):
    from omni.errors import OmniInputError

    with pytest.raises(OmniInputError):
        DecodingOptions(**bad).validate()


def test_sampling_stops_with_a_message_on_nan_scores():
    """float16 can overflow: multinomial on NaN would fail (on a GPU as a device-side assert that breaks every
    later request), so a sampled step with NaN/inf scores ends the request with a clear error instead."""
    from omni.decoding import Sampler
    from omni.errors import OmniError

    logits = torch.randn(1, 50)
    sample = Sampler(DecodingOptions(temperature=0.8, top_k=10, seed=1), "cpu")
    assert 0 <= int(sample(logits)[0]) < 50
    logits[0, 3] = float("nan")
    with pytest.raises(OmniError, match="bfloat16"):
        sample(logits)
