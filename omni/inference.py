"""`load_model` and the `Omni` object: encoders, prompt, decode loop, streaming events for every task."""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from . import audio as audio_io
from .checkpoint import check_files, default_snac_dir, load_lm, verify_known_file
from .codec import load_snac
from .codec import fastest_dtype as fastest_snac_dtype
from .codec import warm_up as warm_up_snac
from .config import ModelConfig, Vocab
from .decoding import DecodingOptions, speech_entries, text_entries
from .errors import CheckpointError, OmniInputError
from .events import AudioChunk, Finished, Result, Stats, TextDelta
from .linear import TRANSPOSED, choose_small_rows_kernel, small_rows_kernel, split_long_inputs
from .prompt import AUDIO_INPUT_TASKS, SPEECH_TASKS, TASKS, TEXT_INPUT_TASKS, Prompt, build_prompt, whisper_frames
from .speech import SpeechStream, decode_frames, frames_from_delayed
from .vision import load_vision_encoder, open_image, preprocess

KEPT_FEATURES = 4  # audios whose Whisper features are kept (a 30 s question's are 4.6 MB in fp32)
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def check_options(device: str | None = "auto", dtype: str = "float32", quantize: str | None = None) -> torch.device:
    """Check a device/dtype/quantize combination before anything loads; returns the device to use."""
    if dtype not in DTYPES:
        raise OmniInputError(f"dtype must be one of float32, float16, bfloat16 (got {dtype!r})")
    if quantize not in (None, "none", "int8"):
        raise OmniInputError(f"quantize must be 'int8' or none (got {quantize!r})")
    int8 = quantize == "int8"
    # int8 is a CPU mode: "auto" means the CPU then, even on a machine with a GPU
    dev = resolve_device("cpu" if int8 and device in (None, "auto") else device)
    if int8 and dev.type != "cpu":
        raise OmniInputError("int8 dynamic quantisation runs on the CPU only; drop --quantize or use --device cpu")
    if int8 and DTYPES[dtype] != torch.float32:
        raise OmniInputError(f"int8 quantisation computes in float32; drop --dtype {dtype} (or --quantize)")
    return dev


def resolve_device(device: str | None = "auto") -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise OmniInputError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda", "mps"):
        raise OmniInputError(f"device {device!r} is not supported: use auto, cpu, cuda or cuda:N")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise OmniInputError("--device mps was asked for but Apple's Metal backend is not available; use --device cpu")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise OmniInputError("--device cuda was asked for but no CUDA GPU is visible to PyTorch; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise OmniInputError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA GPU(s) "
                             f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    return dev


def _glibc():
    """glibc's allocator controls, or None where the C library is another one (then memory tuning is skipped)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def _mmap_threshold(nbytes: int) -> None:
    if (libc := _glibc()) is not None:
        libc.mallopt(-3, nbytes)  # M_MMAP_THRESHOLD


def _keep_freed_heap(nbytes: int) -> None:
    """Let glibc keep up to `nbytes` of freed memory at the top of its heap instead of handing it back at once.
    Setting the mmap threshold also fixes the trim threshold at 128 KiB, so every large temporary freed at the
    top of the heap went back to the OS, and the next one page-faulted its memory in again: a oneDNN int8
    Whisper matmul took 12.5 instead of 5.7 ms that way. Peak memory is unchanged (what is kept was in use)."""
    if (libc := _glibc()) is not None:
        libc.mallopt(-1, nbytes)  # M_TRIM_THRESHOLD


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, MiB (Linux reports ru_maxrss in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def release_freed_memory() -> None:
    """Hand memory freed after loading back to the OS (glibc keeps it otherwise): lowers resident memory."""
    if (libc := _glibc()) is not None:
        libc.malloc_trim(0)


def _progress(enabled: bool):
    def say(msg: str) -> None:
        if enabled:
            print(f"[omni] {msg}", flush=True)
    return say


class TextStreamer:
    """Turns a growing list of token ids into text deltas, holding back incomplete UTF-8 sequences."""

    def __init__(self, tokenizer):
        self.tok, self.ids, self.sent = tokenizer, [], ""

    def add(self, token_id: int) -> str:
        self.ids.append(token_id)
        text = self.tok.decode(self.ids)
        if text.endswith("\ufffd"):  # a multi-byte character is not complete yet
            return ""
        delta, self.sent = text[len(self.sent):], text
        return delta


class Omni:
    """A loaded Mini-Omni2 model. Not thread-safe: serve one request at a time."""

    def __init__(self, checkpoint_dir: Path, snac_dir: Path | None = None, device: str | None = "auto",
                 dtype: str = "float32", quantize: str | None = None, progress: bool = False,
                 cuda_graphs: bool = True):
        say = _progress(progress)
        self.checkpoint_dir = Path(checkpoint_dir)
        self.snac_dir = Path(snac_dir) if snac_dir else default_snac_dir(self.checkpoint_dir)
        check_files(self.checkpoint_dir, self.snac_dir)
        self.device = check_options(device, dtype, quantize)
        self.dtype = DTYPES[dtype]
        self.quantize = None if quantize in (None, "none") else quantize
        self.int8_engines: dict[str, str] = {}  # quantised engine each part was packed for (int8 only)
        self.whisper_attention = "sdpa"  # fp32 SDPA, as the official code; speed modes may choose another way
        # digest of the samples -> their Whisper features, the most recent last (see encode_audio)
        self._audio_features: OrderedDict[bytes, torch.Tensor] = OrderedDict()
        t0 = time.perf_counter()
        # While loading, blocks over 1 MiB are mmapped, so the weight copies freed while reading
        # go straight back to the OS (glibc would otherwise keep them: peak RSS 4.2 -> 3.4 GB at full size).
        # Afterwards a 32 MiB threshold keeps the big activation buffers of decoding in the reusable heap.
        _mmap_threshold(1 << 20)
        say(f"device {self.device}, dtype {dtype}{', int8' if self.quantize else ''}")
        self.cfg = ModelConfig.from_file(self.checkpoint_dir / "model_config.yaml")
        self.vocab = Vocab.of(self.cfg)
        from tokenizers import Tokenizer

        try:
            self.tokenizer = Tokenizer.from_file(str(self.checkpoint_dir / "tokenizer.json"))
        except Exception as e:
            raise CheckpointError(f"{self.checkpoint_dir / 'tokenizer.json'}: not a tokenizers file ({e})") from None
        say("loading language model (lit_model.pth) ...")
        self.lm = load_lm(self.checkpoint_dir, self.cfg)
        release_freed_memory()
        say("loading Whisper encoder (small.pt) ...")
        verify_known_file(self.checkpoint_dir / "small.pt")
        # the fp16-saved weights stay fp16 and are cast per call: fp32 copies would save ~0.1 s a question on
        # a CPU but cost 168 MB, which the int8 screens of the heads (below) need more
        self.whisper, self.whisper_dims = audio_io.load_whisper_encoder(self.checkpoint_dir / "small.pt",
                                                                        keep_fp16=True)
        if self.whisper_dims.n_audio_state != self.cfg.whisper_adapter_dim:
            raise CheckpointError(f"small.pt has width {self.whisper_dims.n_audio_state} but model_config.yaml says "
                                  f"whisper_adapter_dim {self.cfg.whisper_adapter_dim}")
        release_freed_memory()
        say("loading CLIP image encoder (ViT-B-32.pt) ...")
        verify_known_file(self.checkpoint_dir / "ViT-B-32.pt")
        self.clip = load_vision_encoder(self.checkpoint_dir / "ViT-B-32.pt")
        if self.clip.dims.output_dim != self.cfg.vision_adapter_dim:
            raise CheckpointError(f"ViT-B-32.pt projects to {self.clip.dims.output_dim} but model_config.yaml says "
                                  f"vision_adapter_dim {self.cfg.vision_adapter_dim}")
        release_freed_memory()
        say("loading SNAC codec ...")
        self.snac = load_snac(self.snac_dir)
        if self.quantize == "int8":
            from .quantize import quantize_int8

            say("quantising linear layers to int8 ...")
            self.int8_engines = quantize_int8(self)
            say(f"int8 packed for: LM {self.int8_engines['lm']}, Whisper {self.int8_engines['whisper']}")
        self.lm.to(self.device, self.dtype)
        if self.device.type == "cpu" and self.dtype == torch.float32:
            # the faster decoding matmul differs between CPUs (see omni/linear.py): timed here, ~20 ms
            if choose_small_rows_kernel() == TRANSPOSED:
                split_long_inputs(self.lm)  # the MLP projections as column blocks: faster with that kernel
            say(f"decoding matmuls: {small_rows_kernel()}")
            # greedy ids through an int8 screen of the head (same ids, a quarter of its bytes), ~1 s
            if self.lm.screen_heads():
                say("greedy heads screened in int8")
        self.decode_path = "eager"
        if self.device.type == "cuda" and cuda_graphs:
            from .graphs import capture_decode_graphs

            say("capturing the decode step as CUDA graphs ...")
            try:
                self.lm.static_steps = capture_decode_graphs(self.lm)
                self.decode_path = "cuda graph"
            except RuntimeError as e:  # an unsupported op or driver: decode eagerly, as without the option
                say(f"CUDA graph capture failed ({str(e).splitlines()[0][:120]}); decoding eagerly")
                self.lm.static_steps = None
        self.clip.to(self.device)  # computes in self.dtype (see encode_image); fp16-saved weights stay fp16
        self.whisper.to(self.device)  # computes in fp32 always (as the official code; LayerNorm needs it on CPU)
        self.snac.to(self.device)
        audio_io.warm_up()
        release_freed_memory()
        _mmap_threshold(32 << 20)
        _keep_freed_heap(256 << 20)
        if self.quantize == "int8":
            # a speed mode already: Whisper's attention in bf16 too where this CPU runs that faster. Timed after
            # the heap settings above: before them each head's 4.5 MB of scores was a fresh mmap (+60 %)
            self.whisper_attention = audio_io.fastest_attention(self.whisper_dims)
            say(f"Whisper attention: {self.whisper_attention}")
            if self.device.type == "cpu" and fastest_snac_dtype(self.snac) == torch.bfloat16:
                self.snac.to(torch.bfloat16)  # 40 MB less, too
                say("SNAC decodes in bfloat16")
        warm_up_snac(self.snac)  # once its dtype is settled
        self.load_s = time.perf_counter() - t0
        say(f"ready in {self.load_s:.1f} s")

    @property
    def snac_dtype(self) -> str:
        """What SNAC decodes in: float32, or bfloat16 where int8 mode found that faster on this CPU."""
        return str(next(self.snac.parameters()).dtype).removeprefix("torch.")

    # -- inputs ----------------------------------------------------------------------------------------
    @torch.inference_mode()
    def encode_audio(self, audio, cancel: threading.Event | None = None) -> torch.Tensor | None:
        """Audio -> Whisper features of the kept frames [T, width] (T = int(ms / 20) + 1, at most 1500).

        The features of the last KEPT_FEATURES audios encoded are kept: a request with the same samples reuses them
        (the app encodes a spoken turn while it waits out the end-of-turn silence, for several people at once).
        None if `cancel` was set meanwhile.
        """
        feats = self._whisper_features(audio_io.load_audio(audio), cancel)
        return None if feats is None else feats.clone()  # the kept copy stays as computed

    def forget_audio(self) -> None:
        """Drop the kept features (benchmarks time Whisper on every request)."""
        self._audio_features.clear()

    def _n_frames(self, samples: np.ndarray) -> int:
        return min(whisper_frames(len(samples)), self.whisper_dims.n_audio_ctx)

    @torch.inference_mode()
    def _whisper_features(self, samples: np.ndarray, cancel: threading.Event | None = None) -> torch.Tensor | None:
        digest = hashlib.blake2b(samples.tobytes(), digest_size=16).digest()
        if (kept := self._audio_features.get(digest)) is not None:
            self._audio_features.move_to_end(digest)
            return kept
        mel = audio_io.log_mel(samples).to(self.device)
        feats = audio_io.whisper_encode(self.whisper, mel.unsqueeze(0), self._n_frames(samples), cancel,
                                        self.whisper_attention)
        if feats is None:
            return None
        self._audio_features[digest] = feats[0].float()
        while len(self._audio_features) > KEPT_FEATURES:
            self._audio_features.popitem(last=False)
        return self._audio_features[digest]

    @torch.inference_mode()
    def encode_image(self, image) -> torch.Tensor:
        pixels = preprocess(open_image(image), self.clip.dims.image_size).to(self.device, self.dtype)
        return self.clip(pixels)[0].float()

    def encode_text(self, text: str) -> list[int]:
        if text is None or not str(text).strip():
            raise OmniInputError("text is empty: type a question")
        return self.tokenizer.encode(str(text)).ids

    def prepare(self, task: str, audio=None, image=None, text=None,
                options: DecodingOptions | None = None) -> tuple[Prompt, torch.Tensor]:
        """Prompt ids and prefill embeddings for `task` ([B, L, D]).

        Inputs are read and checked, and (with `options`) the budget too, before the encoders run.
        """
        prompt, x, _ = self._prepare(task, audio, image, text, options)
        return prompt, x

    def _prepare(self, task: str, audio, image, text,
                 options: DecodingOptions | None) -> tuple[Prompt, torch.Tensor, int | None]:
        """`prepare`, and the entries the budget allows (None without `options`)."""
        if task not in TASKS:
            raise OmniInputError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
        samples = pil_image = text_ids = None
        if task in AUDIO_INPUT_TASKS:
            if audio is None:
                raise OmniInputError(f"task {task} needs --audio (a recording of the question)")
            samples = audio_io.load_audio(audio)
        if task == "IMAGE_A1A2":
            if image is None:
                raise OmniInputError("task IMAGE_A1A2 needs --image")
            pil_image = open_image(image)
        if task in TEXT_INPUT_TASKS:
            text_ids = self.encode_text(text)
            limit = self.cfg.block_size - 4
            if len(text_ids) > limit:
                raise OmniInputError(f"text is too long: {len(text_ids)} tokens, at most {limit} fit the "
                                     f"{self.cfg.block_size}-token context with room for an answer")
        prompt = build_prompt(task, self.vocab, n_frames=0 if samples is None else self._n_frames(samples),
                              text_ids=text_ids, n_image=self.clip.dims.n_tokens)
        n_entries = None if options is None else self.budget(prompt.length, options)
        audio_feats = None if samples is None else self._whisper_features(samples)
        image_feats = None if pil_image is None else self.encode_image(pil_image)
        ids = prompt.ids.to(self.device)
        with torch.inference_mode():
            x = self.lm.embed(ids, audio_feats, prompt.audio_slots, image_feats, prompt.image_slots)
        return prompt, x, n_entries

    def budget(self, prompt_length: int, opts: DecodingOptions) -> int:
        room = self.cfg.block_size - prompt_length
        n = room if opts.max_new_tokens is None else opts.max_new_tokens
        if n > room or room < 1:
            raise OmniInputError(f"prompt of {prompt_length} tokens + {n} new tokens exceeds the model's "
                                 f"{self.cfg.block_size}-token context; use --max-new-tokens <= {max(room, 0)} "
                                 f"or a shorter input")
        return n

    # -- generation ------------------------------------------------------------------------------------
    def stream(self, task: str, audio=None, image=None, text=None, options: DecodingOptions | None = None,
               stride: int | None = None, mode: str = "smooth", cancel: threading.Event | None = None,
               overlap: bool | None = None) -> Iterator[TextDelta | AudioChunk | Finished]:
        """Yield TextDelta / AudioChunk events as they are generated, then one Finished event.

        mode "smooth" plays the first 2 frames as soon as they can be decoded seamlessly, then growing chunks of
        up to `stride` frames (default 16), joined without clicks, tail included; "official" reproduces the official
        chunking (independent `stride`-frame chunks, default 4, tail dropped). Tokens are the same in both.
        With `overlap`, SNAC runs on a worker thread while the next tokens are decoded. The default overlaps on CUDA
        only: on a CPU the two would share the cores, and on 2 cores decoding SNAC between the steps was measured
        faster (int8 time to first audio 2.05 -> 1.82 s, fp32 pace 1.54 -> 1.22 x real time, medians).
        Setting `cancel` stops within one decode step; the KV cache is freed when the generator ends.
        """
        opts = options or DecodingOptions()
        opts.validate()
        if mode not in ("smooth", "official"):
            raise OmniInputError(f"stream mode must be 'smooth' or 'official' (got {mode!r})")
        if stride is not None and stride < 1:
            raise OmniInputError(f"stride must be >= 1 (got {stride})")
        if self.device.type == "cuda":  # the request's own peak (weights included), not the process's so far
            torch.cuda.reset_peak_memory_stats(self.device)
        t0 = time.perf_counter()
        prompt, x, n_entries = self._prepare(task, audio, image, text, opts)
        speech = task in SPEECH_TASKS
        stats = Stats(task=task, prompt_length=prompt.length)
        text_out = TextStreamer(self.tokenizer)
        info: dict = {}
        text_ids: list[int] = []
        pcm: list[np.ndarray] = []
        voice = SpeechStream(self.snac, self.vocab.n_codes, stride, mode,
                             overlap=self.device.type == "cuda" if overlap is None else overlap) if speech else None
        t_first = None

        def heard(chunks: Iterator[np.ndarray]) -> Iterator[AudioChunk]:
            for chunk in chunks:
                pcm.append(chunk)
                stats.audio_seconds += len(chunk) / 24000
                if stats.time_to_first_audio_s is None:
                    stats.time_to_first_audio_s = time.perf_counter() - t0
                yield AudioChunk(chunk)

        loop = speech_entries if speech else text_entries
        entries = loop(self.lm, self.vocab, x, n_entries, opts, cancel, info)
        text_open = True
        try:
            for k, entry in enumerate(entries):
                if k == 0:
                    t_first = time.perf_counter()
                    stats.prefill_s = t_first - t0
                stats.steps = k
                tok = entry[7] if speech else entry
                text_ids.append(tok)
                if tok == self.vocab.eot and (speech or k > 0):
                    text_open = False
                elif text_open and tok < self.vocab.eot and (delta := text_out.add(tok)):
                    if stats.time_to_first_text_s is None:
                        stats.time_to_first_text_s = time.perf_counter() - t0
                    yield TextDelta(delta)
                if speech:
                    yield from heard(voice.add(entry[:7]))
            if speech:
                yield from heard(voice.finish(flush=not (cancel is not None and cancel.is_set())))
        finally:
            entries.close()  # frees the KV cache now, also when the consumer stops early
            if voice is not None:
                voice.close()
            stats.decode_s = (time.perf_counter() - t_first) if t_first else 0.0
            stats.total_s = time.perf_counter() - t0
            stats.peak_rss_mb = peak_rss_mb()
            if self.device.type == "cuda":
                stats.gpu_peak_mem_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        stats.stop_reason = info.get("stop", "")
        stats.cancelled = stats.stop_reason == "cancelled"
        yield Finished(self._result(task, prompt, text_ids, voice.rows if speech else [], pcm, stats))

    def _result(self, task: str, prompt: Prompt, text_ids: list[int], audio_ids: list[list[int]],
                pcm: list[np.ndarray], stats: Stats) -> Result:
        answer_ids = [t for t in text_ids[: self._text_end(text_ids, task in SPEECH_TASKS)] if t < self.vocab.eot]
        return Result(task=task, prompt_length=prompt.length, text_ids=text_ids, audio_ids=audio_ids,
                      text=self.tokenizer.decode(answer_ids),
                      audio=np.concatenate(pcm) if pcm else np.zeros(0, np.int16), stats=stats)

    def _text_end(self, text_ids: list[int], speech: bool) -> int:
        """Index of the first eot that ends the text (entry 0's eot does not in the text paths)."""
        for i, t in enumerate(text_ids):
            if t == self.vocab.eot and (speech or i > 0):
                return i
        return len(text_ids)

    def token_record(self, result: Result) -> dict:
        """The `--tokens-json` contract: {task, prompt_length, text: [ids], audio: [[ids] x 7]}.

        Speech tasks: every entry as fed back (audio local ids from row 0, text after eot->pad forcing).
        Text tasks: the text ids before the first eot that ends the answer, audio [].
        """
        speech = result.task in SPEECH_TASKS
        text = result.text_ids if speech else result.text_ids[: self._text_end(result.text_ids, speech=False)]
        return {"task": result.task, "prompt_length": result.prompt_length, "text": list(text),
                "audio": result.audio_ids if speech else []}

    def generate(self, task: str, audio=None, image=None, text=None, options: DecodingOptions | None = None,
                 cancel: threading.Event | None = None, decode_audio: bool = True) -> Result:
        """Run a whole request. Speech is decoded in one SNAC call at the end (the best quality);
        decode_audio=False returns tokens only."""
        result = None
        for ev in self.stream(task, audio, image, text, options, stride=10**9, mode="official", cancel=cancel,
                              overlap=False):
            if isinstance(ev, Finished):
                result = ev.result
        assert result is not None
        if task in SPEECH_TASKS and decode_audio:
            result.audio = decode_frames(self.snac, frames_from_delayed(result.audio_ids), self.vocab.n_codes)
            result.stats.audio_seconds = len(result.audio) / 24000
        return result


def load_model(checkpoint: str | Path = "checkpoints", snac_dir: str | Path | None = None, device: str = "auto",
               dtype: str = "float32", quantize: str | None = None, progress: bool = False,
               cuda_graphs: bool = True) -> Omni:
    """Load a checkpoint directory in the official layout (SNAC defaults to <checkpoint>/snac_24khz).
    On CUDA the decode step is captured as CUDA graphs unless `cuda_graphs=False`."""
    return Omni(Path(checkpoint), Path(snac_dir) if snac_dir else None, device, dtype, quantize, progress,
                cuda_graphs)
