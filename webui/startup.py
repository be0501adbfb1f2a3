"""How every front-end starts: the options they share, the weights, loading the engine, the random-weights banner,
and the latency figures they show. app.py, the Gradio page and the Streamlit page all go through here.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
import traceback
from pathlib import Path
from typing import Callable

log = logging.getLogger("webui")

HF_REPO = "gpt-omni/mini-omni2"
# What a download fetches, for the help texts: lit_model.pth 2.81 GB, small.pt 0.48 GB, ViT-B-32.pt 0.35 GB,
# tokenizer.json 7 MB (the sizes Hugging Face shows), plus SNAC. The download itself says the hub's exact total.
DOWNLOAD_SIZE = "about 3.7 GB"
TINY_BANNER = ("⚠️ **Random weights — answers are noise.** This is a tiny test checkpoint; it exercises the whole "
               "pipeline offline. Start without `--checkpoint tiny` for real answers (the official weights are "
               "downloaded into checkpoints/ if they are not there).")


def parser() -> argparse.ArgumentParser:
    """Every option of the app, for every front-end (the Streamlit page parses the same command line)."""
    p = argparse.ArgumentParser(
        prog="app.py",
        description="Mini-Omni2 real-time multimodal assistant: webcam + microphone + text in, streamed speech out. "
                    "Opens a Gradio page (or a Streamlit one, a terminal presenter mode on this machine's devices, the "
                    "OpenAI Realtime API); the model is loaded once and shared by every conversation.",
        epilog="Examples:\n"
               "  python app.py                         # checkpoints/ on 127.0.0.1:7860 (downloaded first if\n"
               f"                                        # missing: {DOWNLOAD_SIZE}, resumable, checksummed)\n"
               "  python app.py --checkpoint tiny       # tiny random weights, offline, for trying the UI\n"
               "  python app.py --no-download           # missing weights: say so and stop, no network\n"
               "  python app.py --quantize int8 --port 8000\n"
               "  python app.py --ui local              # presenter mode: this machine's mic, speaker and camera\n"
               "  python app.py --list-devices          # the microphones, speakers and cameras it can use\n"
               "  python app.py --ui none --api         # only the Realtime API: ws://127.0.0.1:7860/v1/realtime\n"
               "  python app.py --serve ray --replicas 2  # the API and a page over model replicas (Ray Serve)\n"
               "The microphone needs https or localhost: on a remote machine use an ssh tunnel\n"
               "(ssh -L 7860:127.0.0.1:7860 host) or --share.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", default=os.environ.get("OMNI_CHECKPOINT", "checkpoints"),
                   help="checkpoint folder in the official layout (default: checkpoints/), or 'tiny' for a random "
                        "tiny model built on the fly (answers are noise; used by tests)")
    fetch = p.add_mutually_exclusive_group()
    fetch.add_argument("--download", action="store_true",
                       help=f"download the official weights ({HF_REPO} + SNAC, {DOWNLOAD_SIZE}, checksummed) into "
                            "--checkpoint if they are missing: the default (the flag is kept for old command lines)")
    fetch.add_argument("--no-download", action="store_true",
                       help="if the weights are missing, say so and stop instead of downloading them")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                   help="weights dtype (default float32, the parity mode; on a GPU bfloat16 is the speed mode: "
                        "Qwen2 weights can overflow in float16; bfloat16 is slower on most CPUs)")
    p.add_argument("--quantize", default=None, choices=["int8"], help="int8 dynamic quantisation (CPU speed-up; "
                   "with --device auto it runs on the CPU)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--share", action="store_true", help="opt-in: open a public Gradio share link")
    p.add_argument("--ui", default="gradio", choices=["gradio", "streamlit", "local", "none"],
                   help="gradio (default) or streamlit: the same live voice, barge-in and typed/uploaded questions; "
                        "local: presenter mode on this machine's microphone, speaker and camera, in the terminal; "
                        "none: no page (with --api)")
    p.add_argument("--api", action="store_true", help="also serve the OpenAI Realtime API (WebSocket "
                   "ws://HOST:PORT/v1/realtime) beside the Gradio page, on the same model (docs/api.md)")
    p.add_argument("--api-key", default=None, help="with --api: require 'Authorization: Bearer KEY' (default: "
                   "the OMNI_API_KEY environment variable; unset: no key, so keep --host 127.0.0.1)")
    p.add_argument("--policy", default="command", choices=["command", "any", "off", "model"],
                   help="barge-in: command = only stop phrases interrupt (default); any = any speech interrupts; "
                        "off = half-duplex (for speakers without echo cancellation); model = the checkpoint's own "
                        "stop signal (a checkpoint trained with `omni train --stage irq`)")
    p.add_argument("--phrases", default=None, help="comma-separated stop phrases (default: 'stop omni' and a few "
                                                   "short stop words)")
    p.add_argument("--asr", default="auto",
                   help="recogniser for the stop-command check: auto (bundled Whisper tiny.en if installed, else "
                        "the checkpoint's small.pt), whisper (small.pt), none, or a faster-whisper model path/name")
    p.add_argument("--end-silence", type=float, default=0.6, help="silence that ends your turn, seconds (0.6)")
    p.add_argument("--multi-turn", action="store_true", help="send earlier exchanges as context (opt-in: the "
                                                             "official weights are single-turn)")
    p.add_argument("--max-new-tokens", type=int, default=int(os.environ.get("OMNI_MAX_NEW_TOKENS", "512")),
                   help="answer length budget (512)")
    p.add_argument("--prebuffer", type=float, default=0.3, help="seconds of speech queued before playback starts "
                   "while the answer is still being generated (0.3; 0 plays at once). If a slow model runs playback "
                   "dry, it waits for twice as much each time (at most 3 s)")
    p.add_argument("--no-early-encode", action="store_true", help="do not encode your question while the "
                   "end-of-turn silence runs out (by default Whisper starts 0.2 s into that silence, so the "
                   "answer comes up to 0.4 s sooner on a CPU; the work is dropped if you go on speaking)")
    p.add_argument("--max-voice", type=int, default=4, help="simultaneous voice connections (4)")
    p.add_argument("--max-sessions", type=int, default=16, help="conversations open at once (16); a page beyond "
                   "them is told the assistant is busy and gets in when one closes")
    p.add_argument("--max-answers", type=int, default=4, help="answers the model works on at once, in turns (4); "
                   "more wait in a queue. Each holds a KV cache (on a GPU, a captured decode graph)")
    p.add_argument("--recordings", default=None, help="keep every session's audio, images and transcript in this "
                                                      "folder, one subfolder per session (default: a private temp "
                                                      "folder, cleaned up when a session ends)")
    local = p.add_argument_group("presenter mode (--ui local)")
    local.add_argument("--mic", default=None, help="microphone: index or part of its name (default: the system's)")
    local.add_argument("--speaker", default=None, help="speaker: index or part of its name (default: the system's)")
    local.add_argument("--camera", default="auto", help="camera index, a path or URL OpenCV reads (a y4m FIFO, "
                       "udp://…), or none (default auto: camera 0 if it opens)")
    local.add_argument("--list-devices", action="store_true", help="list microphones, speakers and cameras; exit")
    local.add_argument("--preview", action="store_true", help="show the camera in a window (needs OpenCV with GUI "
                                                               "support; the headless build has none)")
    local.add_argument("--aec", default="webrtc", choices=["webrtc", "off"], help="echo canceller between speaker "
                       "and microphone (default webrtc: WebRTC AEC3); with off, use --policy off on speakers")
    local.add_argument("--audio-rate", type=int, default=None, help="open both devices at this rate, Hz (default: "
                                                                     "each device's own rate)")
    p.add_argument("--events", default=None, help=argparse.SUPPRESS)  # JSONL event log for the browser tests
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    from .serve_options import add_serve_options

    add_serve_options(p)
    return p


def parse(argv: list[str] | None = None, known_only: bool = False) -> argparse.Namespace:
    """The options; with `known_only`, arguments that are not ours are left alone (Streamlit passes its own)."""
    return parser().parse_known_args(argv)[0] if known_only else parser().parse_args(argv)


class BadOption(ValueError):
    """An option the app cannot start with (a message for the command line)."""


def engine_config(args):
    """The engine's settings from the options, checked before anything loads: a bad value is said on the command
    line, not on a page that never comes up."""
    from omni.errors import OmniInputError
    from omni.device import check_options

    from .config import EngineConfig

    try:
        check_options(args.device, args.dtype, args.quantize)
        return EngineConfig.from_options(args)
    except (OmniInputError, ValueError) as e:
        raise BadOption(str(e)) from None


def is_tiny(checkpoint: str) -> bool:
    from omni.random_checkpoint import is_test_checkpoint

    return checkpoint == "tiny" or is_test_checkpoint(checkpoint)


def ensure_checkpoint(args) -> str | None:
    """Download the official weights if they are missing (unless --no-download); else say what went wrong."""
    from omni.checkpoint import missing_files

    if args.checkpoint == "tiny":
        return None
    d = Path(args.checkpoint)
    missing = missing_files(d)
    if not missing:
        return None
    tiny = "Or try the app offline now: python app.py --checkpoint tiny   (random weights: the answers are noise)"
    if args.no_download:
        names = ", ".join(str(p.relative_to(d)) for p in missing)
        return (f"No checkpoint in {d}/ (missing: {names}).\n"
                f"  Download it ({DOWNLOAD_SIZE}): run the same command without --no-download, "
                f"or: python -m omni download --dir {d}\n  {tiny}")
    try:
        from omni.download import download

        print(f"No checkpoint in {d}/: downloading the official weights ({HF_REPO} + SNAC).", flush=True)
        download(d)  # says the total size first; progress bars; checksums of the official files
    except Exception as e:  # offline, a refused or broken file, a full disk: one message, not a traceback
        return f"Could not download the weights into {d}/: {e}\n{tiny}"
    missing = missing_files(d)
    return f"The download finished but {', '.join(map(str, missing))} are still missing." if missing else None


def start_engine(args, say: Callable[[str], None] = print, event_sink=None):
    """Load the model and everything around it: the tiny checkpoint if asked for, the model (with progress), the
    stop-command recogniser (the assistant works without one: then says so), the engine, one warm-up request
    (the first user does not pay for lazy initialisation), and the heap frozen for the collector. Returns the
    engine and a one-line summary for the status line."""
    import omni

    from .config import policy_warning
    from .engine import Engine, freeze_heap
    from .interrupt import make_transcriber
    from .private import tiny_checkpoint_dir

    t0 = time.monotonic()
    config = engine_config(args)
    checkpoint = args.checkpoint
    if checkpoint == "tiny":
        say("Building the tiny random checkpoint…")
        checkpoint = str(tiny_checkpoint_dir())
    say(f"Loading the model from {checkpoint} …")
    model = omni.load_model(checkpoint, device=args.device, dtype=args.dtype, quantize=args.quantize, progress=True)
    say("Loading the speech recogniser for stop commands…")
    try:
        transcriber = make_transcriber(args.asr, checkpoint, str(model.device))
        asr = getattr(transcriber, "name", "none") if transcriber else "none (only the 'any' and 'off' policies " \
                                                                       "interrupt)"
    except Exception as e:  # the assistant works without it; say what failed instead of blaming the model
        transcriber = None
        asr = (f"could not load --asr {args.asr!r} ({type(e).__name__}: {e}); stop phrases are not recognised, "
               f"only the 'any' and 'off' policies interrupt (try --asr auto)")
        log.debug("stop-command ASR failed to load:\n%s", traceback.format_exc())
    say("Warming up…")
    engine = Engine(model, config, transcriber=transcriber, recordings_dir=args.recordings)
    engine.event_sink = event_sink
    for _ in model.stream("T1T2", text="hi", options=omni.DecodingOptions(max_new_tokens=2)):
        pass
    freeze_heap()
    ready = f"Model ready ({time.monotonic() - t0:.1f} s). Stop-command ASR: {asr}."
    warning = policy_warning(config.policy, model)
    return engine, ready + (f" {warning}" if warning else "")


# ------------------------------------------------------------------------------ latency figures

LATENCY_COLUMNS = ["turn", "task", "status", "queue wait s", "prefill ms", "first audio s", "ms/step", "steps/s",
                   "RTF", "playback pauses", "peak RSS MB", "GPU MB", "onset→silence s", "command check s"]


def _fmt(v, digits=2) -> str:
    if v is None or v == "":
        return ""
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def latency_row(t) -> list[str]:
    """One turn's figures, in LATENCY_COLUMNS order (the Gradio page's table)."""
    tm = t.timings
    m = tm.model or {}
    return [
        str(t.index), t.task, t.status,
        _fmt(tm.queue_wait_s),
        _fmt(None if m.get("prefill_s") is None else m["prefill_s"] * 1000, 1),  # ms: a GPU's is tens of ms
        _fmt(tm.speech_end_to_first_audio_s if tm.speech_end_to_first_audio_s is not None else tm.first_audio_s),
        _fmt(m.get("decode_ms_per_step"), 1),
        _fmt(m.get("steps_per_s"), 1),
        _fmt(m.get("real_time_factor")),
        _fmt(tm.rebuffers),
        _fmt(m.get("peak_rss_mb"), 0),
        _fmt(m.get("gpu_peak_mem_mb"), 0),
        _fmt(tm.onset_to_silence_s if tm.onset_to_silence_s is not None else tm.duck_onset_to_silence_s, 3),
        _fmt(tm.command_check_s, 3),
    ]


def latency_line(t) -> str:
    """The same figures on one line (the Streamlit page, under each answer)."""
    m, tm = t.timings.model or {}, t.timings
    parts = []
    for label, value, fmt in (("prefill", None if m.get("prefill_s") is None else m["prefill_s"] * 1000, "{:.1f} ms"),
                              ("first audio", tm.first_audio_s, "{:.2f} s"),
                              ("decode", m.get("decode_ms_per_step"), "{:.1f} ms/step"),
                              ("", m.get("steps_per_s"), "{:.1f} steps/s"),
                              ("RTF", m.get("real_time_factor"), "{:.2f}"),
                              ("peak RSS", m.get("peak_rss_mb"), "{:.0f} MB"),
                              ("GPU", m.get("gpu_peak_mem_mb"), "{:.0f} MB")):
        if value is not None:
            parts.append(f"{label} {fmt.format(value)}".strip())
    if tm.rebuffers:
        parts.append(f"{tm.rebuffers} playback pauses")
    return " · ".join(parts)
