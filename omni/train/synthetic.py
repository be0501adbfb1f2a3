"""The built-in synthetic set: questions and answers spoken by espeak-ng in several voices and speeds, answers
SNAC-encoded with the checkpoint's own codec, and pictures of coloured shapes with spoken questions about them.
Small and quick (a tiny checkpoint trains on it on a CPU in minutes); a plumbing test, not a corpus."""

from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path

from PIL import Image, ImageDraw

from ..codec import load_snac
from ..errors import OmniInputError
from .data import snac_frames

QUESTION_VOICES = ("en-us", "en-gb", "en-us+f3", "en-gb+m3", "en-029", "en-gb-scotland")
SPEEDS = (130, 160, 195)
ANSWER_VOICE, ANSWER_SPEED = "en-us", 165  # one output voice, as the released model
NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
COLOURS = {"red": (220, 30, 30), "green": (30, 160, 60), "blue": (30, 70, 220), "yellow": (230, 200, 20)}
SHAPES = ("circle", "square", "triangle")


def speak(text: str, path: Path, voice: str, speed: int) -> Path:
    try:
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(path), text], check=True,
                       capture_output=True)
    except FileNotFoundError:
        raise OmniInputError("espeak-ng is not installed (apt-get install espeak-ng; scripts/setup.sh does)") from None
    return path


def spoken_qa(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randrange(5), rng.randrange(5)
    return rng.choice([(f"what is {NUMBERS[a]} plus {NUMBERS[b]}", NUMBERS[a + b]),
                       (f"what comes after {NUMBERS[a + b]}", NUMBERS[a + b + 1]),
                       (f"say the word {rng.choice(list(COLOURS))}", None)])


def draw_shapes(shape: str, colour: str, count: int, rng: random.Random, size: int = 224) -> Image.Image:
    """`count` shapes of one kind and colour in distinct cells of a 3x3 grid on white."""
    img = Image.new("RGB", (size, size), "white")
    d, cell = ImageDraw.Draw(img), size // 3
    for c in rng.sample(range(9), count):
        x, y, r = (c % 3) * cell + cell // 2, (c // 3) * cell + cell // 2, cell // 3
        box = (x - r, y - r, x + r, y + r)
        if shape == "circle":
            d.ellipse(box, fill=COLOURS[colour])
        elif shape == "square":
            d.rectangle(box, fill=COLOURS[colour])
        else:
            d.polygon([(x, y - r), (x - r, y + r), (x + r, y + r)], fill=COLOURS[colour])
    return img


def image_qa(rng: random.Random) -> tuple[str, str, str, int, str]:
    shape, colour, count = rng.choice(SHAPES), rng.choice(list(COLOURS)), rng.randint(1, 4)
    question, answer = rng.choice([("how many shapes are there", NUMBERS[count]),
                                   ("what colour are the shapes", colour),
                                   ("what shape do you see", shape)])
    return shape, colour, count, question, answer


def build_synthetic(out_dir: str | Path, checkpoint: str | Path, n_qa: int = 24, n_images: int = 8,
                    seed: int = 0, say=print) -> Path:
    """Write out_dir/manifest.jsonl and its files; returns the manifest path. Each spoken question gives an A1A2
    sample and an ASR sample (its transcript); each also appears typed (T1A2); pictures give IMAGE_A1A2 samples."""
    out, rng = Path(out_dir), random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    snac = load_snac(Path(checkpoint) / "snac_24khz")
    lines, answers = [], {}

    def answer_codes(text: str) -> list[list[int]]:
        if text not in answers:
            wav = speak(text, out / f"answer_{len(answers):03d}.wav", ANSWER_VOICE, ANSWER_SPEED)
            answers[text] = snac_frames(snac, wav)
        return answers[text]

    for i in range(n_qa):
        question, answer = spoken_qa(rng)
        if answer is None:  # "say the word X"
            answer = question.rsplit(" ", 1)[1]
        wav = speak(question, out / f"question_{i:03d}.wav", rng.choice(QUESTION_VOICES), rng.choice(SPEEDS))
        codes = answer_codes(answer)
        lines += [{"id": f"qa{i}", "audio": wav.name, "target_text": answer, "target_codes": codes},
                  {"id": f"asr{i}", "audio": wav.name, "task": "ASR", "target_text": question},
                  {"id": f"typed{i}", "text": question, "target_text": answer, "target_codes": codes}]
    for i in range(n_images):
        shape, colour, count, question, answer = image_qa(rng)
        draw_shapes(shape, colour, count, rng).save(out / f"image_{i:03d}.png")
        wav = speak(question, out / f"image_question_{i:03d}.wav", rng.choice(QUESTION_VOICES), rng.choice(SPEEDS))
        lines.append({"id": f"img{i}", "audio": wav.name, "image": f"image_{i:03d}.png", "target_text": answer,
                      "target_codes": answer_codes(answer)})
    manifest = out / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    say(f"wrote {len(lines)} samples to {manifest} ({n_qa} spoken questions x 3 forms, {n_images} pictures)")
    return manifest
