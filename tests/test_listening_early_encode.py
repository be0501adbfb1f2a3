"""Early encoding: while a spoken turn's end-of-turn silence runs out, the model encodes the turn's audio, so the
answer finds its Whisper features ready; a pause followed by more speech drops that work. Real Silero VAD."""

import time

import numpy as np
from webui_fixtures import Options, ScriptedModel, silence, speech, timeline

import omni
from webui.engine import Engine, EngineConfig


class EncodingModel(ScriptedModel):
    """A scripted model with `encode_audio`: records what it was asked to encode and takes `encode_s`."""

    def __init__(self, encode_s: float = 0.0, **kw):
        super().__init__("Paris.", **{"speed": 20.0, "first_delay": 0.05, **kw})
        self.encode_s = encode_s
        self.encoded: list[tuple[int, np.ndarray, object]] = []

    def encode_audio(self, audio, cancel=None):
        sr, a = audio
        self.encoded.append((sr, np.array(a, copy=True), cancel))
        start = time.monotonic()
        while time.monotonic() - start < self.encode_s and not (cancel is not None and cancel.is_set()):
            time.sleep(0.005)


def feed(session, audio, sr=16000):
    pcm = (audio * 32767).astype(np.int16)
    for i in range(0, len(pcm), 320):  # 20 ms frames, as fast as possible: the VAD runs on the audio clock
        session.feed_audio(sr, pcm[i : i + 320])


def new_engine(model, tmp_path, **config):
    engine = Engine(model, EngineConfig(**config), recordings_dir=str(tmp_path), options_cls=Options)
    events = []
    engine.event_sink = lambda sid, rec: events.append(rec["ev"])
    return engine, events


def test_a_spoken_turn_is_encoded_before_it_ends_with_the_audio_the_answer_gets(tmp_path):
    model = EncodingModel()
    engine, events = new_engine(model, tmp_path)
    try:
        s = engine.new_session()
        feed(s, timeline(silence(0.4), speech("what is the capital of france"), silence(1.0)))
        assert s.wait_idle(20)
        assert len(model.calls) == 1 and len(model.encoded) == 1
        sr, encoded, _ = model.encoded[0]
        task_audio = model.calls[0].audio
        assert sr == task_audio[0] == 16000 and np.array_equal(encoded, task_audio[1])  # the model reuses it
        assert events.index("early_encode") < events.index("turn_detected")
    finally:
        engine.close()


def test_a_pause_then_more_speech_drops_the_early_encode(tmp_path):
    model = EncodingModel(encode_s=5.0)  # still running when the speaker goes on
    engine, events = new_engine(model, tmp_path)
    try:
        s = engine.new_session()
        # a ~0.45 s pause (espeak ends its speech with 0.39 s of silence): longer than the 0.2 s that starts an
        # early encode, shorter than the 0.6 s that ends a turn
        end = speech("is it paris")[: -int(0.3 * 16000)]  # without most of its trailing silence
        feed(s, timeline(silence(0.4), speech("the capital of france"), silence(0.05)))
        # the encode runs on the worker thread: let it start before the speaker goes on (on a loaded machine
        # the rest of the feed could otherwise drop it before it began)
        deadline = time.monotonic() + 5
        while not model.encoded and time.monotonic() < deadline:
            time.sleep(0.005)
        feed(s, end)
        assert len(model.encoded) == 1 and "early_encode_dropped" in events
        deadline = time.monotonic() + 5
        while not engine.worker.idle and time.monotonic() < deadline:
            time.sleep(0.005)
        assert engine.worker.idle and model.encoded[0][2].is_set()  # cancelled when the speaker went on
        model.encode_s = 0.0
        feed(s, silence(1.0))
        assert s.wait_idle(20)
        assert len(model.calls) == 1 and len(model.encoded) == 2  # one turn; its answer uses the second encode
        assert np.array_equal(model.encoded[1][1], model.calls[0].audio[1])
        assert len(model.encoded[0][1]) < len(model.calls[0].audio[1]) - 16000 * 0.5  # the first half only
    finally:
        engine.close()


def test_speech_while_the_assistant_answers_is_not_encoded(tmp_path):
    model = EncodingModel(speed=0.5)  # a long answer
    engine, _ = new_engine(model, tmp_path)
    try:
        s = engine.new_session()
        s.send_text("tell me about paris")
        end = time.monotonic() + 5
        while not s.assistant_active and time.monotonic() < end:
            time.sleep(0.01)
        feed(s, timeline(speech("hmm interesting"), silence(1.0)))
        assert model.encoded == []  # the model is busy answering: barge-in speech is never a turn to encode
        s.interrupt()
        assert s.wait_idle(20)
    finally:
        engine.close()


def test_early_encode_off_and_a_model_without_encode_audio(tmp_path):
    model = EncodingModel()
    engine, _ = new_engine(model, tmp_path, early_encode=False)
    try:
        s = engine.new_session()
        feed(s, timeline(speech("what is the capital of france"), silence(1.0)))
        assert s.wait_idle(20) and len(model.calls) == 1 and model.encoded == []
    finally:
        engine.close()
    plain = ScriptedModel("Paris.", speed=20.0, first_delay=0.05)  # no encode_audio: answered as before
    engine, events = new_engine(plain, tmp_path)
    try:
        s = engine.new_session()
        feed(s, timeline(speech("what is the capital of france"), silence(1.0)))
        assert s.wait_idle(20) and len(plain.calls) == 1 and "early_encode" not in events
    finally:
        engine.close()


def test_the_real_model_answers_an_early_encoded_turn_without_running_whisper_again(tiny_model, tmp_path,
                                                                                    monkeypatch):
    from omni import audio as audio_io

    calls = []
    real = audio_io.whisper_encode
    monkeypatch.setattr(audio_io, "whisper_encode", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    engine = Engine(tiny_model, EngineConfig(max_new_tokens=16), recordings_dir=str(tmp_path),
                    options_cls=omni.DecodingOptions)
    events = []
    engine.event_sink = lambda sid, rec: events.append(rec["ev"])
    try:
        s = engine.new_session()
        feed(s, timeline(silence(0.3), speech("what is the capital of france"), silence(1.0)))
        assert s.wait_idle(60)
        assert s.history[-1].status == "done" and "early_encode" in events
        assert len(calls) == 1  # the early encode; the answer found the features ready
    finally:
        engine.close()
