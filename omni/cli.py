"""`python -m omni {generate,stream,download,tiny,bench,train,train-data}`. User errors print one line and exit with code 2."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from .errors import OmniError, OmniInputError
from .prompt import SPEECH_TASKS, TASKS

TASK_HELP = ("A1A2: voice -> speech+text; A1T2: voice -> text; ASR: voice -> transcript; T1A2: text -> speech+text; "
             "T1T2: text -> text; IMAGE_A1A2: image + voice -> speech+text")


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", default="checkpoints", help="checkpoint directory in the official layout "
                   "(default: checkpoints/)")
    p.add_argument("--snac", default=None, help="SNAC 24 kHz directory (default: <checkpoint>/snac_24khz)")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:N (default: auto)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                   help="float32 reproduces the official tokens; bfloat16 is the GPU speed mode (float16 too, but "
                        "Qwen2 weights can overflow in it)")
    p.add_argument("--quantize", default=None, choices=["int8"], help="int8 dynamic quantisation (CPU speed mode; "
                   "with --device auto it runs on the CPU)")
    p.add_argument("--no-cuda-graphs", action="store_true", help="on CUDA, decode with the eager forward instead "
                   "of the captured CUDA-graph step (to compare)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m omni", description="Mini-Omni2 inference: voice, image and text in; "
                                 "text and speech out.")
    sub = ap.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="answer one question; print the text, write tokens and speech",
                       description="Answer one question. " + TASK_HELP)
    _model_args(g)
    g.add_argument("--task", required=True, choices=TASKS, help=TASK_HELP)
    g.add_argument("--audio", help="question recording (any format soundfile/librosa read; first 30 s used)")
    g.add_argument("--image", help="image for IMAGE_A1A2 (PNG, JPEG, ...)")
    g.add_argument("--text", help="question text for T1A2 / T1T2")
    g.add_argument("--max-new-tokens", type=int, default=None, help="at most this many tokens per row "
                   "(default: what fits in the 2048-token context)")
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy, the official behaviour (default)")
    g.add_argument("--top-k", type=int, default=None)
    g.add_argument("--top-p", type=float, default=None)
    g.add_argument("--seed", type=int, default=None, help="seed for sampling (temperature > 0)")
    g.add_argument("--tokens-json", help="write {task, prompt_length, text: [ids], audio: [[ids] x 7]} here")
    g.add_argument("--out-wav", help="write the spoken answer here (24 kHz mono 16-bit WAV)")
    g.add_argument("--stream", action="store_true", help="print text as it is generated and report streaming stats")
    g.add_argument("--stream-mode", default="smooth", choices=["smooth", "official"],
                   help="smooth: chunks decoded with context, tail kept; official: the official chunking")
    g.add_argument("--stride", type=int, default=None,
                   help="frames per streamed audio chunk (85 ms each): official mode uses exactly this (default 4); "
                        "smooth mode starts at 2 frames and doubles every second chunk up to it (default 16)")

    d = sub.add_parser("download", help="download the official checkpoint and SNAC from Hugging Face")
    d.add_argument("--dir", default="checkpoints", help="target directory (default: checkpoints/)")

    t = sub.add_parser("tiny", help="write a random checkpoint in the official layout (tests, benchmarks)")
    t.add_argument("dir")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--full-size", action="store_true", help="official dimensions (2.8 GB; for benchmarks)")

    from .train.command import add_parsers as add_train_parsers

    add_train_parsers(sub)

    b = sub.add_parser("bench", help="measure prefill, decode speed, time to first audio, real-time factor, memory")
    _model_args(b)
    b.add_argument("--steps", type=int, default=64, help="decode steps to time (default 64)")
    b.add_argument("--stream-steps", type=int, default=200, help="length of the streamed answer used for time to "
                   "first audio and real-time factor (default 200 steps = 16 s of speech)")
    b.add_argument("--seconds", type=float, default=3.5, help="length of the spoken test question (default 3.5)")
    b.add_argument("--prebuffer", type=float, default=0.3, help="prebuffer of the simulated app player, seconds "
                   "(default 0.3, as the app): app_start_s / app_stall_s are what its listener hears")
    b.add_argument("--ttfa-runs", type=int, default=3, help="requests timed to their first audio; ttfa_s is the "
                   "median (default 3: the streamed answer and 2 more)")
    b.add_argument("--json", help="write the figures here as JSON")
    b.add_argument("--agreement", type=int, default=0, metavar="N",
                   help="also measure token agreement with fp32 over N prompts (speed modes; in fp32: the "
                   "int8-screened greedy heads against the full fp32 heads)")
    b.add_argument("--no-screen", action="store_true",
                   help="CPU fp32: compute the whole fp32 head for greedy ids (no int8 screen), to compare")
    return ap


def cmd_generate(a) -> int:
    import numpy as np
    import soundfile as sf

    from .decoding import DecodingOptions
    from .events import AudioChunk, Finished, TextDelta
    from .inference import load_model

    opts = DecodingOptions(max_new_tokens=a.max_new_tokens, temperature=a.temperature, top_k=a.top_k,
                           top_p=a.top_p, seed=a.seed)
    opts.validate()
    a.audio, a.image = _check_inputs(a)  # bad input fails here, before seconds of model loading
    model = load_model(a.checkpoint, a.snac, a.device, a.dtype, a.quantize, progress=True,
                       cuda_graphs=not a.no_cuda_graphs)
    if a.stream:
        result, pcm = None, []
        for ev in model.stream(a.task, a.audio, a.image, a.text, opts, stride=a.stride, mode=a.stream_mode):
            if isinstance(ev, TextDelta):
                print(ev.text, end="", flush=True)
            elif isinstance(ev, AudioChunk):
                pcm.append(ev.pcm)
            elif isinstance(ev, Finished):
                result = ev.result
        print()
        result.audio = np.concatenate(pcm) if pcm else np.zeros(0, np.int16)
    else:
        result = model.generate(a.task, a.audio, a.image, a.text, opts)
        print(result.text)
    s = result.stats
    print(f"[omni] prompt {s.prompt_length} tokens, {s.steps} steps, {s.steps_per_s:.1f} steps/s, "
          f"stop: {s.stop_reason}" + (f", first audio {s.time_to_first_audio_s:.2f} s" if s.time_to_first_audio_s
                                      else ""), file=sys.stderr)
    if a.tokens_json:
        Path(a.tokens_json).write_text(json.dumps(model.token_record(result)))
    if a.out_wav:
        if a.task not in SPEECH_TASKS:
            print(f"[omni] task {a.task} answers in text only; no speech written to {a.out_wav}", file=sys.stderr)
        else:
            sf.write(a.out_wav, result.audio, 24000, subtype="PCM_16")
    return 0


def _check_inputs(a):
    """Read the inputs the task needs (clear errors for anything missing or broken); return audio, image."""
    from .audio import SAMPLE_RATE, load_audio
    from .prompt import AUDIO_INPUT_TASKS, TEXT_INPUT_TASKS
    from .vision import open_image

    audio = image = None
    if a.task in AUDIO_INPUT_TASKS:
        if not a.audio:
            raise OmniInputError(f"task {a.task} needs --audio (a recording of the question)")
        audio = (SAMPLE_RATE, load_audio(a.audio))
    if a.task == "IMAGE_A1A2":
        if not a.image:
            raise OmniInputError("task IMAGE_A1A2 needs --image")
        image = open_image(a.image)
    if a.task in TEXT_INPUT_TASKS and (a.text is None or not a.text.strip()):
        raise OmniInputError(f"task {a.task} needs --text (the question); it is empty")
    # the model takes a picture only with a spoken question: say so instead of answering without it
    unused = [f for f, v, tasks in (("--image", a.image, ("IMAGE_A1A2",)), ("--audio", a.audio, AUDIO_INPUT_TASKS),
                                    ("--text", a.text, TEXT_INPUT_TASKS)) if v and a.task not in tasks]
    if unused:
        print(f"warning: task {a.task} does not use {' or '.join(unused)} (ignored); tasks: "
              f"IMAGE_A1A2 = image + spoken question, A1A2/A1T2/ASR = spoken question, T1A2/T1T2 = typed text",
              file=sys.stderr)
    for flag, path in (("--tokens-json", a.tokens_json), ("--out-wav", a.out_wav)):
        if path and not Path(path).resolve().parent.is_dir():
            raise OmniInputError(f"{flag}: folder {Path(path).resolve().parent} does not exist")
    return audio, image


def cmd_tiny(a) -> int:
    from .random_checkpoint import make_tiny_checkpoint

    out = make_tiny_checkpoint(a.dir, seed=a.seed, full_size=a.full_size)
    print(f"wrote a random {'full-size' if a.full_size else 'tiny'} checkpoint to {out} (SNAC in {out}/snac_24khz)")
    return 0


def cmd_download(a) -> int:
    from .download import download

    download(Path(a.dir))
    return 0


def cmd_bench(a) -> int:
    from .bench import run_bench

    for name, value, least in (("--steps", a.steps, 1), ("--stream-steps", a.stream_steps, 1),
                               ("--seconds", a.seconds, 0.1), ("--prebuffer", a.prebuffer, 0),
                               ("--ttfa-runs", a.ttfa_runs, 1),
                               ("--agreement", a.agreement, 0)):
        if value < least:
            raise OmniInputError(f"{name} must be >= {least} (got {value})")
    run_bench(a)
    return 0


def _out_of_memory(e: BaseException) -> bool:
    import torch

    return isinstance(e, (MemoryError, torch.OutOfMemoryError))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .train.command import cmd_train, cmd_train_data

    command = {"generate": cmd_generate, "tiny": cmd_tiny, "download": cmd_download, "bench": cmd_bench,
               "train": cmd_train, "train-data": cmd_train_data}[args.command]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            warnings.showwarning = lambda msg, *_a, **_k: print(f"warning: {msg}", file=sys.stderr)
            return command(args)
    except OmniError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as e:
        if not _out_of_memory(e):
            raise
        print(f"error: out of memory ({type(e).__name__}): try a smaller --max-new-tokens, --dtype bfloat16 on a GPU, "
              f"--quantize int8 or --device cpu", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
