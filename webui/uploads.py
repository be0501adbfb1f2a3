"""Uploaded and recorded questions: audio and pictures read by the model's own loaders (omni/audio.py,
omni/vision.py: one decoder, one picture limit), with messages for people on top."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from omni.audio import UnreadableAudio, read_audio_file
from omni.errors import OmniInputError
from omni.vision import MAX_IMAGE_PIXELS, ImageTooLarge, open_image

from .vad import to_float32

MAX_UPLOAD_AUDIO_S = 60.0  # the model hears the first 30 s; a longer upload is most likely the wrong file
IMAGE_TOO_LARGE = f"The image is too large (over {MAX_IMAGE_PIXELS // 1_000_000} megapixels)."
NOT_AN_IMAGE = "That file is not an image I can read (try PNG or JPEG)."
NOT_AUDIO = "That file is not audio I can read (try WAV, FLAC, OGG or MP3)."


def load_audio(audio) -> tuple[int, np.ndarray]:
    """(sr, array) or a file path -> (sr, float32 mono); clear errors for bad uploads."""
    if isinstance(audio, (str, Path)):
        try:
            a, sr = read_audio_file(Path(audio))
        except UnreadableAudio:
            raise ValueError(NOT_AUDIO) from None
        except OmniInputError as e:  # missing, empty or oversized file
            raise ValueError(f"{str(e)[:1].upper()}{str(e)[1:]}.") from None
        a = to_float32(np.asarray(a))
        if a.ndim > 1:
            a = a.mean(axis=1)
    else:
        try:
            sr, a = audio
        except (TypeError, ValueError):
            raise ValueError("Audio must be a file or a (sample_rate, samples) pair.") from None
        a = to_float32(np.asarray(a))
        if a.ndim > 1:
            a = a.reshape(-1)
    sr = int(sr)
    if not 4000 <= sr <= 192000:
        raise ValueError(f"Unsupported sample rate {sr} Hz.")
    if len(a) / sr > MAX_UPLOAD_AUDIO_S:
        raise ValueError(f"The audio is {len(a) / sr:.0f} s long; the limit is {MAX_UPLOAD_AUDIO_S:.0f} s.")
    if len(a) < sr * 0.1 or not np.isfinite(a).all() or float(np.abs(a).max(initial=0)) < 1e-4:
        raise ValueError("The audio is empty or silent.")
    return sr, a.astype(np.float32)


def load_image(image) -> np.ndarray:
    """Path, binary file object (an upload's bytes), PIL image or array -> HxWx3 uint8; clear errors for bad
    uploads."""
    try:
        a = np.asarray(open_image(image).convert("RGB"))
    except ImageTooLarge:
        raise ValueError(IMAGE_TOO_LARGE) from None
    except OmniInputError:
        raise ValueError(NOT_AN_IMAGE) from None
    if a.shape[0] < 8 or a.shape[1] < 8:
        raise ValueError("The image must be a colour picture at least 8x8 pixels.")
    return np.ascontiguousarray(a)
