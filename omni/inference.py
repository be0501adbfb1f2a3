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
from .checkpoint import check_files, default_snac_dir
from .decoding import DecodingOptions, speech_entries, text_entries
from .device import DTYPES, check_options, peak_rss_mb
from .errors import OmniInputError
from .events import AudioChunk, Finished, Result, Stats, TextDelta
from .loading import load_parts
from .prompt import AUDIO_INPUT_TASKS, SPEECH_TASKS, TASKS, TEXT_INPUT_TASKS, Prompt, build_prompt, whisper_frames
from .speech import SpeechStream, decode_frames, frames_from_delayed
from .vision import open_image, preprocess

KEPT_FEATURES = 4  # audios whose Whisper features are kept (a 30 s question's are 4.6 MB in fp32)


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
        # digest of the samples -> their Whisper features, the most recent last (see encode_audio)
        self._audio_features: OrderedDict[bytes, torch.Tensor] = OrderedDict()
        t0 = time.perf_counter()
        say(f"device {self.device}, dtype {dtype}{', int8' if self.quantize else ''}")
        parts = load_parts(self.checkpoint_dir, self.snac_dir, self.device, self.dtype, self.quantize, say,
                           cuda_graphs)
        self.cfg, self.vocab, self.tokenizer, self.lm = parts.cfg, parts.vocab, parts.tokenizer, parts.lm
        self.whisper, self.whisper_dims = parts.whisper, parts.whisper_dims
        self.clip, self.snac = parts.clip, parts.snac
        self.int8_engines = parts.int8_engines  # quantised engine each part was packed for (int8 only)
        self.whisper_attention = parts.whisper_attention
        self.decode_path = parts.decode_path
        self.load_s = time.perf_counter() - t0
        say(f"ready in {self.load_s:.1f} s")

    @property
    def has_interrupt(self) -> bool:
        """Whether this checkpoint was trained for the semantic interruption (irq/n-irq in model_config.yaml)."""
        from .listen import interrupt_tokens

        return interrupt_tokens(self.cfg) is not None

    def interrupt_listener(self):
        """A new `omni.listen.InterruptListener` for one answer: feed it the user's audio (24 kHz) while the model
        speaks; it returns P(irq) per 85 ms frame. OmniInputError where the checkpoint has no irq tokens."""
        from .listen import InterruptListener

        return InterruptListener(self.lm, self.snac)

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
