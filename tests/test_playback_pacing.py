"""Playback pacing: the prebuffer absorbs an uneven start, a model slower than real time pauses a few times
instead of stuttering, and a complete answer is never held back."""

import time

import numpy as np
import pytest
from webui_fixtures import OUT, SR, Options, run_realtime, silence

from omni.events import AudioChunk, Finished, Result, Stats
from webui.engine import Engine, EngineConfig, freeze_heap


class UnevenModel:
    """Speaks a steady tone in chunks that arrive on a fixed schedule: [(delay before the chunk, seconds)]."""

    def __init__(self, schedule, device="cpu", quantize=None):
        self.schedule, self.device, self.quantize = schedule, device, quantize

    def stream(self, task, audio=None, image=None, text=None, options=None, stride=None, mode="smooth", cancel=None):
        stats = Stats(task=task, prompt_length=10)
        t = np.arange(int(sum(s for _, s in self.schedule) * OUT)) / OUT
        pcm = (0.3 * np.sin(2 * np.pi * 220 * t) * 32767).astype(np.int16)
        pos, t0 = 0, time.monotonic()
        for delay, seconds in self.schedule:
            time.sleep(delay)
            n = int(seconds * OUT)
            stats.audio_seconds += n / OUT
            yield AudioChunk(pcm[pos:pos + n])
            pos += n
        stats.total_s = time.monotonic() - t0
        yield Finished(Result(task, 10, [], [], "", pcm, stats))


# like int8 on 2 cores: two short chunks, the second one late, then the pace is comfortably real time
UNEVEN = [(0.1, 0.17), (0.35, 0.17), (0.15, 0.34), (0.2, 0.34), (0.2, 0.68), (0.4, 0.68)]


def played_speech(model, prebuffer_s, listen_s=4.0, session=None, **config):
    engine = Engine(model, EngineConfig(policy="off", prebuffer_s=prebuffer_s, **config), recordings_dir=None,
                    options_cls=Options)
    freeze_heap()  # as the apps do once loaded: a full GC pass of this test process stalls every thread ~0.3 s
    try:
        s = engine.new_session()
        s.attach_transport()
        s.send_text("hello", speak=True)
        t_sent = time.monotonic()
        played = run_realtime(s, silence(listen_s, SR))
        loud = [p.t for p in played if p.rms > 0.05]
        if session is not None:
            session.append(s)
        gaps = np.diff(loud) - 0.02  # silence between consecutive 20 ms frames of speech
        return loud[0] - t_sent, gaps, len(loud) * 0.02
    finally:
        engine.close()


def test_prebuffer_trades_a_short_wait_for_gap_free_speech():
    total = sum(s for _, s in UNEVEN)
    start0, gaps0, heard0 = played_speech(UnevenModel(UNEVEN), 0.0)
    start, gaps, heard = played_speech(UnevenModel(UNEVEN), 0.3)
    gap0, gap = gaps0.max(), gaps.max()
    assert heard0 == pytest.approx(total, abs=0.08) and heard == pytest.approx(total, abs=0.08)  # nothing lost
    assert gap0 > 0.15  # without a prebuffer the first chunk plays at once and then the output runs dry
    # with it, playback waits for the second chunk (0.45 s in) and then never stops
    assert 0.45 <= start < 1.0 and start > start0 + 0.2 and gap < 0.1, (start0, start, gap)


def test_a_model_slower_than_real_time_pauses_a_few_times_instead_of_stuttering():
    slow = [(0.3, 0.2)] * 10  # 0.2 s of speech every 0.3 s: 1.5 x real time
    _, gaps0, heard0 = played_speech(UnevenModel(slow), 0.0, listen_s=4.5)
    _, gaps, heard = played_speech(UnevenModel(slow), 0.3, listen_s=4.5)
    assert heard0 == pytest.approx(2.0, abs=0.08) and heard == pytest.approx(2.0, abs=0.08)  # nothing lost
    assert (gaps0 > 0.04).sum() >= 6  # a player without a buffer runs dry at nearly every chunk
    # ran dry once or twice: each time it waits for twice the buffer (0.6 s), so the pause is long but rare
    assert 1 <= (gaps > 0.04).sum() <= 2 and gaps.max() > 0.4, gaps[gaps > 0.04]


def test_prebuffer_does_not_hold_back_a_finished_short_answer():
    start, _, heard_s = played_speech(UnevenModel([(0.1, 0.1)]), 1.0)
    assert start < 0.35 and heard_s == pytest.approx(0.1, abs=0.04)


def test_a_prebuffer_above_max_ahead_does_not_wait_forever():
    """Generation pauses once max_ahead_s of speech is waiting; playback must not wait for more than that."""
    start, gaps, heard = played_speech(UnevenModel([(0.05, 0.5)] * 6), 5.0, listen_s=4.5, max_ahead_s=1.0)
    assert start < 0.5 and heard == pytest.approx(3.0, abs=0.08) and gaps.max() < 0.1


@pytest.mark.parametrize("quantize,fix", [(None, "--quantize int8"), ("int8", "--prebuffer")])
def test_an_answer_slower_than_real_time_says_what_would_make_speech_smooth(quantize, fix):
    slow = [(0.3, 0.2)] * 6  # 1.5 x real time: playback runs dry
    session = []
    played_speech(UnevenModel(slow, quantize=quantize), 0.3, listen_s=3.5, session=session)
    s = session[0]
    turn = s.history[-1]
    assert turn.status == "done" and turn.timings.rebuffers >= 1 and turn.timings.real_time_factor > 1.2
    assert "slower than it plays" in s.notice and fix in s.notice, s.notice
    assert s.snapshot()["notice"] == s.notice  # what both pages show in their status line


def test_an_answer_faster_than_real_time_gets_no_speed_hint():
    session = []
    played_speech(UnevenModel(UNEVEN), 0.3, session=session)
    s = session[0]
    assert s.history[-1].status == "done" and s.history[-1].timings.real_time_factor < 1
    assert s.notice == ""
