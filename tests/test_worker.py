"""The model worker shares the model between sessions: answers take turns one event at a time, a session waiting
for its own reasons (playback far ahead, a possible stop command) holds up no one else, and the queue wait is the
time until the worker takes a question up. Scripted model (engine logic only), real Silero VAD."""

import threading
import time

from webui_fixtures import Options, ScriptedModel, run_realtime, silence, speech, timeline

from webui.engine import Engine, EngineConfig

LONG = " ".join(f"word{i}" for i in range(60))


def make(model, tmp_path, transcriber=None, **cfg) -> Engine:
    return Engine(model, EngineConfig(**cfg), transcriber=transcriber, recordings_dir=str(tmp_path),
                  options_cls=Options)


def finished_at(session, index=1) -> float:
    return next(e["t"] for e in session.events if e["ev"] == "turn_finished" and e["index"] == index)


def test_a_long_answer_does_not_keep_other_users_from_their_first_audio(tmp_path):
    """Three questions at once, the first a 60-piece text answer (3 s of model time): the other two users hear
    their answers start long before it ends, not after it."""
    model = ScriptedModel(LONG, speed=20.0, first_delay=0.1, text_delay=0.05)
    engine = make(model, tmp_path)
    try:
        a, b, c = (engine.new_session() for _ in range(3))
        ta = a.send_text("write me a long story", speak=False)
        tb, tc = b.send_text("and you?"), c.send_text("what now?")
        assert a.wait_idle(30) and b.wait_idle(30) and c.wait_idle(30)
        a_took = finished_at(a) - ta.timings.submitted
        assert a_took >= 3.0 and ta.assistant_text == LONG
        for t in (tb, tc):
            assert t.status == "done" and t.timings.first_audio_s < a_took / 2, (t.timings, a_took)
        assert model.max_computing == 1 and model.max_concurrent == 3
    finally:
        engine.close()


def test_answers_past_the_limit_wait_in_the_queue(tmp_path):
    model = ScriptedModel(LONG, speed=20.0, first_delay=0.1, text_delay=0.01)
    engine = make(model, tmp_path, max_active_answers=1)
    try:
        a, b = engine.new_session(), engine.new_session()
        a.send_text("hello from a", speak=False)
        b.send_text("hello from b", speak=False)
        end = time.monotonic() + 5
        while a.queue_position() != 0 and time.monotonic() < end:
            time.sleep(0.005)
        assert a.queue_position() == 0 and b.queue_position() == 1  # a runs, b waits first in line
        assert a.wait_idle(20) and b.wait_idle(20)
        assert model.max_concurrent == 1
    finally:
        engine.close()


def test_queue_wait_ends_when_the_worker_takes_the_question_up(tmp_path):
    """With nothing ahead the wait is ~0; the model's own time before its first piece (encoders, prefill: here a
    0.4 s first delay) is not queue wait."""
    engine = make(ScriptedModel("Paris.", first_delay=0.4), tmp_path)
    try:
        s = engine.new_session()
        t = s.send_text("hello", speak=False)
        assert s.wait_idle(10)
        assert t.timings.first_text_s - t.timings.queue_wait_s >= 0.4 - 0.002, t.timings
    finally:
        engine.close()


class SlowTranscriber:
    """A stop-command check that takes 3 s and hears no command: the session whose answer was talked over holds
    it meanwhile."""
    name = "slow"

    def transcribe(self, audio, prompt=None):
        time.sleep(3.0)
        return "tell me more about that"


def test_one_session_holding_for_a_stop_command_does_not_pause_the_others(tmp_path):
    model = ScriptedModel(speed=2.0, first_delay=0.1)
    engine = make(model, tmp_path, transcriber=SlowTranscriber())
    try:
        a, b = engine.new_session(), engine.new_session()
        a.send_text("tell me about paris")
        answered = []

        def ask_b_once_a_holds():
            end = time.monotonic() + 20
            while not any(e["ev"] == "ducked" for e in a.events) and time.monotonic() < end:
                time.sleep(0.01)
            tb = b.send_text("and the capital of spain?", speak=False)
            b.wait_idle(20)
            answered.append(tb)

        asker = threading.Thread(target=ask_b_once_a_holds)
        asker.start()
        mic = timeline(silence(2.5), speech("please tell me a little more about it"), silence(5.0))
        run_realtime(a, mic)
        asker.join()
        ducked = next(e["t"] for e in a.events if e["ev"] == "ducked")
        resumed = next((e["t"] for e in a.events if e["ev"] == "resumed"), float("inf"))
        assert resumed - ducked >= 2.5  # a held through the slow check (the hold lasts up to 4.5 s)
        assert answered[0].status == "done"
        assert finished_at(b) - ducked < 2.0 and finished_at(b) < resumed  # b was answered while a held
    finally:
        engine.close()


def test_people_waiting_for_their_first_sound_are_served_in_the_order_they_asked(tmp_path):
    """Two spoken answers at once, each 0.5 s of model time before its first text and then its first speech: the
    first asker hears speech after its own 0.5 s, not after both (taking turns from the start would give both
    ~1 s); the second right after."""
    model = ScriptedModel(speed=20.0, first_delay=0.5)
    engine = make(model, tmp_path)
    try:
        a, b = engine.new_session(), engine.new_session()
        ta, tb = a.send_text("first"), b.send_text("second")
        assert a.wait_idle(30) and b.wait_idle(30)
        assert ta.timings.first_audio_s < 0.75, ta.timings
        assert 0.9 < tb.timings.first_audio_s < 1.5, tb.timings
    finally:
        engine.close()


def test_two_spoken_questions_of_the_same_task_run_at_once(tmp_path):
    """Jobs are told apart by identity: two A1A2 jobs hold audio arrays, which a field-by-field comparison would
    compare elementwise (it raised, and the worker thread died with both answers unfinished)."""
    engine = make(ScriptedModel(speed=10.0, first_delay=0.2), tmp_path)  # ~10 s of speech: 1 s of model time
    try:
        a, b = engine.new_session(), engine.new_session()
        question = (16000, speech("is it raining"))
        ta, tb = a.send_upload(audio=question), b.send_upload(audio=question)
        end = time.monotonic() + 5
        while "queued" in (ta.status, tb.status) and time.monotonic() < end:  # both taken up
            time.sleep(0.01)
        assert a.queue_position() == 0 and b.queue_position() == 0 and ta.status == tb.status == "speaking"
        assert a.wait_idle(20) and b.wait_idle(20)
        assert ta.status == tb.status == "done" and ta.task == tb.task == "A1A2"
    finally:
        engine.close()
