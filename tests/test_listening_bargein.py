"""Barge-in on real-time synthetic timelines: real Silero VAD, real ASR (Whisper tiny.en), scripted model.

Each test plays a microphone timeline at real-time pace while pulling the assistant's speech like a
WebRTC peer, so the latencies measured here are wall-clock latencies.
"""

import time

import numpy as np
import pytest
from webui_fixtures import Options, ScriptedModel, last_loud, music, noise, run_realtime, silence, speech, timeline

from webui.engine import Engine, EngineConfig
from webui.interrupt import make_transcriber

QUESTION = "what is the capital of france and why is it so famous"
SHORT_ANSWER = "Paris is the capital of France, and nothing can stop it from being famous for art and food."


@pytest.fixture(scope="module")
def transcriber():
    return make_transcriber("auto")


def make(transcriber, tmp_path, answer=None, speed=1.2, **cfg):
    model = ScriptedModel(answer, speed=speed) if answer else ScriptedModel(speed=speed)
    engine = Engine(model, EngineConfig(**cfg), transcriber=transcriber, recordings_dir=str(tmp_path), options_cls=Options)
    engine.asr_pool.submit(lambda: None).result(timeout=30)  # ASR warm-up done
    return model, engine, engine.new_session()


def events(session, kind):
    return [e for e in session.events if e["ev"] == kind]


def question_then(at: float, distractor: np.ndarray, tail: float) -> np.ndarray:
    q = speech(QUESTION)
    return timeline(silence(1.0), q, silence(at - 1.0 - len(q) / 16000), distractor, silence(tail))


def test_stop_omni_cancels_once_within_the_bound(transcriber, tmp_path):
    model, engine, s = make(transcriber, tmp_path)
    t0 = time.monotonic()
    played = run_realtime(s, question_then(8.0, speech("stop omni"), 3.0))
    turn = s.history[0]
    assert len(s.history) == 1  # the command is not a new turn
    assert len(events(s, "interrupted")) == 1 and s.interrupts == 1
    assert turn.status == "interrupted" and turn.interrupted_by.startswith("command")
    assert model.calls[0].cancel.is_set()  # generation was cancelled, not just muted
    onset = events(s, "speech_started")[-1]["at"]
    assert abs(onset - t0 - 8.0) < 0.3  # the onset found is the stop phrase's
    # speech onset -> silence, measured on the frames actually handed out
    quiet = last_loud(played)
    assert quiet - onset <= 0.25, quiet - onset
    assert turn.timings.onset_to_silence_s <= 0.25
    # end of the phrase -> decision: at most 250 ms on top of the ASR's own time
    t = turn.timings
    assert t.command_end_to_decision_s - t.command_check_s <= 0.25, t
    # nothing more was played after the interruption, and the text was cut to what was heard
    assert not [p for p in played if p.t > quiet + 0.05 and p.rms > 0.01]
    assert 1.0 < turn.played_s < 4.5
    assert len(turn.assistant_text) < len(turn.full_text) and turn.assistant_text.endswith("…")
    engine.close()
    print(f"\nbarge-in: onset->silence {quiet - onset:.3f}s, command check {t.command_check_s:.3f}s, "
          f"phrase end->decision {t.command_end_to_decision_s:.3f}s")


@pytest.mark.parametrize("name,distractor,echo", [
    ("other speech", speech("what a lovely view of the mountains"), 0.0),
    ("noise", noise(2.0, 0.3), 0.0),
    ("music", music(3.0, 0.5), 0.0),
    ("own voice", silence(0.1), 0.5),
])
def test_nothing_but_a_command_cancels(transcriber, tmp_path, name, distractor, echo):
    model, engine, s = make(transcriber, tmp_path, answer=SHORT_ANSWER)
    played = run_realtime(s, question_then(6.5, distractor, 1.0), extra_s=12.0, echo_gain=echo,
                          until=lambda: bool(s.history) and s.history[0].status == "done")
    turn = s.history[0]
    assert s.interrupts == 0 and not events(s, "interrupted"), (name, list(s.events))
    assert turn.status == "done" and model.cancelled == 0
    assert len(s.history) == 1
    # the whole answer was played (a duck during the distractor resumes where it stopped)
    played_s = len(played) * 0.02
    assert abs(played_s - turn.generated_s()) < 0.1, (played_s, turn.generated_s())
    engine.close()


def test_policy_any_interrupts_at_onset_and_takes_the_turn(transcriber, tmp_path):
    model, engine, s = make(transcriber, tmp_path, policy="any")
    follow_up = speech("what about germany")
    played = run_realtime(s, question_then(7.0, follow_up, 2.0))
    assert [t.status for t in s.history][:1] == ["interrupted"] and len(s.history) == 2
    first = s.history[0]
    assert first.timings.onset_to_silence_s <= 0.25
    onset = events(s, "interrupted")[0]["onset"]
    loud_after = [p for p in played if onset + 0.25 < p.t < onset + 1.0 and p.rms > 0.01]
    assert not loud_after  # silent while the user speaks
    second = s.history[1]
    assert second.task == "A1A2" and abs(len(second.user_audio) / 16000 - len(follow_up) / 16000) < 0.6
    engine.close()


def test_policy_off_is_half_duplex(transcriber, tmp_path):
    model, engine, s = make(transcriber, tmp_path, answer=SHORT_ANSWER, policy="off")
    run_realtime(s, question_then(6.5, speech("stop omni"), 1.0), extra_s=10.0,
                 until=lambda: bool(s.history) and s.history[0].status == "done")
    assert s.interrupts == 0 and [t.status for t in s.history] == ["done"]
    assert model.cancelled == 0
    engine.close()


class InstantStop:
    """An ASR that answers at once: the command is confirmed before the utterance's end-of-turn silence."""

    name = "instant"

    def transcribe(self, audio, prompt=None):
        return "stop omni" if len(audio) > 8000 else ""


def test_a_fast_command_is_not_taken_as_the_next_turn(tmp_path):
    model, engine, s = make(InstantStop(), tmp_path)
    run_realtime(s, question_then(8.0, speech("stop omni"), 2.0))
    assert s.interrupts == 1 and len(s.history) == 1  # "stop omni" cancelled; it was not answered
    assert len(model.calls) == 1
    engine.close()


class SlowStop:
    """Hears "stop omni" in anything longer than half a second, after 1 s of thinking."""
    name = "slow"

    def __init__(self):
        self.started: list[float] = []

    def transcribe(self, audio, prompt=None):
        self.started.append(time.monotonic())
        time.sleep(1.0)
        return "Stop, Omni." if len(audio) > 8000 else ""


class HearsQuestion:
    name = "question"

    def transcribe(self, audio, prompt=None):
        return "what is the weather"


def test_a_stop_phrase_with_nothing_to_stop_is_dropped_quietly(tmp_path):
    """Said while nothing plays, "stop omni" is never answered: its answer is held back while the check runs (1 s
    here), then dropped with the turn; nothing is heard and the conversation shows nothing."""
    asr = SlowStop()
    model, engine, s = make(asr, tmp_path, speed=20.0)
    asr.started.clear()  # the warm-up call
    played = run_realtime(s, timeline(silence(0.5), speech("stop omni"), silence(3.0)))
    ended = next(e["t"] for e in s.events if e["ev"] == "turn_detected")
    assert len(asr.started) == 1 and asr.started[0] < ended  # checked once, begun in the end-of-turn silence
    assert s.history == [] and s.notice == ""
    assert [e["ev"] for e in s.events if e["ev"] == "stop_phrase_dropped"] == ["stop_phrase_dropped"]
    assert all(c.cancel.is_set() for c in model.calls)  # an answer started meanwhile was cancelled
    assert not [p for p in played if p.rms > 0.01]  # and never heard
    assert not list(s.dir.glob("turn_*"))  # its files are gone too
    engine.close()


def test_a_short_question_is_still_answered_after_the_check(tmp_path):
    model, engine, s = make(HearsQuestion(), tmp_path, answer=SHORT_ANSWER, speed=20.0)
    played = run_realtime(s, timeline(silence(0.5), speech("what is the weather"), silence(6.0)))
    assert len(s.history) == 1 and s.history[0].status == "done"
    assert [p for p in played if p.rms > 0.01]
    engine.close()


def test_a_typed_stop_phrase_stops_the_answer_and_is_never_sent(tmp_path):
    model, engine, s = make(None, tmp_path, speed=1.0)
    assert s.send_text("Stop omni!") is None and s.history == [] and model.calls == []
    turn = s.send_text("tell me about paris")
    end = time.monotonic() + 5
    while turn.status == "queued" and time.monotonic() < end:
        time.sleep(0.01)
    assert s.send_text("stop") is None
    assert turn.status == "interrupted" and turn.interrupted_by == "typed stop"
    assert len(s.history) == 1 and len(model.calls) == 1
    engine.close()
