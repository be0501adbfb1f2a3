"""Benchmark: what each of three people waits when they ask at the same moment (the model worker's sharing).

Three sessions of the app's conversation engine (real Silero VAD, the tests' real-time transport harness, espeak-ng
questions) on one model. Scenario `speech`: all three ask a spoken question at once. Scenario `text-first`: the
first asks for a long typed answer shown as text (512 tokens), the other two ask spoken questions just after.
Prints, per user, the time from the end of their speech to the first sound of the answer, the queue wait and the
playback pauses. Answers run their whole budget (random test weights may end one early). Example:
    .venv/bin/python scripts/multi_user_latency.py --checkpoint /tmp/full --quantize int8
"""

import argparse
import functools
import json
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

QUESTIONS = ["what is the capital of france and why is it famous", "how tall is the eiffel tower in paris",
             "tell me a short story about a cat"]


def run_scenario(model, scenario: str, max_new_tokens: int) -> list[dict]:
    import omni
    from webui.engine import Engine, EngineConfig
    from webui.simulate import run_realtime, silence, speech, timeline

    options = functools.partial(omni.DecodingOptions, ignore_stop=True)
    engine = Engine(model, EngineConfig(max_new_tokens=max_new_tokens, policy="off"), options_cls=options)
    sessions = [engine.new_session() for _ in QUESTIONS]
    spoken = sessions[1:] if scenario == "text-first" else sessions
    if scenario == "text-first":
        sessions[0].update_config(max_new_tokens=512)
        sessions[0].send_text("Write a long story about the sea.", speak=False)
    threads = []
    for s, q in zip(spoken, QUESTIONS):
        mic = timeline(silence(0.5), speech(q), silence(1.0))

        def talk(s=s, mic=mic):
            # listening to the whole answer, as a person does: an answer far ahead of its playback waits
            run_realtime(s, mic, extra_s=120, until=lambda: bool(s.history) and s.history[-1].status in
                         ("done", "error", "interrupted"))
        threads.append(threading.Thread(target=talk))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rows = []
    for i, s in enumerate(sessions):
        s.wait_idle(300)
        turn = s.history[-1]
        tm = turn.timings
        model = tm.model or {}
        rows.append({"user": i + 1, "task": turn.task, "first_audio_s": tm.speech_end_to_first_audio_s,
                     "first_text_s": tm.first_text_s, "queue_wait_s": tm.queue_wait_s, "rebuffers": tm.rebuffers,
                     "prefill_ms": round(1000 * (model.get("prefill_s") or 0)),
                     "ms_per_step": model.get("decode_ms_per_step")})
    engine.close()
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--quantize", choices=["int8"], default=None)
    ap.add_argument("--scenario", choices=["speech", "text-first", "both"], default="both")
    ap.add_argument("--max-new-tokens", type=int, default=160, help="spoken answers' budget (160)")
    ap.add_argument("--json", default=None, help="also write the figures here")
    a = ap.parse_args()

    from omni.errors import OmniError
    from webui.simulate import load_as_the_app_does

    try:
        model, _ = load_as_the_app_does(a.checkpoint, a.quantize, "none")
    except OmniError as e:  # a missing or broken checkpoint: say what, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # e.g. an --asr model that cannot be loaded
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    out = {}
    for scenario in (("speech", "text-first") if a.scenario == "both" else (a.scenario,)):
        t0 = time.monotonic()
        rows = run_scenario(model, scenario, a.max_new_tokens)
        out[scenario] = rows
        print(f"scenario {scenario} ({time.monotonic() - t0:.0f} s):")
        for r in rows:
            print("  user {user} {task:5} speech end -> first audio {first_audio_s} s, first text {first_text_s} s, "
                  "queue wait {queue_wait_s} s, prefill {prefill_ms} ms, {ms_per_step} ms/step".format(**r))
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
