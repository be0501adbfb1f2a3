"""Mini-Omni2: voice, image and text in; streamed text and speech out.

    import omni
    model = omni.load_model("checkpoints/")
    result = model.generate("A1A2", audio="question.wav")
    for event in model.stream("IMAGE_A1A2", audio="q.wav", image="photo.jpg"): ...
"""

from .decoding import DecodingOptions
from .errors import CheckpointError, OmniError, OmniInputError
from .events import AudioChunk, Finished, Result, Stats, TextDelta
from .inference import Omni, load_model
from .prompt import SPEECH_TASKS, TASKS
from .random_checkpoint import make_tiny_checkpoint

__all__ = ["load_model", "Omni", "DecodingOptions", "make_tiny_checkpoint", "TASKS", "SPEECH_TASKS", "TextDelta",
           "AudioChunk", "Finished", "Result", "Stats", "OmniError", "OmniInputError", "CheckpointError"]
