"""The tasks and their 8-row prompts: rows 0..6 are the audio layers (global ids, shifted per layer), row 7 the text."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import N_AUDIO_LAYERS, Vocab

TASKS = ("A1A2", "A1T2", "ASR", "T1A2", "T1T2", "IMAGE_A1A2")
SPEECH_TASKS = ("A1A2", "T1A2", "IMAGE_A1A2")  # answer with speech + text
AUDIO_INPUT_TASKS = ("A1A2", "A1T2", "ASR", "IMAGE_A1A2")
TEXT_INPUT_TASKS = ("T1A2", "T1T2")


@dataclass
class Prompt:
    task: str
    ids: torch.Tensor  # [batch, 8, L] global ids
    audio_slots: tuple[int, int] | None = None  # (first position, count) overwritten by Whisper features
    image_slots: tuple[int, int] | None = None  # (first position, count) overwritten by CLIP features

    @property
    def length(self) -> int:
        return self.ids.shape[-1]


def whisper_frames(n_samples: int, sample_rate: int = 16000) -> int:
    """Whisper frames the official code keeps for an utterance: int(duration_ms / 20) + 1."""
    duration_ms = n_samples / sample_rate * 1000
    return int(duration_ms / 20) + 1


def _rows(v: Vocab, audio: list[int], text: list[int]) -> list[list[int]]:
    assert len(audio) == len(text)
    return [[v.layershift(a, i) for a in audio] for i in range(N_AUDIO_LAYERS)] + [list(text)]


def audio_layout(v: Vocab, n_frames: int, last_audio: int, last_text: int) -> list[list[int]]:
    """Layouts 4.1-4.3: input_a, pad_a x T, eoa, <last> on audio; input_t, pad_t x T, eot, <last> on text."""
    audio = [v.input_a] + [v.pad_a] * n_frames + [v.eoa, last_audio]
    text = [v.input_t] + [v.pad_t] * n_frames + [v.eot, last_text]
    return _rows(v, audio, text)


def text_layout(v: Vocab, text_ids: list[int], speak: bool) -> list[list[int]]:
    """Layouts 4.4 (T1A2, ends answer_a) and 4.5 (T1T2, all pad_a)."""
    n = len(text_ids)
    audio = [v.pad_a] * (n + 2) + [v.answer_a if speak else v.pad_a]
    text = [v.input_t] + list(text_ids) + [v.eot, v.answer_t]
    return _rows(v, audio, text)


def image_layout(v: Vocab, n_image: int, n_frames: int, last_audio: int) -> list[list[int]]:
    """Layout 4.7: image, pad_a x n_image, eoimage, input_a, pad_a x T, eoa, <last>; text is pad_t then answer_t."""
    audio = [v.image] + [v.pad_a] * n_image + [v.eoimage, v.input_a] + [v.pad_a] * n_frames + [v.eoa, last_audio]
    text = [v.pad_t] * (len(audio) - 1) + [v.answer_t]
    return _rows(v, audio, text)


def listen_layout(v: Vocab, frames: list[list[int]]) -> list[list[int]]:
    """The listening row of the semantic interruption (spec §11, our layout: the paper gives none): input_a/input_t,
    then one position per 85 ms SNAC frame of the incoming audio, its 7 codes at once on the audio rows (no delay:
    nothing is generated on them) and pad_t on the text row, whose head says n-irq or irq after each frame."""
    audio = [[v.input_a] + [f[i] for f in frames] for i in range(N_AUDIO_LAYERS)]
    shifted = [[v.layershift(a, i) for a in row] for i, row in enumerate(audio)]
    return shifted + [[v.input_t] + [v.pad_t] * len(frames)]


def build_prompt(task: str, v: Vocab, *, n_frames: int = 0, text_ids: list[int] | None = None,
                 n_image: int = 0) -> Prompt:
    """The official prompt for `task`. n_frames: Whisper frames T; n_image: CLIP tokens (50 for ViT-B/32)."""
    if task == "A1A2":  # batch of 2: row 0 answers with audio, row 1 with text
        rows = [audio_layout(v, n_frames, v.answer_a, v.answer_t), audio_layout(v, n_frames, v.pad_a, v.answer_t)]
        return Prompt(task, torch.tensor(rows), audio_slots=(1, n_frames))
    if task == "A1T2":
        return Prompt(task, torch.tensor([audio_layout(v, n_frames, v.pad_a, v.answer_t)]), audio_slots=(1, n_frames))
    if task == "ASR":
        return Prompt(task, torch.tensor([audio_layout(v, n_frames, v.pad_a, v.asr)]), audio_slots=(1, n_frames))
    if task in TEXT_INPUT_TASKS:
        return Prompt(task, torch.tensor([text_layout(v, text_ids or [], speak=task == "T1A2")]))
    if task == "IMAGE_A1A2":
        rows = [image_layout(v, n_image, n_frames, v.answer_a), image_layout(v, n_image, n_frames, v.pad_a)]
        # The official code writes the Whisper features one slot early: onto input_a and the first T-1 pads.
        return Prompt(task, torch.tensor(rows), audio_slots=(n_image + 2, n_frames), image_slots=(1, n_image))
    raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
