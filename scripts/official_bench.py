"""Time the OFFICIAL Mini-Omni2 A1A2 batch-of-2 streaming path (OmniInference.run_AT_batch_stream) on CPU/fp32.

This file contains no official code: it imports gpt-omni/mini-omni2 (75f450e) from --official-dir and the
mini-omni/CLIP fork from --clip-dir, in a separate venv with the official dependencies. Example:
  /tmp/offvenv/bin/python scripts/official_bench.py --official-dir /tmp/official/mini-omni2 \
      --clip-dir /tmp/official/CLIP --checkpoint CKPT --snac CKPT/snac_24khz --audio q.wav [--json out.json]
Nothing in the official files is edited; module globals / instances are wrapped at runtime only to time them:
  * inference.SNAC.from_pretrained -> local --snac dir; decode clamps special ids (>= 4096, emitted by a random
    model) to 4095 so every streamed chunk runs a real SNAC decode of the same shape
  * inference.load_audio (audio read + log-mel), whisper embed_audio, GPT.set_kv_cache,
    inference.next_token_image_batch (forward + sampling), the model forward (hooks), base.sample,
    inference.generate_audio_data (one streamed SNAC chunk) are timed with time.perf_counter
"""

import argparse
import json
import os
import resource
import statistics
import sys
import time


def parse():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--official-dir", required=True, help="checkout of github gpt-omni/mini-omni2")
    ap.add_argument("--clip-dir", required=True, help="checkout of github mini-omni/CLIP")
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--snac", required=True, help="local SNAC dir (config.json + pytorch_model.bin)")
    ap.add_argument("--audio", required=True, help="16 kHz question WAV")
    ap.add_argument("--max-new-tokens", type=int, default=49, help="loop runs max_new_tokens - 1 decode steps")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    return ap.parse_args()


def rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main():
    a = parse()
    t_import0 = time.perf_counter()
    sys.path.insert(0, os.path.abspath(a.clip_dir))
    sys.path.insert(0, os.path.abspath(a.official_dir))
    import torch

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    import inference as inf
    import litgpt.generate.base as base
    from snac import SNAC as _RealSNAC

    t_import = time.perf_counter() - t_import0

    rec = {"set_kv_cache": [], "load_audio": [], "embed_audio": [], "step": [], "step_start": [],
           "forward": [], "sample": [], "snac_chunk": [], "chunk_yield": []}
    stats = {"clamped_ids": 0, "snac_decodes": 0}

    def timed(fn, key):
        def w(*args, **kw):
            t = time.perf_counter()
            out = fn(*args, **kw)
            rec[key].append(time.perf_counter() - t)
            return out
        return w

    class _ClampedSnac:
        def __init__(self, m):
            self.m = m

        def eval(self):
            self.m = self.m.eval()
            return self

        def to(self, *x, **k):
            self.m = self.m.to(*x, **k)
            return self

        def decode(self, codes):
            fixed = []
            for c in codes:
                stats["clamped_ids"] += int((c > 4095).sum())
                fixed.append(c.clamp(max=4095))
            stats["snac_decodes"] += 1
            return self.m.decode(fixed)

    class _SnacNS:
        @staticmethod
        def from_pretrained(repo_id, **kw):
            return _ClampedSnac(_RealSNAC.from_pretrained(a.snac))

    inf.SNAC = _SnacNS

    # ---- model load (official load_model via OmniInference.__init__) ----
    t0 = time.perf_counter()
    client = inf.OmniInference(ckpt_dir=os.path.abspath(a.checkpoint), device="cpu")
    t_load = time.perf_counter() - t0
    rss_after_load = rss_mb()

    model = client.model
    gpt = model.module if hasattr(model, "module") else model
    gpt.set_kv_cache = timed(gpt.set_kv_cache, "set_kv_cache")
    inf.load_audio = timed(inf.load_audio, "load_audio")
    wm = client.whispermodel
    wm.embed_audio = timed(wm.embed_audio, "embed_audio")
    base.sample = timed(base.sample, "sample")
    inf.generate_audio_data = timed(inf.generate_audio_data, "snac_chunk")

    orig_step = inf.next_token_image_batch

    def step(*args, **kw):
        t = time.perf_counter()
        rec["step_start"].append(t)
        out = orig_step(*args, **kw)
        rec["step"].append(time.perf_counter() - t)
        return out

    inf.next_token_image_batch = step
    fwd_t = {}
    model.register_forward_pre_hook(lambda m, i: fwd_t.__setitem__("t", time.perf_counter()))
    model.register_forward_hook(lambda m, i, o: rec["forward"].append(time.perf_counter() - fwd_t["t"]))

    # prompt length as the official code computes it (load_audio -> leng; T = leng + 3)
    import whisper
    n_samples = len(whisper.load_audio(a.audio))
    leng = int((n_samples / 16000) * 1000 / 20) + 1
    T = min(leng, 1500) + 3
    M = T + a.max_new_tokens

    # ---- request ----
    t_req = time.perf_counter()
    gen = client.run_AT_batch_stream(a.audio, max_returned_tokens=M, save_path=None)
    chunks = 0
    try:
        while True:
            next(gen)
            rec["chunk_yield"].append(time.perf_counter() - t_req)
            chunks += 1
    except StopIteration as e:
        list_output = e.value
    t_end = time.perf_counter()

    steps = rec["step"][1:]  # decode steps (batch 2, forward + sampling)
    starts = rec["step_start"]
    # loop period including everything the official loop does (bookkeeping, text stream, SNAC chunks)
    loop_periods = [starts[i + 1] - starts[i] for i in range(1, len(starts) - 1)]
    loop_total = t_end - starts[1]
    n_dec = len(steps)
    res = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "audio_samples": n_samples,
        "prompt_length": T,
        "import_s": t_import,
        "model_load_s": t_load,
        "audio_load_and_mel_s": rec["load_audio"][0],
        "embed_audio_s": rec["embed_audio"][0],
        "whisper_encode_s": rec["load_audio"][0] + rec["embed_audio"][0],
        "kv_cache_alloc_s": rec["set_kv_cache"][0],
        "prefill_forward_s": rec["forward"][0],
        "prefill_step_s": rec["step"][0],
        "prefill_incl_kv_alloc_s": rec["set_kv_cache"][0] + rec["step"][0],
        "decode_steps": n_dec,
        "decode_step_median_ms": 1000 * statistics.median(steps),
        "decode_step_mean_ms": 1000 * statistics.mean(steps),
        "decode_step_min_ms": 1000 * min(steps),
        "decode_forward_median_ms": 1000 * statistics.median(rec["forward"][1:]),
        "sample_per_step_median_ms": 1000 * statistics.median(
            [sum(rec["sample"][i * 8:(i + 1) * 8]) for i in range(1, len(rec["sample"]) // 8)]),
        "snac_chunks": chunks,
        "snac_chunk_median_ms": 1000 * statistics.median(rec["snac_chunk"]) if rec["snac_chunk"] else None,
        "snac_clamped_ids": stats["clamped_ids"],
        "loop_step_mean_ms_incl_snac": 1000 * loop_total / n_dec,
        "loop_period_median_ms": 1000 * statistics.median(loop_periods),
        "time_to_first_audio_s": rec["chunk_yield"][0] if rec["chunk_yield"] else None,
        "request_total_s": t_end - t_req,
        "generated_entries": len(list_output[0]),
        "peak_rss_after_load_mb": rss_after_load,
        "peak_rss_mb": rss_mb(),
    }
    print(json.dumps(res, indent=1))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
