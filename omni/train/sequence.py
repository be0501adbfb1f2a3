"""Teacher-forced training sequences: the inference prompt (omni/prompt.py, the one source of the layouts) followed
by the answer as the decode loops (omni/decoding.py) feed it back, and per position what each head must predict.

The hidden state at prompt position L-1+s predicts decode entry s (entry 0 comes from the prefill). The columns after
the prompt are entries 0..S-2 as fed back, so one causal pass scores every entry. Targets are -100 where a head is
not read at inference: the text head of the speaking row and the audio heads of the text row in the batch of 2
(spec §8.4), the audio heads in the text-answer tasks, and every prompt position.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import N_AUDIO_LAYERS, Vocab
from ..prompt import build_prompt

IGNORE = -100  # cross_entropy's ignore_index

# what a sample asks for, in text-answer form and in speech-answer form (omni/prompt.py task names)
TEXT_FORM = {"audio": "A1T2", "asr": "ASR", "text": "T1T2", "image": "IMAGE_TEXT"}
SPEECH_FORM = {"audio": "A1A2", "text": "T1A2", "image": "IMAGE_A1A2"}


@dataclass
class Example:
    """One training sequence: R rows (1, or 2 for the batch-of-2 tasks) of length L."""

    task: str
    ids: torch.Tensor  # [R, 8, L] global input ids
    text_targets: torch.Tensor  # [R, L] global text ids or IGNORE
    audio_targets: torch.Tensor  # [R, 7, L] local audio ids or IGNORE
    audio_slots: tuple[int, int] | None = None
    image_slots: tuple[int, int] | None = None
    audio_features: torch.Tensor | None = None  # [T, whisper width], frozen Whisper output
    image_features: torch.Tensor | None = None  # [n_image, clip width], frozen CLIP output
    prompt_length: int = 0
    meta: dict | None = None  # what evaluations need (the irq stage: the command's frame, the background)

    @property
    def length(self) -> int:
        return self.ids.shape[-1]


def prompt_for(task: str, v: Vocab, n_frames: int, question_ids: list[int] | None, n_image: int):
    """The inference prompt; IMAGE_TEXT is the text row (row 1) of IMAGE_A1A2's batch of 2, the only image prompt
    that answers in text (as A1T2 is the text row of A1A2)."""
    if task == "IMAGE_TEXT":
        p = build_prompt("IMAGE_A1A2", v, n_frames=n_frames, n_image=n_image)
        p.ids = p.ids[1:]
        return p
    return build_prompt(task, v, n_frames=n_frames, text_ids=question_ids, n_image=n_image)


def text_answer_entries(v: Vocab, answer_ids: list[int]) -> list[int]:
    """Text entries of a text task: the answer, then the eot that ends it."""
    return list(answer_ids) + [v.eot]


def speech_answer_entries(v: Vocab, answer_ids: list[int], frames: list[list[int]]) -> tuple[list[int], list[list[int]]]:
    """(text entries, audio entries [7][S]) of a speech answer: layer j holds frame f at entry f + j + 1 (spec §8.2),
    pad_a in its delay slots, eoa right after its last frame, pad_a after that. The text is the answer, eot, then
    pad_t (the eot->pad rule). S = F + 8: the loop stops at the entry whose layer 6 is eoa; longer text is cut
    there, as inference would cut it."""
    n_frames = len(frames)
    steps = n_frames + N_AUDIO_LAYERS + 1
    audio = []
    for j in range(N_AUDIO_LAYERS):
        row = [v.pad_a] * steps
        for f, frame in enumerate(frames):
            row[f + j + 1] = frame[j]
        row[n_frames + j + 1] = v.eoa
        audio.append(row)
    text = (list(answer_ids) + [v.eot] + [v.pad_t] * steps)[:steps]
    return text, audio


def build_example(task: str, v: Vocab, *, answer_ids: list[int], frames: list[list[int]] | None = None,
                  question_ids: list[int] | None = None, n_frames: int = 0, n_image: int = 0) -> Example:
    prompt = prompt_for(task, v, n_frames, question_ids, n_image)
    rows, L = prompt.ids.shape[0], prompt.length
    shift = [v.layershift(0, j) for j in range(N_AUDIO_LAYERS)]
    if frames is None:  # a text answer: pad_a on the audio rows, the text fed back
        text = text_answer_entries(v, answer_ids)
        audio = [[v.pad_a] * len(text) for _ in range(N_AUDIO_LAYERS)]
    else:
        text, audio = speech_answer_entries(v, answer_ids, frames)
    S = len(text)
    ids = torch.empty(rows, 8, L + S - 1, dtype=torch.long)
    ids[:, :, :L] = prompt.ids
    fed_audio = torch.tensor(audio)[:, : S - 1] + torch.tensor(shift)[:, None]  # entries 0..S-2 fed back
    ids[:, :7, L:] = fed_audio
    if rows == 2:
        ids[1, :7, L:] = torch.tensor(shift)[:, None] + v.pad_a  # the text row always gets pad_a (spec §8.4)
    ids[:, 7, L:] = torch.tensor(text[: S - 1])
    text_targets = torch.full((rows, ids.shape[-1]), IGNORE, dtype=torch.long)
    audio_targets = torch.full((rows, N_AUDIO_LAYERS, ids.shape[-1]), IGNORE, dtype=torch.long)
    text_row = rows - 1  # the text comes from the last row (row 1 in the batch of 2)
    text_targets[text_row, L - 1:] = torch.tensor(text)
    if frames is not None:
        audio_targets[0, :, L - 1:] = torch.tensor(audio)  # the speaking row is row 0
    return Example(task, ids, text_targets, audio_targets, prompt.audio_slots, prompt.image_slots, prompt_length=L)
