"""Start the Mini-Omni2 demo: `python app.py` (Gradio, 127.0.0.1:7860) or `python app.py --checkpoint tiny`.

This file only parses arguments, makes sure the weights are there, and starts a UI; options, weights and loading
are in webui/startup.py, the conversation in webui/engine.py and webui/session.py, the pages in
webui/gradio_app.py and webui/streamlit_app.py, the presenter mode (`--ui local`) in webui/local_app.py.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path

from webui.startup import TINY_BANNER, BadOption, engine_config, ensure_checkpoint, is_tiny, parse

# options of the Gradio page that the Streamlit page has no use for
GRADIO_ONLY = ("max_voice", "share")


def run_streamlit(args, argv: list[str]) -> int:
    defaults = parse([])
    ignored = [f"--{k.replace('_', '-')}" for k in GRADIO_ONLY if getattr(args, k) != getattr(defaults, k)]
    if ignored:
        print(f"Note: {', '.join(ignored)} only apply to the Gradio page; the Streamlit page ignores them.",
              file=sys.stderr)
    # the page parses this same command line (webui/startup.py): every option reaches it as given
    cmd = [sys.executable, "-m", "streamlit", "run", str(Path(__file__).parent / "webui" / "streamlit_app.py"),
           "--server.address", args.host, "--server.port", str(args.port), "--server.headless", "true",
           "--browser.gatherUsageStats", "false", "--client.toolbarMode", "viewer", "--", *argv]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, cmd)  # streamlit takes this process over: stopping app.py stops the server


def run_serve(args, argv: list[str]) -> int:
    """--serve ray: the API and a page over a pool of model replicas (webui/serve_ray.py, docs/scale-out.md)."""
    from webui.serve_options import serve_plan

    try:
        plan = serve_plan(args)
    except ValueError as e:
        print(f"Bad option: {e}", file=sys.stderr)
        return 2
    from webui.serve_ray import run

    signal.signal(signal.SIGTERM, _stop_like_ctrl_c)
    return run(args, argv, plan, TINY_BANNER if is_tiny(args.checkpoint) else None)


def _stop_like_ctrl_c(signum, frame) -> None:
    # once: a second SIGTERM (e.g. `timeout` and `pkill` both signalling) must not break the orderly close
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def _stop_page_like_ctrl_c(signum, frame) -> None:
    """SIGTERM to the page (with --api): the API's open conversations end after their answers, told why, first."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from webui.realtime_server import end_conversations_from_thread

    end_conversations_from_thread()
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:  # before the page comes up: a dead page is worse than a one-line error
        engine_config(args)
    except BadOption as e:
        print(f"Bad option: {e}", file=sys.stderr)
        return 2
    if args.api and args.ui in ("streamlit", "local") or args.ui == "none" and not args.api:
        print("Bad option: the API (--api) runs beside the Gradio page or alone (--ui none --api).", file=sys.stderr)
        return 2
    if args.list_devices:
        from webui.local_app import list_devices
        return list_devices(args)
    if args.ui == "local":  # opens the devices before the weights: a missing microphone is said at once
        from webui.local_app import run_local
        return run_local(args)
    try:
        err = ensure_checkpoint(args)
    except KeyboardInterrupt:
        print("\nDownload interrupted: run the same command again to resume it.", file=sys.stderr)
        return 130
    if err:
        print(err, file=sys.stderr)
        return 2
    if args.ui == "streamlit":
        return run_streamlit(args, argv)
    if args.serve == "ray":
        return run_serve(args, argv)

    from webui.gradio_app import OmniApp, launch
    app = OmniApp(args)
    # `kill`, systemd and docker stop with SIGTERM: end like Ctrl-C, so open sessions are closed (transcripts of a
    # --recordings folder written) instead of the process vanishing
    signal.signal(signal.SIGTERM, _stop_page_like_ctrl_c if args.api else _stop_like_ctrl_c)
    app.load_in_background()  # the page comes up at once and shows loading progress
    routes, key = [], None
    if args.api:
        from webui.realtime_server import api_key, realtime_routes, serve_api_only

        key = api_key(args)
        routes = realtime_routes(app, key)
        sys.stdout.write(f"[mini-omni2] Realtime API: ws://{args.host}:{args.port}/v1/realtime"
                         f"{' (API key required)' if key else ''}\n")
        if not key and args.host not in ("127.0.0.1", "localhost", "::1"):
            sys.stdout.write("[mini-omni2] Warning: the API has no key and anyone who reaches this address can use "
                             "it; set --api-key (or OMNI_API_KEY).\n")
    if args.ui == "none":
        try:
            serve_api_only(app, args.host, args.port, key)
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the engine closes its sessions at exit
            pass
        return 0
    sys.stdout.write(f"[mini-omni2] Open http://{args.host}:{args.port}/ (the page says when the model is ready)\n")
    sys.stdout.flush()  # one write: the loading thread prints too
    launch(app, host=args.host, port=args.port, share=args.share,
           banner=TINY_BANNER if is_tiny(args.checkpoint) else None, routes=routes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
