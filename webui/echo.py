"""Acoustic echo cancellation for the presenter mode: on a laptop the microphone hears the speakers, and the
assistant must not take its own voice for the user's. The WebRTC audio-processing module (AEC3) as the `livekit`
package ships it: fed with what the speaker plays (the far end) and what the microphone hears (the near end), it
removes the speaker's sound from the microphone. Works on 10 ms frames at 16 kHz, the VAD's rate."""

from __future__ import annotations

import numpy as np

RATE = 16000
FRAME = RATE // 100  # 10 ms: the only frame length the module takes

AEC_CHOICES = ("webrtc", "off")


class EchoCanceller:
    """One echo canceller for one microphone and one speaker. Not thread-safe: one thread feeds both ends (the
    far end first, as it is played, then the microphone's frames of the same time)."""

    name = "WebRTC AEC3 (livekit)"

    def __init__(self, noise_suppression: bool = False):
        from livekit import rtc

        self._rtc = rtc
        self._apm = rtc.AudioProcessingModule(echo_cancellation=True, noise_suppression=noise_suppression,
                                              high_pass_filter=True, auto_gain_control=False)
        self._far = np.zeros(0, np.int16)
        self._near = np.zeros(0, np.int16)

    def set_delay_ms(self, ms: float) -> None:
        """A hint of the echo's delay (output + input latency); AEC3 finds the exact delay itself."""
        self._apm.set_stream_delay_ms(int(max(0, min(ms, 500))))

    def far(self, pcm16k: np.ndarray) -> None:
        """What the speaker played (int16, 16 kHz), in any length."""
        self._far = np.concatenate([self._far, pcm16k.astype(np.int16, copy=False)])
        while len(self._far) >= FRAME:
            frame, self._far = self._far[:FRAME], self._far[FRAME:]
            self._apm.process_reverse_stream(self._frame(frame))

    def near(self, pcm16k: np.ndarray) -> np.ndarray:
        """The microphone's audio (int16, 16 kHz) with the echo removed; whole 10 ms frames come back, the rest
        waits for the next call."""
        self._near = np.concatenate([self._near, pcm16k.astype(np.int16, copy=False)])
        n = len(self._near) // FRAME * FRAME
        out = np.empty(n, np.int16)
        for i in range(0, n, FRAME):
            f = self._frame(self._near[i:i + FRAME])
            self._apm.process_stream(f)
            out[i:i + FRAME] = np.frombuffer(f.data, np.int16)
        self._near = self._near[n:]
        return out

    def _frame(self, pcm: np.ndarray):
        return self._rtc.AudioFrame(bytearray(pcm.tobytes()), RATE, 1, FRAME)


def make_canceller(kind: str) -> tuple[EchoCanceller | None, str]:
    """(the canceller or None, what the terminal view says about echo)."""
    if kind == "off":
        return None, "echo canceller off (use --policy off on speakers: half-duplex)"
    try:
        return EchoCanceller(), EchoCanceller.name
    except ImportError:
        return None, "no echo canceller (the livekit package is missing: bash scripts/setup.sh); use --policy off"


def erle_db(echo: np.ndarray, cancelled: np.ndarray) -> float:
    """Echo return loss enhancement: how much quieter the echo is after cancellation, in dB."""
    e = np.asarray(echo, np.float64)
    c = np.asarray(cancelled, np.float64)
    return float(10 * np.log10((np.mean(e ** 2) + 1e-12) / (np.mean(c ** 2) + 1e-12)))
