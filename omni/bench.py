"""`python -m omni bench`: the speed figures of one configuration, printed and optionally written as JSON."""

from __future__ import annotations

import copy
import json
import platform
import statistics
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from .decoding import DecodingOptions, speech_entries, text_entries
from .device import peak_rss_mb
from .events import AudioChunk, Finished
from .inference import load_model
from .linear import small_rows_kernel

AGREEMENT_PROMPTS = ["What is the capital of France?", "Tell me a short story about a cat.",
                     "How do airplanes fly?", "Name three colors.", "What is two plus two?",
                     "Describe the sea.", "Why is the sky blue?", "Say hello to my friend."]

# greedy, and past the end of the answer: random weights may end it after a few steps (not a speed figure)
TIMING = DecodingOptions(ignore_stop=True)


def spoken_question(seconds: float, sr: int = 16000) -> tuple[int, np.ndarray]:
    """A speech-like test signal (voiced harmonics with a syllable envelope); content is irrelevant for speed."""
    t = np.arange(int(seconds * sr)) / sr
    f0 = 120 + 30 * np.sin(2 * np.pi * 0.7 * t)
    voiced = sum(np.sin(2 * np.pi * k * np.cumsum(f0) / sr) / k for k in range(1, 8))
    envelope = 0.5 * (1 + np.sin(2 * np.pi * 4 * t)) * (t > 0.2) * (t < seconds - 0.2)
    return sr, (0.3 * voiced * envelope).astype(np.float32)


def _decode_ms(model, x, steps: int) -> tuple[list[float], float]:
    """Per-step wall times of the batch-2 speech loop (greedy, budget only), and the prefill time."""
    times, t_prev = [], time.perf_counter()
    t_start = t_prev
    prefill = 0.0
    for k, _ in enumerate(speech_entries(model.lm, model.vocab, x, steps + 1, TIMING)):
        now = time.perf_counter()
        if k == 0:
            prefill = now - t_start
        else:
            times.append(now - t_prev)
        t_prev = now
    return times, prefill


def playback_gaps(chunks: list[tuple[float, float]], finished: float, prebuffer_s: float = 0.0,
                  max_refill_s: float = 3.0) -> tuple[float, float, int]:
    """What a listener hears from chunks arriving at (time, seconds): (start time, seconds of gaps, gaps).

    The player is the app's (webui.engine): it starts once `prebuffer_s` of speech is queued (or the answer is
    complete at `finished`); each time it runs dry it waits until twice the previous target is queued (at most
    `max_refill_s`, the app's max_ahead_s). prebuffer_s 0: a player that plays every chunk as it comes.
    """
    start, play_end, stall_s, stalls = None, 0.0, 0.0, 0
    waiting, queued, target, wait_from = True, 0.0, min(prebuffer_s, max_refill_s), 0.0
    for i, (t, seconds) in enumerate(chunks):
        if not waiting and t > play_end:  # ran dry before this chunk came
            waiting, queued, wait_from = True, 0.0, play_end
            target = min(2 * target, max_refill_s)
        if not waiting:
            play_end += seconds
            continue
        queued += seconds
        enough = queued >= target
        if enough or i == len(chunks) - 1:
            go = t if enough else max(t, finished)
            if start is None:
                start = go
            else:
                stall_s, stalls = stall_s + go - wait_from, stalls + 1
            play_end, waiting = go + queued, False
    return (start if start is not None else 0.0), stall_s, stalls


def token_agreement(model, reference, n: int, max_new: int = 24) -> dict:
    """Compare greedy tokens of `model` with `reference` (fp32) on n text prompts (T1A2 and T1T2)."""
    same_prompts, agree, total = 0, 0, 0
    for i in range(n):
        task = "T1A2" if i % 2 == 0 else "T1T2"
        text = AGREEMENT_PROMPTS[i % len(AGREEMENT_PROMPTS)]
        outs = []
        for m in (reference, model):
            _, x = m.prepare(task, text=text)
            loop = speech_entries if task == "T1A2" else text_entries
            outs.append([e if isinstance(e, list) else [e] for e in loop(m.lm, m.vocab, x.to(m.device), max_new,
                                                                         DecodingOptions())])
        a, b = outs
        n_pos = max(len(a), len(b))
        match = sum(1 for i in range(min(len(a), len(b))) if a[i] == b[i])
        agree, total = agree + match, total + n_pos
        same_prompts += a == b
    return {"prompts": n, "identical_prompts": same_prompts, "position_agreement": agree / max(total, 1)}


def first_audio_s(model, question, max_steps: int) -> float | None:
    """Seconds from the request to its first audio chunk (the answer is then abandoned)."""
    model.forget_audio()  # Whisper is part of the request: no features kept from an earlier one
    t0 = time.perf_counter()
    for ev in model.stream("A1A2", audio=question, options=replace(TIMING, max_new_tokens=max_steps)):
        if isinstance(ev, AudioChunk):
            return time.perf_counter() - t0
    return None


def encode_ms(model, question) -> float:
    """The audio encoder's part of a voice request: log-mel + Whisper over its 30 s window, in ms."""
    model.forget_audio()
    t0 = time.perf_counter()
    model.encode_audio(question)
    return (time.perf_counter() - t0) * 1000


def screen_stats(lm) -> dict | str:
    """How the int8 screens of the greedy heads did (omni/argmax_screen.py): rows re-scored per call, full-head fallbacks."""
    if lm.screens is None:
        return "off"
    return {name: s.stats() for name, s in zip(("text", "audio"), lm.screens)}


def full_heads(model):
    """The same loaded model (shared weights) computing its greedy ids from the whole fp32 heads."""
    ref = copy.copy(model)
    ref.lm = copy.copy(model.lm)
    ref.lm.screens = None
    return ref


def cpu_name(cpuinfo: str | None = None) -> str:
    """The CPU's model name (Linux) with its family and model numbers, which tell CPU generations apart where a
    VM hides the name ("AMD EPYC" is a Zen 4 at family 25, a Zen 5 at 26); else what platform knows."""
    try:
        text = Path("/proc/cpuinfo").read_text() if cpuinfo is None else cpuinfo
    except OSError:
        text = ""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if not key.strip():
            break  # the first processor's block is enough
        fields.setdefault(key.strip(), value.strip())
    if "model name" not in fields:
        return platform.processor() or platform.machine()
    ids = [f"{k} {fields[k]}" for k in ("cpu family", "model") if k in fields]
    return fields["model name"] + (f" ({', '.join(ids)})" if ids else "")


def run_bench(a) -> dict:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    t0 = time.perf_counter()
    model = load_model(a.checkpoint, a.snac, a.device, a.dtype, a.quantize, progress=True,
                       cuda_graphs=not a.no_cuda_graphs)
    load_s = time.perf_counter() - t0
    if a.no_screen:
        model.lm.screens = None
    question = spoken_question(a.seconds)
    prompt, x = model.prepare("A1A2", audio=question)
    # warm-up (allocator, kernels), then the timed loop
    _decode_ms(model, x, 3)
    times, prefill_s = _decode_ms(model, x, a.steps)
    decode_ms = statistics.median(times) * 1000
    # whole request as a user sees it: encoders + prefill + streamed SNAC chunks
    rtf, stream_rtf, audio_s, wall = None, None, 0.0, 0.0
    n_stream = min(a.stream_steps, model.cfg.block_size - prompt.length)
    model.forget_audio()  # the request runs Whisper, as a new question does
    t1 = time.perf_counter()
    arrivals: list[tuple[float, float]] = []  # (time since the request, seconds of speech) per chunk
    for ev in model.stream("A1A2", audio=question, options=replace(TIMING, max_new_tokens=n_stream)):
        if isinstance(ev, AudioChunk):
            arrivals.append((time.perf_counter() - t1, ev.seconds))
        if isinstance(ev, Finished):
            wall = time.perf_counter() - t1
            audio_s = ev.stats.audio_seconds
            rtf = ev.stats.real_time_factor  # wall time of the whole request / seconds of speech produced
    ttfa, first_chunk_s = arrivals[0] if arrivals else (None, 0.0)
    # more requests, each only up to its first chunk: one sample of a noisy machine is not a figure
    ttfas = [ttfa] if ttfa is not None else []
    if ttfas:
        ttfas += [t for _ in range(a.ttfa_runs - 1) if (t := first_audio_s(model, question, n_stream)) is not None]
    whisper_ms = statistics.median(encode_ms(model, question) for _ in range(max(1, a.ttfa_runs)))
    if ttfa is not None and audio_s > first_chunk_s:
        # pace after the first chunk: < 1 is faster than playback on average (gaps: stall_s, gapless_start_s)
        stream_rtf = (wall - ttfa) / (audio_s - first_chunk_s)
    # a player starting this late never runs dry: each chunk arrives before the speech before it is played
    starts = np.cumsum([0.0] + [s for _, s in arrivals[:-1]])
    gapless = max((t - before for (t, _), before in zip(arrivals, starts)), default=0.0)
    _, stall_s, stalls = playback_gaps(arrivals, wall)  # a player that starts with the first chunk
    app_start, app_stall_s, app_stalls = playback_gaps(arrivals, wall, a.prebuffer)  # the app's player
    out = {
        "device": str(model.device), "dtype": a.dtype, "quantize": a.quantize or "none",
        "cpu": cpu_name(), "threads": torch.get_num_threads(), "decode_matmul": small_rows_kernel(),
        **({"int8_engines": model.int8_engines} if model.int8_engines else {}),
        "decode_path": model.decode_path, "whisper_attention": model.whisper_attention, "snac_dtype": model.snac_dtype,
        "head_screen": screen_stats(model.lm),
        "prompt_length": prompt.length, "load_s": round(load_s, 2),
        "whisper_ms": round(whisper_ms, 1), "prefill_ms": round(prefill_s * 1000, 1),
        "decode_steps": len(times), "decode_ms_per_step": round(decode_ms, 1),
        "steps_per_s": round(1000 / decode_ms, 2),
        "ttfa_s": round(statistics.median(ttfas), 3) if ttfas else None,
        "ttfa_runs_s": [round(t, 3) for t in ttfas],
        "rtf": round(rtf, 3) if rtf else None, "stream_rtf": round(stream_rtf, 3) if stream_rtf else None,
        "stream_audio_s": round(audio_s, 2), "stream_wall_s": round(wall, 2),
        "stall_s": round(stall_s, 3), "stalls": stalls, "gapless_start_s": round(gapless, 3),
        "app_prebuffer_s": a.prebuffer, "app_start_s": round(app_start, 3), "app_stall_s": round(app_stall_s, 3),
        "app_stalls": app_stalls,
        "peak_rss_mb": round(peak_rss_mb(), 0),
    }
    if model.device.type == "cuda":
        out["gpu_peak_mem_mb"] = round(torch.cuda.max_memory_allocated(model.device) / 2**20, 0)
    if a.agreement:
        if a.dtype == "float32" and not a.quantize:
            if model.lm.screens is None:
                out["token_agreement"] = {"note": "fp32 is the reference itself"}
            else:  # the screened greedy heads against the whole fp32 heads, on the same weights
                out["token_agreement"] = token_agreement(model, full_heads(model), a.agreement)
        else:
            ref = load_model(a.checkpoint, a.snac, "cpu", "float32", None)
            out["token_agreement"] = token_agreement(model, ref, a.agreement)
    width = max(len(k) for k in out)
    for k, v in out.items():
        print(f"{k:<{width}}  {v}")
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2))
    return out
