"""Errors meant for people: the message says what is wrong and what to do."""


class OmniError(Exception):
    """Base class; the CLI prints these as one line and exits with code 2."""


class OmniInputError(OmniError, ValueError):
    """Bad user input: audio, image, text or decoding options."""


class CheckpointError(OmniError):
    """A checkpoint directory is missing files or holds something unexpected."""


def check_input_file(path, what: str, max_bytes: int) -> None:
    """A user's input file must exist, be non-empty and below the size limit."""
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise OmniInputError(f"{what} file not found: {path}")
    size = path.stat().st_size
    if size == 0:
        raise OmniInputError(f"{what} file is empty: {path}")
    if size > max_bytes:
        raise OmniInputError(f"{what} file is too large ({size / 2**20:.0f} MB; limit {max_bytes // 2**20} MB): {path}")
