"""Barge-in decisions on their own (webui/bargein.py): what each event over an active answer leads to, by policy.
The real-time behaviour (VAD, ASR, playback) is tested in test_listening_bargein.py."""

from types import SimpleNamespace

import numpy as np

from webui.bargein import BargeIn, Check, Duck, Interrupt, Note, RunCheck, Unduck
from webui.config import EngineConfig
from webui.interrupt import CommandCheck

AUDIO = np.zeros(16000, np.float32)


def heard(text: str, command: bool, reason: str = "") -> CommandCheck:
    return CommandCheck(command, text, "stop omni" if command else None, 0.1, reason or ("command" if command else
                                                                                         "no-match"))


def test_an_onset_ducks_interrupts_or_is_taken_for_echo_by_policy():
    b = BargeIn()
    assert b.started(10.1, playing_since=10.0, cfg=EngineConfig()) == [Note("onset_ignored_guard")]
    assert b.utterance.ignored
    assert b.started(11.0, playing_since=10.0, cfg=EngineConfig()) == [Duck(11.0)]
    assert b.started(11.0, playing_since=10.0, cfg=EngineConfig(policy="any")) == [Interrupt("speech", 11.0)]
    assert b.started(11.0, playing_since=10.0, cfg=EngineConfig(duck_on_speech=False)) == []


def test_speech_is_checked_at_a_pause_and_at_its_end_one_check_at_a_time():
    cfg = EngineConfig()
    b = BargeIn()
    b.started(11.0, None, cfg)
    u = b.utterance
    det = SimpleNamespace(trailing_silence_s=0.2, last_speech_end=1.0, time=1.2, speech_start=0.2,
                          current_audio=lambda: AUDIO)
    [first] = b.progress(det, now=12.0, cfg=cfg)
    assert isinstance(first, RunCheck) and first.utterance is u and not first.check.final
    assert len(first.check.audio) == len(AUDIO) - int(0.2 * 16000)  # the trailing silence is left out
    assert b.progress(det, now=12.0, cfg=cfg) == []  # that pause was checked already
    assert b.ended(True, AUDIO, 1.6, 12.5, cfg, ducked=True) == []  # its end waits for the running check
    assert u.pending is not None and u.pending.final and b.utterance is None
    # the first check heard no command: the end of the utterance is checked next
    [then] = b.checked(u, first.check, heard("tell me more", False), ducked=True)
    assert isinstance(then, RunCheck) and then.check.final and u.pending is None
    assert b.checked(u, then.check, heard("tell me more", False), ducked=True) == [Unduck("no-match")]


def test_a_command_interrupts_and_the_rest_of_it_is_never_a_new_turn():
    cfg = EngineConfig()
    b = BargeIn()
    b.started(11.0, None, cfg)
    u = b.utterance
    check = Check(AUDIO, 1.0, False, 12.0)
    [stop] = b.checked(u, check, heard("Stop, Omni.", True), ducked=True)
    assert isinstance(stop, Interrupt) and stop.onset == 11.0 and stop.end_wall == 12.0 and stop.keeps is u
    assert u.command


def test_long_or_short_speech_resumes_playback_and_other_policies_check_nothing():
    cfg = EngineConfig()
    b = BargeIn()
    b.started(11.0, None, cfg)
    det = SimpleNamespace(trailing_silence_s=0.0, last_speech_end=2.6, time=2.6, speech_start=0.0,
                          current_audio=lambda: AUDIO)
    [long_check] = b.progress(det, now=13.6, cfg=cfg)  # 2.6 s >= command_max_s: checked once
    assert b.utterance.max_checked
    b.checked(b.utterance, long_check.check, heard("so as I was saying", False), ducked=True)
    assert b.ended(True, AUDIO, 3.0, 14.0, cfg, ducked=True) == [Unduck("long speech is not a command")]
    b.started(20.0, None, cfg)
    assert b.ended(False, None, 0.1, 20.2, cfg, ducked=True) == [Unduck("too short")]
    b.started(30.0, None, EngineConfig(policy="any"))
    assert b.progress(det, 31.0, EngineConfig(policy="any")) == []
    assert b.ended(True, AUDIO, 1.0, 31.0, EngineConfig(policy="any"), ducked=False) == []
