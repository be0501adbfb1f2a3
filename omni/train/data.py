"""Manifest samples -> training examples: questions through the frozen encoders, answers tokenised and (for speech)
SNAC-encoded into 7-token frames; each example in the form its stage trains (text answer or speech answer)."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch

from .. import audio as audio_io
from ..config import Vocab
from ..errors import OmniInputError
from ..listen import codes_to_frames
from ..prompt import whisper_frames
from ..vision import open_image, preprocess
from .manifest import ManifestError, Sample
from .sequence import SPEECH_FORM, TEXT_FORM, Example, build_example
from .stages import Stage

SNAC_RATE = 24000


def kind(sample: Sample) -> str:
    if sample.image is not None:
        return "image"
    if sample.audio is not None:
        return "asr" if sample.asr else "audio"
    return "text"


def task_for(sample: Sample, stage: Stage) -> str | None:
    """The task a sample trains in this stage, or None where the stage does not use it."""
    if (sample.stream is not None) != (stage.answers == "status"):
        return None  # listening streams train the irq stage only, and only they do
    if sample.stream is not None:
        return "LISTEN"
    k = kind(sample)
    if stage.audio_only and k == "text":
        return None
    if stage.answers == "speech" and sample.has_speech_target and k in SPEECH_FORM:
        return SPEECH_FORM[k]
    return TEXT_FORM[k]


@torch.no_grad()
def snac_frames(snac, path) -> list[list[int]]:
    """An audio file -> its SNAC frames (24 kHz mono)."""
    data, rate = audio_io.read_audio_file(path)
    wave = audio_io.to_mono_float32(data)
    if rate != SNAC_RATE:
        import soxr

        wave = soxr.resample(wave, rate, SNAC_RATE, quality="HQ").astype(np.float32)
    p = next(snac.parameters())
    return codes_to_frames(snac.encode(torch.from_numpy(wave)[None, None].to(p.device, p.dtype)))


class Encoder:
    """The frozen parts that turn a sample's files into features and codes (Whisper, CLIP, SNAC, tokenizer)."""

    def __init__(self, parts):
        self.parts, self.vocab = parts, Vocab.of(parts.cfg)

    @torch.no_grad()
    def audio_features(self, path) -> torch.Tensor:
        samples = audio_io.load_audio(path)
        n = min(whisper_frames(len(samples)), self.parts.whisper_dims.n_audio_ctx)
        mel = audio_io.log_mel(samples)[None].to(next(self.parts.whisper.parameters()).device)
        return audio_io.whisper_encode(self.parts.whisper, mel, n)[0].float().cpu()

    @torch.no_grad()
    def image_features(self, path) -> torch.Tensor:
        clip = self.parts.clip
        p = next(clip.parameters())
        return clip(preprocess(open_image(path), clip.dims.image_size).to(p.device, p.dtype))[0].float().cpu()

    def example(self, sample: Sample, task: str) -> Example:
        """Raises ManifestError naming the sample's line when a file cannot be read."""
        try:
            return self._example(sample, task)
        except ManifestError:
            raise
        except (OmniInputError, OSError, RuntimeError, ValueError) as e:
            raise ManifestError(f"{sample.where}: {str(e).splitlines()[0]}") from None

    def _example(self, sample: Sample, task: str) -> Example:
        tok, v = self.parts.tokenizer, self.vocab
        if task == "LISTEN":
            from .interrupt import listen_example

            return listen_example(self.parts, sample)
        answer = tok.encode(sample.target_text).ids
        audio = self.audio_features(sample.audio) if sample.audio is not None else None
        image = self.image_features(sample.image) if sample.image is not None else None
        frames = None
        if task in SPEECH_FORM.values():
            frames = [list(f) for f in sample.target_codes] if sample.target_codes is not None else \
                snac_frames(self.parts.snac, sample.target_speech)
        question = tok.encode(sample.text).ids if sample.text is not None else None
        ex = build_example(task, v, answer_ids=answer, frames=frames, question_ids=question,
                           n_frames=0 if audio is None else audio.shape[0],
                           n_image=0 if image is None else image.shape[0])
        ex.audio_features, ex.image_features = audio, image
        return ex


EAGER_LIMIT = 2048  # manifests up to this many samples are encoded up front (every file checked before step 1)


class LazyExamples:
    """A stage's examples encoded when first drawn and kept while `keep` allows: a real set's Whisper features
    (1.5 MB for 10 s of speech) do not fit in memory. Same examples, same order, as the up-front list."""

    def __init__(self, encoder: Encoder, pairs: list[tuple[Sample, str]], keep: int = EAGER_LIMIT):
        self.encoder, self.pairs, self.keep, self.kept = encoder, pairs, keep, OrderedDict()

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> Example:
        if i in self.kept:
            self.kept.move_to_end(i)
            return self.kept[i]
        ex = self.kept[i] = self.encoder.example(*self.pairs[i])
        while len(self.kept) > self.keep:
            self.kept.popitem(last=False)
        return ex


def stage_examples(encoder: Encoder, samples: list[Sample], stage: Stage, say=print) -> list[Example] | LazyExamples:
    pairs = [(s, task) for s in samples if (task := task_for(s, stage)) is not None]
    if not pairs:
        raise OmniInputError(f"stage {stage.name} uses no sample of this manifest (it needs "
                             f"{'spoken questions' if stage.audio_only else 'samples'}); see docs/training.md")
    tasks = {}
    for _, task in pairs:
        tasks[task] = tasks.get(task, 0) + 1
    lazy = len(pairs) > EAGER_LIMIT
    say(f"stage {stage.name}: {len(pairs)} examples ({', '.join(f'{k} {n}' for k, n in sorted(tasks.items()))})"
        f"{', encoded as drawn' if lazy else ''}")
    return LazyExamples(encoder, pairs) if lazy else [encoder.example(s, task) for s, task in pairs]
