"""The presenter mode's audio transport: carries this machine's microphone into a session and the session's speech
to this machine's speaker, as the WebRTC handler does for a browser. Two threads: the microphone's (resampled to
16 kHz, echo-cancelled against what the speaker played, then `Session.feed_audio`) and the speaker's
(`Session.next_frame`, 24 kHz and paced by the session's player, resampled to the device rate by a streaming
resampler). The session's flush (a barge-in) drops what the speaker has queued."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Callable

import numpy as np
import soxr

from .config import OUT_RATE
from .echo import EchoCanceller
from .local_audio import Microphone, Speaker
from .vad import SAMPLE_RATE as VAD_RATE

log = logging.getLogger("webui")

FRAME_SAMPLES = OUT_RATE // 50  # 20 ms of speech per pull, as the browser transport
ONSET_MUTE_S = 0.5  # with the echo canceller: the microphone is silenced this long as an answer starts (_at_onset)


class AudioLink:
    """Microphone -> session -> speaker, with the echo canceller between them. `on_lost(part, message)` is called
    once for a device that stops (the other goes on)."""

    def __init__(self, session, mic: Microphone | None, speaker: Speaker | None, canceller: EchoCanceller | None,
                 on_lost: Callable[[str, str], None]):
        self.session, self.mic, self.speaker, self.canceller = session, mic, speaker, canceller
        self.on_lost = on_lost
        self.muted = False
        self.level = 0.0  # the microphone's loudness after echo cancellation (RMS of the latest block, 0..1)
        self._ptt: list[np.ndarray] | None = None  # push-to-talk: the question being recorded, else None
        self._far: deque[tuple[float, np.ndarray]] = deque(maxlen=500)  # (when, what) the speaker played, 5 s
        self._generation = 0  # bumped by each flush: speech pulled before it is not queued after it
        # the microphone's energy before and after the echo canceller while the speaker plays (its ERLE, live)
        self._echo_in = self._echo_out = 0.0
        self._raw = np.zeros(0, np.int16)  # the microphone's audio the canceller has not given back yet
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        if speaker is not None and canceller is not None:
            speaker.on_played = lambda t, out: self._far.append((t, out))
            canceller.set_delay_ms(1000 * (speaker.latency_s + (mic.latency_s if mic else 0.0)))

    def start(self) -> None:
        if self.speaker is not None:
            self.session.attach_transport(self.flush)
            self._threads.append(threading.Thread(target=self._speak, name="speaker", daemon=True))
        if self.mic is not None:
            self._threads.append(threading.Thread(target=self._listen, name="microphone", daemon=True))
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(2.0)
        if self.speaker is not None:
            self.session.detach_transport(self.flush)

    # ------------------------------------------------------------ speaker

    def flush(self) -> None:
        """Drop the speech queued for the speaker (the session pauses or stops the answer)."""
        self._generation += 1
        if self.speaker is not None:
            self.speaker.flush()

    def _speak(self) -> None:
        spk = self.speaker
        resampler = None
        while not self._stop.is_set():
            if spk.lost():
                self._lose("speaker", f"The speaker {spk.device.name!r} stopped (unplugged?): going on without "
                                      f"sound; the answers are still shown here.")
                return
            generation = self._generation
            frame = self.session.next_frame(FRAME_SAMPLES, timeout=0.05)
            if frame is None:
                if resampler is not None:  # the answer paused or ended: let the resampler's last samples out
                    tail = resampler.resample_chunk(np.zeros(0, np.int16), last=True)
                    if generation == self._generation:
                        spk.push(tail)
                    resampler = None
                continue
            if resampler is None:
                resampler = soxr.ResampleStream(OUT_RATE, spk.rate, 1, dtype="int16")
            out = resampler.resample_chunk(frame)
            if generation == self._generation:
                spk.push(out)
            else:
                resampler = None  # flushed meanwhile: the next answer starts clean

    # ------------------------------------------------------------ microphone

    def push_to_talk(self) -> bool:
        """Start recording a question (stopping any answer), or send the one being recorded. Returns whether it
        is recording now."""
        if self._ptt is None:
            self.session.interrupt("push-to-talk")
            self._ptt = []
            return True
        audio, self._ptt = self._ptt, None
        pcm = np.concatenate(audio) if audio else np.zeros(0, np.int16)
        if len(pcm) < VAD_RATE * 0.3:
            self.session.notice = "Push-to-talk: nothing recorded (hold on longer before pressing space again)."
            return False
        frame = self.session.camera_frame()
        turn = self.session.send_upload(audio=(VAD_RATE, pcm), image=frame, kind="voice",
                                        image_source="webcam")
        turn.timings.speech_end_wall = time.monotonic()
        return False

    @property
    def recording(self) -> bool:
        return self._ptt is not None

    def _listen(self) -> None:
        mic = self.mic
        resampler = soxr.ResampleStream(mic.rate, VAD_RATE, 1, dtype="int16")
        far_resampler = soxr.ResampleStream(self.speaker.rate, VAD_RATE, 1, dtype="int16") if self.speaker else None
        while not self._stop.is_set():
            got = mic.read(0.2)
            if got is None:
                if mic.lost():
                    self._lose("microphone", f"The microphone {mic.device.name!r} stopped (unplugged?): going on "
                                             f"without it; restart to use another (--list-devices).")
                    return
                continue
            when, block = got
            pcm = resampler.resample_chunk(block)
            if self.canceller is not None:
                # what was played up to when this block was heard, then the block: the two streams keep their
                # timing even when this thread falls behind (AEC3 loses the echo when they jump about)
                while self._far and self._far[0][0] <= when:
                    self.canceller.far(far_resampler.resample_chunk(self._far.popleft()[1]))
                self._raw = np.concatenate([self._raw, pcm])
                pcm = self.canceller.near(pcm)
                raw, self._raw = self._raw[:len(pcm)], self._raw[len(pcm):]  # the frames the canceller gave back
                if self._playing():
                    self._echo_in += float(np.mean((raw.astype(np.float64) / 32768) ** 2)) if len(raw) else 0.0
                    self._echo_out += float(np.mean((pcm.astype(np.float64) / 32768) ** 2)) if len(pcm) else 0.0
                if self._at_onset(when):
                    pcm = np.zeros_like(pcm)
            if not len(pcm):
                continue
            self.level = float(np.sqrt(np.mean((pcm.astype(np.float32) / 32768) ** 2)))
            if self._ptt is not None:
                self._ptt.append(pcm)
                pcm = np.zeros_like(pcm)  # the recording is the question: the live detector hears silence
            elif self.muted:
                pcm = np.zeros_like(pcm)  # silence, not nothing: a turn being spoken ends as usual
            try:
                self.session.feed_audio(VAD_RATE, pcm)
            except Exception:  # a session that failed must not take the microphone thread down silently
                log.exception("feeding the microphone failed")

    def _at_onset(self, when: float) -> bool:
        """Whether this microphone block may hold the echo of an answer's first moments (its first sound after a
        long silence): AEC3 lets a little of those through, enough for the turn detector, and an utterance that starts
        there is taken for the assistant's own voice and ignored to its end, your "stop omni" with it. The engine
        ignores speech that begins in the answer's first 0.3 s anyway (its echo guard)."""
        spk = self.speaker
        start = spk.answer_at if spk is not None else None
        return start is not None and start - 0.05 <= when <= start + ONSET_MUTE_S

    def _playing(self) -> bool:
        spk = self.speaker
        if spk is None or spk.loud_at is None:
            return False
        return time.monotonic() - spk.last_loud < 0.3

    def echo_reduction_db(self) -> float | None:
        """How much quieter the echo canceller made the microphone while the speaker played (its echo return loss
        enhancement when only the assistant spoke), dB; None before anything played or with no echo at all."""
        if self._echo_in < 1e-6:
            return None
        return float(10 * np.log10(self._echo_in / max(self._echo_out, 1e-12)))

    def _lose(self, part: str, message: str) -> None:
        if part == "speaker":
            self.session.detach_transport(self.flush)
            self.speaker = None
        else:
            self.mic = None
        self.on_lost(part, message)
