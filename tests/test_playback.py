"""The player on a clock the test sets: prebuffering, real-time pacing, rebuffering, and how much was heard."""

import numpy as np

from webui.playback import NEVER, Player

RATE = 24000
FRAME = 480  # 20 ms


def chunk(s: float) -> np.ndarray:
    return np.ones(int(s * RATE), np.int16)


def test_playback_starts_once_the_prebuffer_is_queued_then_keeps_real_time_pace():
    p = Player()
    p.start(prebuffer_s=0.3, max_ahead_s=3.0)
    p.add(chunk(0.2))
    assert p.pull(FRAME, 10.0, generating=True, lead_s=0.04) == (None, NEVER)  # 0.2 s < prebuffer
    p.add(chunk(0.2))
    frame, _ = p.pull(FRAME, 10.0, generating=True, lead_s=0.04)
    assert frame is not None and len(frame) == FRAME and p.speaking_since == 10.0
    frame, _ = p.pull(FRAME, 10.0, generating=True, lead_s=0.04)  # the second is due 20 ms - 40 ms lead: now
    assert frame is not None
    assert p.pull(FRAME, 10.0, generating=True, lead_s=0.04)[0] is not None  # the third is due at 40 - 40 ms
    frame, when = p.pull(FRAME, 10.0, generating=True, lead_s=0.04)  # the fourth only at 10.0 + 0.06 - 0.04
    assert frame is None and abs(when - 10.02) < 1e-9
    assert p.pull(FRAME, 10.02 + 1e-6, generating=True, lead_s=0.04)[0] is not None
    assert abs(p.heard_s(10.03, flushed=False) - 0.03) < 1e-9  # 80 ms handed out, 50 ms still ahead of the clock
    assert abs(p.heard_s(10.03, flushed=True) - 0.08) < 1e-9


def test_a_finished_answer_plays_at_once_and_a_dry_run_while_generating_waits_for_twice_as_much():
    p = Player()
    p.start(prebuffer_s=0.3, max_ahead_s=3.0)
    p.add(chunk(0.1))
    assert p.pull(FRAME, 0.0, generating=False, lead_s=0.0)[0] is not None  # complete: no prebuffer wait
    p.start(prebuffer_s=0.3, max_ahead_s=3.0)
    p.add(chunk(0.3))
    t = 0.0
    while p.queued_s:
        frame, when = p.pull(FRAME, t, generating=True, lead_s=0.0)
        t = t if frame is not None else when
    t = p.heard_by  # all of it heard, nothing more generated yet
    assert p.pull(FRAME, t, generating=True, lead_s=0.0) == (None, NEVER)
    assert p.rebuffers == 1
    p.add(chunk(0.5))
    assert p.pull(FRAME, t, generating=True, lead_s=0.0)[0] is None  # 0.5 s < 2 x 0.3
    p.add(chunk(0.2))
    assert p.pull(FRAME, t, generating=True, lead_s=0.0)[0] is not None


def test_the_refill_target_never_exceeds_max_ahead_and_quiet_at_follows_the_clock():
    p = Player()
    p.start(prebuffer_s=5.0, max_ahead_s=1.0)  # a prebuffer above max_ahead would never be reached
    p.add(chunk(1.0))
    assert p.pull(FRAME, 0.0, generating=True, lead_s=0.0)[0] is not None
    assert p.quiet_at(0.0) == FRAME / RATE and p.quiet_at(5.0) == 5.0
    p.stop()
    assert p.speaking_since is None and p.queued_s == 0 and p.quiet_at(1.0) == 1.0
