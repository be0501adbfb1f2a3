"""Uploaded and recorded questions: audio and pictures read with clear messages for whatever is wrong with them."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from .vad import to_float32

MAX_UPLOAD_AUDIO_S = 60.0
MAX_IMAGE_PIXELS = 4096 * 4096


def load_audio(audio) -> tuple[int, np.ndarray]:
    """(sr, array) or a file path -> (sr, float32 mono); clear errors for bad uploads."""
    if isinstance(audio, (str, Path)):
        import soundfile as sf

        p = Path(audio)
        if not p.is_file():
            raise ValueError("The audio file could not be found.")
        try:
            info = sf.info(str(p))
            if info.duration > MAX_UPLOAD_AUDIO_S:
                raise ValueError(f"The audio is {info.duration:.0f} s long; the limit is {MAX_UPLOAD_AUDIO_S:.0f} s.")
            a, sr = sf.read(str(p), dtype="float32", always_2d=True)
        except ValueError:
            raise
        except Exception:
            try:
                import warnings

                import librosa

                with warnings.catch_warnings():  # librosa warns before falling back to audioread (mp3, m4a)
                    warnings.simplefilter("ignore")
                    a, sr = librosa.load(str(p), sr=16000, mono=True, duration=MAX_UPLOAD_AUDIO_S + 1)
                a = a[:, None]
            except Exception:
                raise ValueError("That file is not audio I can read (try WAV, FLAC, OGG or MP3).") from None
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


IMAGE_TOO_LARGE = "The image is too large (over 16 megapixels)."
NOT_AN_IMAGE = "That file is not an image I can read (try PNG or JPEG)."


def _read_image_file(path) -> np.ndarray | None:
    """An image file (path or binary file object) -> HxWx3 uint8, or None when it is too large (known from the
    header, before decoding)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the size is checked right here
            im = Image.open(path)
        with im:
            if im.width * im.height > MAX_IMAGE_PIXELS:
                return None
            return np.asarray(im.convert("RGB"))
    except Image.DecompressionBombError:  # PIL refuses headers over ~179 megapixels outright
        return None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):  # not an image, truncated, corrupt
        raise ValueError(NOT_AN_IMAGE) from None


def load_image(image) -> np.ndarray:
    """Path, binary file object (an upload's bytes), PIL image or array -> HxWx3 uint8; clear errors for bad
    uploads."""
    from PIL import Image

    if isinstance(image, (str, Path)) or hasattr(image, "read"):
        a = _read_image_file(image)
        if a is None:
            raise ValueError(IMAGE_TOO_LARGE)
    elif isinstance(image, Image.Image):
        a = np.asarray(image.convert("RGB"))
    else:
        try:
            a = np.asarray(image)
        except (TypeError, ValueError):
            raise ValueError(NOT_AN_IMAGE) from None
    if a.ndim == 2:
        a = np.stack([a] * 3, axis=-1)
    if a.ndim != 3 or a.shape[2] not in (3, 4) or a.shape[0] < 8 or a.shape[1] < 8:
        raise ValueError("The image must be a colour picture at least 8x8 pixels.")
    if a.shape[0] * a.shape[1] > MAX_IMAGE_PIXELS:
        raise ValueError(IMAGE_TOO_LARGE)
    if a.dtype != np.uint8:
        a = np.clip(a * (255 if a.max() <= 1.0 else 1), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(a[..., :3])
