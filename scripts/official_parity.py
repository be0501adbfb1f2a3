"""Run the OFFICIAL Mini-Omni2 inference code (an unmodified checkout kept outside this repo) on CPU/fp32
and dump its greedy tokens in the same JSON as `python -m omni generate --tokens-json`.

This file contains no official code: it imports gpt-omni/mini-omni2 (75f450e) from --official-dir and the
mini-omni/CLIP fork from --clip-dir, and must run in a separate venv that has the official dependencies
(lightning, openai-whisper, snac, tokenizers, torchvision, ftfy, regex). Example:
  /tmp/offvenv/bin/python scripts/official_parity.py --official-dir /tmp/official/mini-omni2 \
      --clip-dir /tmp/official/CLIP --checkpoint CKPT --task A1A2 --audio q.wav --max-new-tokens 40 \
      --tokens-json off.json [--compare ours.json]
Nothing in the official files is edited; a few module globals are wrapped at runtime:
  * inference.SNAC.from_pretrained -> local --snac dir (or a stub when none is given)
  * SNAC decode is guarded: a failing decode (random model emits special ids >= 4096) returns silence
  * the generate_* functions called by the official task wrappers get max_returned_tokens = L + N
  * builders / reconscruct_snac are wrapped only to *observe* prompt length and the final token lists

Output JSON: {"task", "prompt_length", "text": [ids], "audio": [[ids] x 7]} (audio = [] for text tasks).
"""

import argparse
import copy
import json
import os
import sys
import tempfile

TASKS = ["A1A2", "A1T2", "ASR", "T1A2", "T1T2", "IMAGE_A1A2"]
EOT = 151936


def parse():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument(
        "--snac",
        default=None,
        help="local SNAC dir (config.json + pytorch_model.bin); stub if omitted",
    )
    ap.add_argument("--task", required=True, choices=TASKS)
    ap.add_argument("--audio")
    ap.add_argument("--image")
    ap.add_argument("--text")
    ap.add_argument("--max-new-tokens", type=int, required=True)
    ap.add_argument("--tokens-json", required=True)
    ap.add_argument(
        "--official-dir", required=True, help="checkout of github gpt-omni/mini-omni2"
    )
    ap.add_argument(
        "--clip-dir", required=True, help="checkout of github mini-omni/CLIP"
    )
    ap.add_argument(
        "--compare",
        default=None,
        help="tokens JSON of another implementation; exit 1 if it differs",
    )
    ap.add_argument(
        "--a1a2-impl",
        choices=["stream", "batchfn"],
        default="stream",
        help="stream: OmniInference.run_AT_batch_stream loop; batchfn: inference.A1_A2_batch (generate_TA_BATCH)",
    )
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument(
        "--raw-json",
        default=None,
        help="optional: dump raw official return values here",
    )
    return ap.parse_args()


class _GuardedSnac:
    """Wraps a SNAC model (or None = stub). decode never raises; tokens are unaffected either way."""

    def __init__(self, model):
        self.model = model
        self.ok = 0
        self.failed = 0
        self.last_error = None

    def eval(self):
        return self

    def to(self, *a, **k):
        if self.model is not None:
            self.model = self.model.to(*a, **k)
        return self

    def decode(self, codes):
        import torch

        n = codes[0].shape[-1] * 2048 if len(codes) else 0
        if self.model is not None:
            try:
                out = self.model.decode(codes)
                self.ok += 1
                return out
            except (
                IndexError,
                RuntimeError,
            ) as e:  # special ids (>= 4096) from a random model
                self.last_error = repr(e)
        self.failed += 1
        return torch.zeros(1, 1, n)


def main():
    a = parse()
    off = os.path.abspath(a.official_dir)
    sys.path.insert(0, os.path.abspath(a.clip_dir))
    sys.path.insert(0, off)

    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)

    import inference as inf
    from snac import SNAC as _RealSNAC

    # ---- SNAC: official load_model calls SNAC.from_pretrained("hubertsiuzdak/snac_24khz") ----
    snac_holder = {}

    def _from_pretrained(repo_id, **kw):
        m = _RealSNAC.from_pretrained(a.snac) if a.snac else None
        g = _GuardedSnac(m)
        snac_holder["snac"] = g
        return g

    class _SnacNS:
        from_pretrained = staticmethod(_from_pretrained)

    inf.SNAC = _SnacNS

    ckpt = os.path.abspath(a.checkpoint)
    device = "cpu"
    N = a.max_new_tokens
    captured = {}
    raw = {}

    def wrap_builder(mod, name):
        orig = getattr(mod, name)

        def w(*args, **kw):
            feat, ids = orig(*args, **kw)
            captured["prompt_length"] = int(ids[0].size(-1))
            captured["input_ids"] = [t.tolist() for t in ids]
            return feat, ids

        setattr(mod, name, w)

    def wrap_recon(mod):
        orig = mod.reconscruct_snac

        def w(output_list):
            captured["list_output"] = copy.deepcopy([list(x) for x in output_list])
            return orig(output_list)

        mod.reconscruct_snac = w

    def budget(mod, name, M):
        orig = getattr(mod, name)

        def w(*args, **kw):
            kw["max_returned_tokens"] = M
            out = orig(*args, **kw)
            captured["gen_out"] = copy.deepcopy(out)
            return out

        setattr(mod, name, w)

    tmpdir = tempfile.mkdtemp(prefix="offrun_")

    if a.task == "IMAGE_A1A2":
        import inference_vision as infv

        infv.reconscruct_snac  # noqa
        client = infv.OmniVisionInference(ckpt_dir=ckpt, device=device)
        mel, leng = inf.load_audio(a.audio)
        L = 55 + leng
        M = L + N
        wrap_builder(infv, "get_input_ids_ImageQA_ATBatch")
        wrap_recon(infv)
        chunks = 0
        for _ in client.run_vision_AA_batch_stream(
            a.audio,
            a.image,
            max_returned_tokens=M,
            save_path=os.path.join(tmpdir, "vision.wav"),
        ):
            chunks += 1
        lo = captured["list_output"]
        raw["stream_chunks"] = chunks
    else:
        client = inf.OmniInference(ckpt_dir=ckpt, device=device)
        fabric, model, tok, snacm, wm = (
            client.fabric,
            client.model,
            client.text_tokenizer,
            client.snacmodel,
            client.whispermodel,
        )
        if a.task == "A1A2":
            mel, leng = inf.load_audio(a.audio)
            L = min(leng, 1500) + 3
            M = L + N
            if a.a1a2_impl == "stream":
                wrap_builder(inf, "get_input_ids_whisper_ATBatch")
                wrap_recon(inf)
                gen = client.run_AT_batch_stream(
                    a.audio,
                    max_returned_tokens=M,
                    save_path=os.path.join(tmpdir, "a1a2.wav"),
                )
                chunks = 0
                try:
                    while True:
                        next(gen)
                        chunks += 1
                except StopIteration as e:
                    ret = e.value
                lo = captured["list_output"]
                assert ret == lo, (
                    "returned list_output differs from the one passed to reconscruct_snac"
                )
                raw["stream_chunks"] = chunks
            else:
                feat, ids = inf.get_input_ids_whisper_ATBatch(mel, leng, wm, device)
                captured["prompt_length"] = int(ids[0].size(-1))
                budget(inf, "generate_TA_BATCH", M)
                inf.A1_A2_batch(
                    fabric, feat, ids, leng, model, tok, 0, snacm, out_dir=tmpdir
                )
                lo = captured["gen_out"]
        elif a.task in ("A1T2", "ASR"):
            mel, leng = inf.load_audio(a.audio)
            # A1T2 and ASR differ only in the last text token and the official generate/wrapper pair
            last_t, gname, fn = (
                (inf._answer_t, "generate_AT", inf.A1_T2)
                if a.task == "A1T2"
                else (inf._asr, "generate_ASR", inf.A1_T1)
            )
            feat, ids = inf.get_input_ids_whisper(
                mel, leng, wm, device, special_token_a=inf._pad_a, special_token_t=last_t
            )
            L = int(ids[0].size(-1))
            captured["prompt_length"] = L
            M = L + N
            budget(inf, gname, M)
            raw["decoded"] = fn(fabric, feat, ids, leng, model, tok, 0)
            lo = captured["gen_out"]
        elif a.task in ("T1A2", "T1T2"):
            if a.task == "T1A2":
                ids = inf.get_input_ids_TA(a.text, tok)
            else:
                ids = inf.get_input_ids_TT(a.text, tok)
            L = int(ids[0].size(-1))
            captured["prompt_length"] = L
            M = L + N
            if a.task == "T1A2":
                budget(inf, "generate_TA", M)
                raw["decoded"] = inf.T1_A2(
                    fabric, ids, model, tok, 0, snacm, out_dir=tmpdir
                )
            else:
                budget(inf, "generate_TT", M)
                raw["decoded"] = inf.T1_T2(fabric, ids, model, tok, 0)
            lo = captured["gen_out"]

    assert captured["prompt_length"] == L, (captured["prompt_length"], L)

    if a.task in ("A1T2", "ASR", "T1T2"):
        text = [int(t) for t in lo]
        if EOT in text:
            text = text[: text.index(EOT)]
        res = {"task": a.task, "prompt_length": L, "text": text[:N], "audio": []}
    else:
        assert len(lo) == 8 and all(len(x) == len(lo[0]) for x in lo)
        assert len(lo[0]) <= N
        res = {
            "task": a.task,
            "prompt_length": L,
            "text": [int(t) for t in lo[7]],
            "audio": [[int(t) for t in lo[i]] for i in range(7)],
        }

    with open(a.tokens_json, "w") as f:
        json.dump(res, f)
    g = snac_holder.get("snac")
    info = {
        "entries": len(res["text"]),
        "snac_decodes_ok": g.ok if g else None,
        "snac_decodes_failed": g.failed if g else None,
        **{k: v for k, v in raw.items() if k != "decoded"},
    }
    print("[official_parity] " + json.dumps(info), file=sys.stderr)
    if a.raw_json:
        raw["list_output"] = lo
        raw["input_ids"] = captured.get("input_ids")
        with open(a.raw_json, "w") as f:
            json.dump(raw, f)
    if a.compare:
        with open(a.compare) as f:
            other = json.load(f)
        if other == res:
            print(
                f"[official_parity] {a.task}: IDENTICAL ({len(res['text'])} entries)",
                file=sys.stderr,
            )
        else:
            rows = [("text", res["text"], other.get("text", []))]
            rows += [
                (f"audio{i}", x, y)
                for i, (x, y) in enumerate(zip(res["audio"], other.get("audio", [])))
            ]
            for name, x, y in rows:
                d = next((i for i in range(min(len(x), len(y))) if x[i] != y[i]), None)
                if d is not None or len(x) != len(y):
                    print(
                        f"[official_parity] {a.task}: {name} differs at {d} (len {len(x)} vs {len(y)})",
                        file=sys.stderr,
                    )
            if other.get("prompt_length") != res["prompt_length"]:
                print(
                    f"[official_parity] prompt_length {res['prompt_length']} vs {other.get('prompt_length')}",
                    file=sys.stderr,
                )
            sys.exit(1)


if __name__ == "__main__":
    main()
