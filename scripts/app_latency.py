"""Benchmark: what a user of the app waits, from the end of their speech to the first sound of the answer.

Runs the app's conversation engine (real Silero VAD, the real-time transport harness of the tests, espeak-ng
questions) on a checkpoint, with early encoding off and on, and prints `speech_end_to_first_audio_s` per question
(it includes the end-of-turn silence, 0.6 s by default). Example:
    .venv/bin/python scripts/app_latency.py --checkpoint /tmp/full --quantize int8
"""

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

QUESTIONS = ["what is the capital of france and why is it famous", "how tall is the eiffel tower in paris",
             "tell me a short story about a cat", "why is the sky blue during the day"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--quantize", choices=["int8"], default=None)
    ap.add_argument("--questions", type=int, default=4, help="spoken questions per setting (default 4)")
    ap.add_argument("--asr", default="none", help="the stop-command recogniser, as app.py's --asr (default none; "
                    "with one, a short question is checked for a stop phrase before its answer plays)")
    a = ap.parse_args()
    if a.questions < 1:
        ap.error("--questions must be >= 1")

    import omni
    from omni.errors import OmniError
    from webui.engine import Engine, EngineConfig
    from webui.simulate import load_as_the_app_does, run_realtime, silence, speech, timeline

    try:
        model, transcriber = load_as_the_app_does(a.checkpoint, a.quantize, a.asr)
    except OmniError as e:  # a missing or broken checkpoint: say what, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # e.g. an --asr model that cannot be loaded
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    waits: dict[bool, list[float]] = {False: [], True: []}
    for i in range(a.questions):
        question = timeline(silence(0.5), speech(QUESTIONS[i % len(QUESTIONS)]), silence(6.0))
        for early in ((False, True) if i % 2 == 0 else (True, False)):  # alternate the order: the VM drifts
            model.forget_audio()  # no features left from the other setting's run
            engine = Engine(model, EngineConfig(max_new_tokens=40, early_encode=early, policy="off"),
                            transcriber=transcriber, options_cls=omni.DecodingOptions)
            s = engine.new_session()
            run_realtime(s, question, until=lambda: bool(s.history) and s.history[-1].status in ("done", "error"))
            s.wait_idle(120)
            waits[early].append(s.history[-1].timings.speech_end_to_first_audio_s)
            engine.close()
    for early in (False, True):
        heard = [w for w in waits[early] if w is not None]  # None: that answer had no speech
        mean = f"mean {statistics.mean(heard):.3f} s" if heard else "no spoken answer"
        print(f"early encode {'on ' if early else 'off'}: speech end -> first audio {waits[early]} s, {mean}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
