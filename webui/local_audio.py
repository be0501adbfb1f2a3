"""This machine's microphone and speaker for the presenter mode (`--ui local`), through PyAudio (PortAudio): the
devices and their listing, choosing one by name or index, and the two streams, both in callback mode at the
device's own rate. The output plays what was queued and silence otherwise, so dropping the queue silences it
within one buffer (10 ms); the input never blocks the PortAudio thread."""

from __future__ import annotations

import contextlib
import os
import queue
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

import numpy as np

BLOCK_S = 0.01  # PortAudio buffer: 10 ms, also the echo canceller's frame
LOUD = 300  # int16 peak above which a buffer is sound, not silence (-40 dBFS)
ONSET_GAP_S = 0.3  # silence this long before a sound makes it a new one (an answer, not the next word)
ANSWER_GAP_S = 1.5  # ... and this long, a new answer
LOST_AFTER_S = 1.5  # a stream whose callback has not run this long has lost its device
TRY = ("Run `python app.py --ui local --list-devices` to see the devices, choose one with --mic/--speaker, "
       "or use the browser UIs (python app.py).")


class DeviceError(Exception):
    """A device the presenter mode cannot use: one line for the command line (what is wrong, what to try)."""


@dataclass
class Device:
    index: int
    name: str
    inputs: int  # channels
    outputs: int
    rate: int  # the device's default sample rate
    default_in: bool = False
    default_out: bool = False


@contextlib.contextmanager
def quiet_stderr():
    """PortAudio's ALSA and JACK probes print dozens of harmless lines on file descriptor 2 when PyAudio starts;
    the presenter's terminal shows the assistant, not those."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def native_stderr_away() -> None:
    """For the rest of the process: what C libraries write on file descriptor 2 (ALSA's underrun notes, JACK's
    probes) goes nowhere, while Python's sys.stderr keeps the terminal. The presenter's terminal shows the view."""
    try:
        terminal = os.dup(2)
        null = os.open(os.devnull, os.O_WRONLY)
    except OSError:
        return
    sys.stderr.flush()
    sys.stderr = os.fdopen(terminal, "w", buffering=1)
    os.dup2(null, 2)
    os.close(null)


def open_portaudio():
    """A PyAudio instance, or DeviceError when PyAudio is not installed."""
    try:
        import pyaudio
    except ImportError:
        raise DeviceError("PyAudio is not installed (it needs PortAudio): run `bash scripts/setup.sh`, "
                          "or use the browser UIs (python app.py).") from None
    with quiet_stderr():
        return pyaudio.PyAudio()


def devices(pa) -> list[Device]:
    def default(get) -> int:
        try:
            return int(get()["index"])
        except (IOError, OSError):
            return -1

    din, dout = default(pa.get_default_input_device_info), default(pa.get_default_output_device_info)
    found = []
    for i in range(pa.get_device_count()):
        d = pa.get_device_info_by_index(i)
        found.append(Device(i, str(d["name"]), int(d["maxInputChannels"]), int(d["maxOutputChannels"]),
                            int(d["defaultSampleRate"]), i == din, i == dout))
    return found


def device_lines(found: list[Device]) -> list[str]:
    """The inputs and outputs, for --list-devices."""
    lines = []
    for kind, attr, mark in (("Microphones (--mic)", "inputs", "default_in"),
                             ("Speakers (--speaker)", "outputs", "default_out")):
        lines.append(f"{kind}:")
        rows = [d for d in found if getattr(d, attr) > 0]
        for d in rows:
            star = " (default)" if getattr(d, mark) else ""
            lines.append(f"  {d.index:3d}  {d.name}{star}  {d.rate} Hz, {getattr(d, attr)} channels")
        if not rows:
            lines.append("  none found")
    return lines


def pick(pa, spec: str | None, kind: str) -> Device:
    """The device `spec` names (an index, or part of a name, case-insensitive), or the default one; `kind` is
    "microphone" or "speaker"."""
    found = devices(pa)
    attr = "inputs" if kind == "microphone" else "outputs"
    usable = [d for d in found if getattr(d, attr) > 0]
    option = "--mic" if kind == "microphone" else "--speaker"
    if spec is None or spec == "default":
        chosen = [d for d in usable if (d.default_in if kind == "microphone" else d.default_out)]
        if chosen:
            return chosen[0]
        if usable:
            return usable[0]
        raise DeviceError(f"No {kind} found: PortAudio sees no audio {'input' if attr == 'inputs' else 'output'} "
                          f"device. Plug one in (or start the sound server), then {TRY[0].lower()}{TRY[1:]}")
    if spec.strip().isdigit():
        idx = int(spec)
        for d in usable:
            if d.index == idx:
                return d
        what = "no such device" if all(d.index != idx for d in found) else f"it has no {attr[:-1]} channels"
        raise DeviceError(f"{option} {spec}: {what}. {TRY}")
    exact = [d for d in usable if d.name.lower() == spec.lower()]
    partial = [d for d in usable if spec.lower() in d.name.lower()]
    if exact or partial:
        return (exact or partial)[0]
    raise DeviceError(f"{option} {spec!r}: no {kind} has that name. {TRY}")


def supported_rate(pa, dev: Device, kind: str, asked: int | None = None) -> int:
    """The rate to open `dev` at: `asked`, else its own default rate, else a common one it takes."""
    import pyaudio

    tries = [asked] if asked else list(dict.fromkeys([dev.rate, 48000, 44100, 32000, 16000]))
    for rate in tries:
        kw = ({"input_device": dev.index, "input_channels": 1, "input_format": pyaudio.paInt16}
              if kind == "microphone" else
              {"output_device": dev.index, "output_channels": 1, "output_format": pyaudio.paInt16})
        try:
            with quiet_stderr():
                if pa.is_format_supported(rate, **kw):
                    return rate
        except ValueError:
            continue
    rates = ", ".join(f"{r} Hz" for r in tries)
    raise DeviceError(f"The {kind} {dev.name!r} (device {dev.index}) refuses {rates} for 16-bit mono. "
                      f"Try another device or rate. {TRY}")


def _open(pa, what: str, dev: Device, **kw):
    try:
        with quiet_stderr():
            return pa.open(**kw)
    except (IOError, OSError, ValueError) as e:
        raise DeviceError(f"Could not open the {what} {dev.name!r} (device {dev.index}): {e}. {TRY}") from None


class Microphone:
    """Input stream: 10 ms blocks of int16 mono at the device rate, handed from the PortAudio thread through a
    queue (a full queue drops the oldest: the mic is live, old audio is worth nothing)."""

    def __init__(self, pa, dev: Device, rate: int):
        import pyaudio

        self.device, self.rate = dev, rate
        self._queue: queue.Queue[tuple[float, np.ndarray]] = queue.Queue(maxsize=200)
        self.last_callback = time.monotonic()
        self.stream = _open(pa, "microphone", dev, format=pyaudio.paInt16, channels=1, rate=rate, input=True,
                            input_device_index=dev.index, frames_per_buffer=int(rate * BLOCK_S),
                            stream_callback=self._callback)
        self.latency_s = float(self.stream.get_input_latency())

    def _callback(self, data, frames, time_info, status):
        import pyaudio

        self.last_callback = time.monotonic()
        block = (self.last_callback, np.frombuffer(data, np.int16).copy())
        try:
            self._queue.put_nowait(block)
        except queue.Full:
            with contextlib.suppress(queue.Empty):
                self._queue.get_nowait()
            self._queue.put_nowait(block)
        return None, pyaudio.paContinue

    def read(self, timeout: float) -> tuple[float, np.ndarray] | None:
        """(when the block came, the block), or None after `timeout`."""
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def lost(self) -> bool:
        return _lost(self.stream, self.last_callback)

    def close(self) -> None:
        _close(self.stream)


class Speaker:
    """Output stream: plays what `push` queued (int16 mono at the device rate), silence otherwise. `flush` drops
    the queue: PortAudio holds one 10 ms buffer, so the speaker is quiet within that. `on_played(time, buffer)`
    receives each buffer as it goes out (the echo canceller's reference)."""

    def __init__(self, pa, dev: Device, rate: int, on_played: Callable[[float, np.ndarray], None] | None = None):
        import pyaudio

        self.device, self.rate = dev, rate
        self.block = int(rate * BLOCK_S)
        self._queue: deque[np.ndarray] = deque()
        self._queued = 0
        self._lock = threading.Lock()
        self.on_played = on_played
        self.last_callback = time.monotonic()
        self.latency_s = 0.0  # PortAudio's figure, once the stream is open (its callback may run before)
        self.loud_at: float | None = None  # when the latest sound began at the speaker, after ONSET_GAP_S of silence
        self.last_loud: float | None = None  # when the latest loud buffer reaches the speaker
        self.answer_at: float | None = None  # when the latest sound after ANSWER_GAP_S of silence began
        self.flushed_at: float | None = None  # the latest flush, and when the speaker was silent after it
        self.silent_after_flush_at: float | None = None
        self.stream = _open(pa, "speaker", dev, format=pyaudio.paInt16, channels=1, rate=rate, output=True,
                            output_device_index=dev.index, frames_per_buffer=self.block,
                            stream_callback=self._callback)
        self.latency_s = float(self.stream.get_output_latency())

    def push(self, pcm: np.ndarray) -> None:
        if len(pcm):
            with self._lock:
                self._queue.append(pcm)
                self._queued += len(pcm)

    def flush(self) -> None:
        with self._lock:
            self._queue.clear()
            self._queued = 0
            self.flushed_at, self.silent_after_flush_at = time.monotonic(), None

    @property
    def queued_s(self) -> float:
        return self._queued / self.rate

    def _take(self, n: int) -> np.ndarray:
        out = np.zeros(n, np.int16)
        got = 0
        with self._lock:
            while got < n and self._queue:
                chunk = self._queue[0]
                k = min(n - got, len(chunk))
                out[got:got + k] = chunk[:k]
                if k == len(chunk):
                    self._queue.popleft()
                else:
                    self._queue[0] = chunk[k:]
                got += k
            self._queued -= got
        return out

    def _callback(self, data, frames, time_info, status):
        import pyaudio

        now = time.monotonic()
        self.last_callback = now
        out = self._take(frames)
        # when this buffer reaches the speaker: PortAudio's DAC time for it, else its reported latency
        ahead = (time_info or {}).get("output_buffer_dac_time", 0.0) - (time_info or {}).get("current_time", 0.0)
        at = now + (ahead if 0.0 < ahead < 1.0 else self.latency_s)
        loud = bool(np.abs(out).max() > LOUD) if len(out) else False
        if self.flushed_at is not None and self.silent_after_flush_at is None and not loud:
            self.silent_after_flush_at = at  # the first buffer made after the flush: what PortAudio held is gone
        if loud:
            if self.last_loud is None or at - self.last_loud > ONSET_GAP_S:
                self.loud_at = at  # sound after silence (not a gap between words)
            if self.last_loud is None or at - self.last_loud > ANSWER_GAP_S:
                self.answer_at = at  # sound after a long silence: an answer starting
            self.last_loud = at
        if self.on_played is not None:
            self.on_played(now, out)
        return out.tobytes(), pyaudio.paContinue

    def lost(self) -> bool:
        return _lost(self.stream, self.last_callback)

    def close(self) -> None:
        _close(self.stream)


def _lost(stream, last_callback: float) -> bool:
    try:
        active = stream.is_active()
    except (IOError, OSError):
        active = False
    return not active or time.monotonic() - last_callback > LOST_AFTER_S


def _close(stream) -> None:
    """Stop and close a stream without waiting on a device that is gone (its server may hang the call)."""
    def close():
        with contextlib.suppress(Exception):
            stream.stop_stream()
        with contextlib.suppress(Exception):
            stream.close()

    t = threading.Thread(target=close, name="audio-close", daemon=True)
    t.start()
    t.join(2.0)
