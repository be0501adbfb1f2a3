"""Start the Mini-Omni2 demo: `python app.py` (Gradio, 127.0.0.1:7860) or `python app.py --checkpoint tiny`.

This file only parses arguments, makes sure a checkpoint is there, and starts a UI. The conversation
logic is in webui/engine.py; the page is webui/gradio_app.py.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path

HF_REPO = "gpt-omni/mini-omni2"
# What a download fetches, for the help texts: lit_model.pth 2.81 GB, small.pt 0.48 GB, ViT-B-32.pt 0.35 GB,
# tokenizer.json 7 MB (the sizes Hugging Face shows), plus SNAC. The download itself says the hub's exact total.
DOWNLOAD_SIZE = "about 3.7 GB"
TINY_BANNER = ("⚠️ **Random weights — answers are noise.** This is a tiny test checkpoint; it exercises the whole "
               "pipeline offline. Start without `--checkpoint tiny` for real answers (the official weights are "
               "downloaded into checkpoints/ if they are not there).")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="app.py",
        description="Mini-Omni2 real-time multimodal assistant: webcam + microphone + text in, streamed speech out. "
                    "Opens a Gradio page; the model is loaded once and shared by all browser sessions.",
        epilog="Examples:\n"
               "  python app.py                         # checkpoints/ on 127.0.0.1:7860 (downloaded first if\n"
               f"                                        # missing: {DOWNLOAD_SIZE}, resumable, checksummed)\n"
               "  python app.py --checkpoint tiny       # tiny random weights, offline, for trying the UI\n"
               "  python app.py --no-download           # missing weights: say so and stop, no network\n"
               "  python app.py --quantize int8 --port 8000\n"
               "The microphone needs https or localhost: on a remote machine use an ssh tunnel\n"
               "(ssh -L 7860:127.0.0.1:7860 host) or --share.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", default="checkpoints",
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
    p.add_argument("--ui", default="gradio", choices=["gradio", "streamlit"],
                   help="gradio (default) or streamlit: the same live voice, barge-in and typed/uploaded questions")
    p.add_argument("--policy", default="command", choices=["command", "any", "off"],
                   help="barge-in: command = only stop phrases interrupt (default); any = any speech interrupts; "
                        "off = half-duplex (for speakers without echo cancellation)")
    p.add_argument("--phrases", default=None, help="comma-separated stop phrases (default: 'stop omni' and a few "
                                                   "short stop words)")
    p.add_argument("--asr", default="auto",
                   help="recogniser for the stop-command check: auto (bundled Whisper tiny.en if installed, else "
                        "the checkpoint's small.pt), whisper (small.pt), none, or a faster-whisper model path/name")
    p.add_argument("--end-silence", type=float, default=0.6, help="silence that ends your turn, seconds (0.6)")
    p.add_argument("--multi-turn", action="store_true", help="send earlier exchanges as context (opt-in: the "
                                                             "official weights are single-turn)")
    p.add_argument("--max-new-tokens", type=int, default=512, help="answer length budget (512)")
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
    p.add_argument("--events", default=None, help=argparse.SUPPRESS)  # JSONL event log for the browser tests
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p.parse_args(argv)


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


# options of the Gradio page that the Streamlit page has no use for
GRADIO_ONLY = ("max_voice", "share")


def run_streamlit(args) -> int:
    defaults = parse_args([])
    ignored = [f"--{k.replace('_', '-')}" for k in GRADIO_ONLY if getattr(args, k) != getattr(defaults, k)]
    if ignored:
        print(f"Note: {', '.join(ignored)} only apply to the Gradio page; the Streamlit page ignores them.",
              file=sys.stderr)
    cmd = [sys.executable, "-m", "streamlit", "run", str(Path(__file__).parent / "webui" / "streamlit_app.py"),
           "--server.address", args.host, "--server.port", str(args.port), "--server.headless", "true",
           "--browser.gatherUsageStats", "false", "--client.toolbarMode", "viewer", "--", "--checkpoint", args.checkpoint, "--device", args.device,
           "--dtype", args.dtype, "--max-new-tokens", str(args.max_new_tokens), "--policy", args.policy,
           "--asr", args.asr, "--end-silence", str(args.end_silence), "--prebuffer", str(args.prebuffer)]
    cmd += ["--phrases", args.phrases] if args.phrases else []
    cmd += ["--no-early-encode"] if args.no_early_encode else []
    cmd += ["--quantize", args.quantize] if args.quantize else []
    cmd += ["--multi-turn"] if args.multi_turn else []
    cmd += ["--recordings", args.recordings] if args.recordings else []
    cmd += ["--max-sessions", str(args.max_sessions), "--max-answers", str(args.max_answers)]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, cmd)  # streamlit takes this process over: stopping app.py stops the server


def _stop_like_ctrl_c(signum, frame) -> None:
    raise KeyboardInterrupt


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from omni.device import check_options
    from omni.errors import OmniInputError

    try:  # before the page comes up: a dead page is worse than a one-line error
        check_options(args.device, args.dtype, args.quantize)
    except OmniInputError as e:
        print(f"Bad option: {e}", file=sys.stderr)
        return 2
    from webui.engine import EngineConfig

    try:
        config = EngineConfig.from_options(args)  # both pages: a bad value is said here, not on the page
    except ValueError as e:
        print(f"Bad option: {e}", file=sys.stderr)
        return 2
    try:
        err = ensure_checkpoint(args)
    except KeyboardInterrupt:
        print("\nDownload interrupted: run the same command again to resume it.", file=sys.stderr)
        return 130
    if err:
        print(err, file=sys.stderr)
        return 2
    if args.ui == "streamlit":
        return run_streamlit(args)

    from webui.gradio_app import LoadOptions, OmniApp, launch
    app = OmniApp(LoadOptions(checkpoint=args.checkpoint, tiny=args.checkpoint == "tiny", device=args.device,
                              dtype=args.dtype, quantize=args.quantize, asr=args.asr, recordings=args.recordings,
                              events_path=args.events, max_voice=args.max_voice, config=config))
    # `kill`, systemd and docker stop with SIGTERM: end like Ctrl-C, so open sessions are closed (transcripts of a
    # --recordings folder written) instead of the process vanishing
    signal.signal(signal.SIGTERM, _stop_like_ctrl_c)
    app.load_in_background()  # the page comes up at once and shows loading progress
    sys.stdout.write(f"[mini-omni2] Open http://{args.host}:{args.port}/ (the page says when the model is ready)\n")
    sys.stdout.flush()  # one write: the loading thread prints too
    launch(app, host=args.host, port=args.port, share=args.share,
           banner=TINY_BANNER if is_tiny(args.checkpoint) else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
