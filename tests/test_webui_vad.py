"""Turn detection on synthetic timelines (espeak speech, noise, music, silence) with the real Silero model."""

import numpy as np
import pytest
from webui_fixtures import SR, music, noise, silence, speech, timeline

from webui.vad import SpeechDropped, SpeechStarted, TurnDetector, TurnEnded, VADConfig


def run(detector, audio, rate=SR, chunk=0.02):
    n = int(rate * chunk)
    events = []
    for i in range(0, len(audio), n):
        events += detector.push(rate, (audio[i : i + n] * 32767).astype(np.int16))
    return events + detector.flush()


QUESTION = "what is the capital of france and why is it so famous"


def test_two_turns_are_found_at_the_right_times():
    q = speech(QUESTION)
    speech_len = len(q) / SR
    events = run(TurnDetector(), timeline(silence(1.0), q, silence(2.0), q, silence(1.5)))
    starts = [e for e in events if isinstance(e, SpeechStarted)]
    turns = [e for e in events if isinstance(e, TurnEnded)]
    assert len(starts) == 2 and len(turns) == 2
    second = 1.0 + speech_len + 2.0
    assert abs(turns[0].t_start - 1.0) < 0.15 and abs(turns[1].t_start - second) < 0.15
    # espeak leaves some trailing silence in its file, so the end is a little before the file's end
    assert 1.0 + speech_len - 0.6 < turns[0].t_end <= 1.0 + speech_len + 0.05
    # the cut utterance holds pre-roll + speech + tail, not the end-of-turn silence
    expected = 0.3 + (turns[0].t_end - turns[0].t_start) + 0.1
    assert abs(len(turns[0].audio) / SR - expected) < 0.05


def test_same_result_at_48k_input_as_webrtc_delivers():
    q = speech(QUESTION, rate=48000)
    a = np.concatenate([np.zeros(48000, np.float32), q, np.zeros(48000, np.float32)])
    turns = [e for e in run(TurnDetector(), a, rate=48000) if isinstance(e, TurnEnded)]
    assert len(turns) == 1 and abs(turns[0].t_start - 1.0) < 0.15


def test_end_of_turn_silence_is_configurable():
    # espeak pads its files, so back to back they leave a ~0.35 s gap inside one request:
    # split with a short end-of-turn window, joined with the default
    a = timeline(silence(0.5), speech("tell me a story"), speech("about a dragon"), silence(1.5))
    short = [e for e in run(TurnDetector(VADConfig(end_silence_s=0.2)), a) if isinstance(e, TurnEnded)]
    default = [e for e in run(TurnDetector(), a) if isinstance(e, TurnEnded)]
    assert len(short) == 2 and len(default) == 1


@pytest.mark.parametrize("name,audio", [
    ("noise", noise(6.0, 0.05)), ("loud noise", noise(6.0, 0.4, seed=3)),
    ("music", music(8.0, 0.2)), ("loud music", music(8.0, 0.7)), ("silence", silence(5.0)),
])
def test_no_turns_in_noise_music_or_silence(name, audio):
    events = run(TurnDetector(), audio)
    assert not [e for e in events if isinstance(e, TurnEnded)], name


def test_a_click_is_dropped_not_a_turn():
    click = np.zeros(SR, np.float32)
    click[8000:8100] = 0.9
    events = run(TurnDetector(), timeline(silence(0.5), click, silence(1.0)))
    assert not [e for e in events if isinstance(e, TurnEnded)]


def test_bad_config_is_refused():
    with pytest.raises(ValueError):
        VADConfig(threshold=1.5).validate()
    with pytest.raises(ValueError):
        VADConfig(end_silence_s=-1).validate()


def test_webrtc_frames_int16_1xN_are_scaled():
    from webui.vad import to_float32

    a = to_float32(np.full((1, 960), 16384, np.int16))
    assert a.shape == (960,) and a.dtype == np.float32 and np.allclose(a, 0.5)


def test_loading_the_vad_leaves_torch_threads_alone():
    """silero_vad's import sets torch to one thread for the whole process; the model must keep its cores."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("import torch; torch.set_num_threads(2); from webui.vad import load_silero; load_silero(); "
            "print(torch.get_num_threads())")
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "2"
