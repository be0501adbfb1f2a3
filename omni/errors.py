"""Errors meant for people: the message says what is wrong and what to do."""


class OmniError(Exception):
    """Base class; the CLI prints these as one line and exits with code 2."""


class OmniInputError(OmniError, ValueError):
    """Bad user input: audio, image, text or decoding options."""


class CheckpointError(OmniError):
    """A checkpoint directory is missing files or holds something unexpected."""
