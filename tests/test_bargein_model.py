"""Barge-in policy `model`: the checkpoint's own per-frame interruption signal (omni/listen.py) cancels the answer
through the same path as a stop phrase. Real-time timeline, real Silero VAD, a scripted model whose listener stands
in for a trained one (the trained listener itself is tested in test_train.py)."""

import time

import numpy as np
from webui_fixtures import Options, ScriptedModel, run_realtime, silence, speech, timeline

from webui.engine import Engine, EngineConfig

QUESTION = "what is the capital of france and why is it so famous"


class LoudFrameListener:
    """P(irq) = 1 from the first quiet 85 ms frame (24 kHz) after 3 loud ones: the end of something said, where a
    model trained on "stop omni" (labelled irq once the command has been heard) would say irq."""

    def __init__(self):
        self.buffer, self.heard, self.loud, self.fired = np.zeros(0, np.float32), 0, 0, False

    def add(self, samples24k):
        self.buffer = np.concatenate([self.buffer, samples24k])
        out = []
        while len(self.buffer) >= 2048:
            frame, self.buffer = self.buffer[:2048], self.buffer[2048:]
            self.heard += 1
            if np.sqrt(np.mean(frame ** 2)) > 0.02:
                self.loud += 1
            elif self.loud >= 3:
                self.fired = True
            out.append(1.0 if self.fired else 0.0)
        return out


class ListeningModel(ScriptedModel):
    def __init__(self, has_interrupt=True, **kw):
        super().__init__(**kw)
        self.has_interrupt = has_interrupt
        self.listeners = []

    def interrupt_listener(self):
        self.listeners.append(LoudFrameListener())
        return self.listeners[-1]


def run(tmp_path, model):
    engine = Engine(model, EngineConfig(policy="model"), transcriber=None, recordings_dir=str(tmp_path),
                    options_cls=Options)
    s = engine.new_session()
    q = speech(QUESTION)
    played = run_realtime(s, timeline(silence(1.0), q, silence(7.0 - len(q) / 16000), speech("stop omni"),
                                      silence(3.0)), extra_s=4.0)
    engine.close()
    return s, played


def test_the_models_signal_cancels_the_answer_and_the_command_is_not_a_new_turn(tmp_path):
    model = ListeningModel(speed=1.2)
    s, _ = run(tmp_path, model)
    turn = s.history[0]
    assert turn.status == "interrupted" and turn.interrupted_by == "model: irq"
    assert model.calls[0].cancel.is_set() and s.interrupts == 1
    assert len(s.history) == 1 and len(model.calls) == 1  # "stop omni" did not become a question
    assert len(model.listeners) == 1 and model.listeners[0].heard > 10  # it listened while the answer played


def test_a_checkpoint_without_the_signal_is_not_interrupted_and_says_why(tmp_path):
    model = ListeningModel(has_interrupt=False, speed=1.2,
                           answer="Paris is the capital of France, famous for its art, its food and its river.")
    s, _ = run(tmp_path, model)
    assert s.interrupts == 0 and not model.listeners
    assert any(e["ev"] == "model_policy_unavailable" for e in s.events)
    assert "omni train --stage irq" in s.snapshot()["notice"]  # what the pages show


class SlowListener(LoudFrameListener):
    """A listener as slow as a big model on a small CPU would be: 1.5 s for each batch of audio it is given."""

    def add(self, samples24k):
        time.sleep(1.5)
        return super().add(samples24k)


def test_a_slow_listener_holds_up_neither_the_microphone_nor_playback_and_still_stops_the_answer(tmp_path):
    model = ListeningModel(speed=1.2)
    model.interrupt_listener = lambda: model.listeners.append(SlowListener()) or model.listeners[-1]
    engine = Engine(model, EngineConfig(policy="model"), transcriber=None, recordings_dir=str(tmp_path),
                    options_cls=Options)
    s = engine.new_session()
    feed, slowest = s.feed_audio, [0.0]

    def timed_feed(rate, pcm):
        t0 = time.monotonic()
        feed(rate, pcm)
        slowest[0] = max(slowest[0], time.monotonic() - t0)

    s.feed_audio = timed_feed
    q = speech(QUESTION)
    run_realtime(s, timeline(silence(1.0), q, silence(7.0 - len(q) / 16000), speech("stop omni"), silence(5.0)),
                 extra_s=4.0)
    engine.close()
    # on the microphone's thread each 1.5 s call held the session (mic and playback) for as long
    assert slowest[0] < 1.0
    turn = s.history[0]
    assert turn.status == "interrupted" and turn.interrupted_by == "model: irq"
    assert len(s.history) == 1  # "stop omni" did not become a question


class FirstSoundListener(LoudFrameListener):
    """P(irq) = 1 from the first loud frame: a model that hears the command before the VAD notices speech."""

    def add(self, samples24k):
        self.buffer = np.concatenate([self.buffer, samples24k])
        out = []
        while len(self.buffer) >= 2048:
            frame, self.buffer = self.buffer[:2048], self.buffer[2048:]
            self.fired = self.fired or np.sqrt(np.mean(frame ** 2)) > 0.02
            out.append(1.0 if self.fired else 0.0)
        return out


def test_a_command_heard_before_the_vad_notices_speech_is_not_a_new_turn(tmp_path):
    from webui.vad import VADConfig

    model = ListeningModel(speed=1.2)
    model.interrupt_listener = lambda: model.listeners.append(FirstSoundListener()) or model.listeners[-1]
    # the VAD declares speech only after 0.5 s of it: the listener has fired long before
    engine = Engine(model, EngineConfig(policy="model", vad=VADConfig(onset_s=0.5)), transcriber=None,
                    recordings_dir=str(tmp_path), options_cls=Options)
    s = engine.new_session()
    q = speech(QUESTION)
    run_realtime(s, timeline(silence(1.0), q, silence(7.0 - len(q) / 16000), speech("stop omni please"),
                             silence(3.0)), extra_s=4.0)
    engine.close()
    turn = s.history[0]
    assert turn.status == "interrupted" and turn.interrupted_by == "model: irq"
    assert len(s.history) == 1 and len(model.calls) == 1, [t.task for t in s.history]  # not a question
    assert any(e["ev"] == "irq_command_dropped" for e in s.events)


def test_starting_with_policy_model_on_a_checkpoint_without_the_signal_says_so(tiny_ckpt):
    from webui.startup import parse, start_engine

    said: list[str] = []
    engine, ready = start_engine(parse(["--checkpoint", str(tiny_ckpt), "--policy", "model", "--asr", "none"]),
                                 say=said.append)
    engine.close()
    assert ready.startswith("Model ready") and "omni train --stage irq" in ready  # the status line every UI shows
