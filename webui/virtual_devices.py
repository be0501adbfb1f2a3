"""Real audio devices without a sound card, for the presenter mode's tests and benchmarks: a private PulseAudio
server (a child process) with a virtual microphone that `paplay` speaks into and a virtual speaker whose monitor is
listened to, an optional echo path from the speaker into the microphone, and a camera stand-in (a y4m FIFO written
by ffmpeg at camera pace), and a model that speaks a given recording (an echo test needs answers that are speech).
PortAudio reaches the server through ALSA's pulse plugin: a process under test gets
`env()` (set before PyAudio starts). The recipe and its pitfalls: shared/reference/local-audio.md."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from omni.events import AudioChunk, Finished, Result, Stats, TextDelta

DEFAULT_PA = """.fail
load-module module-native-protocol-unix auth-anonymous=1 socket={run}/native
load-module module-null-sink sink_name=spk
load-module module-null-sink sink_name=micsink
load-module module-remap-source master=micsink.monitor source_name=mic
load-module module-null-source source_name=silence
load-module module-loopback source=silence sink=micsink latency_msec=20 source_dont_move=true sink_dont_move=true
load-module module-loopback source=silence sink=spk latency_msec=20 source_dont_move=true sink_dont_move=true
set-default-sink spk
set-default-source mic
"""
ASOUND = "pcm.!default { type pulse }\nctl.!default { type pulse }\npcm.pulse { type pulse }\nctl.pulse { type pulse }\n"
MONITOR_RATE = 16000


class PulseServer:
    """A private PulseAudio server with `mic` (fed through `micsink`) and `spk` (heard on `spk.monitor`)."""

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="omni-pulse-"))
        (self.dir / "run").mkdir(mode=0o700)
        (self.dir / "home").mkdir()
        (self.dir / "default.pa").write_text(DEFAULT_PA.format(run=self.dir / "run"))
        (self.dir / "asound.conf").write_text(ASOUND)
        self.proc: subprocess.Popen | None = None
        self.echo_module: str | None = None

    def env(self) -> dict:
        """The variables that point PortAudio (and pactl, paplay) at this server, over os.environ."""
        return {**os.environ, "PULSE_SERVER": f"unix:{self.dir / 'run' / 'native'}",
                "ALSA_CONFIG_PATH": str(self.dir / "asound.conf"), "HOME": str(self.dir / "home"),
                "XDG_RUNTIME_DIR": str(self.dir / "run")}

    def start(self, timeout: float = 20.0) -> "PulseServer":
        env = self.env()
        self.proc = subprocess.Popen(
            ["pulseaudio", "-n", "-F", str(self.dir / "default.pa"), "--daemonize=no", "--exit-idle-time=-1",
             "--disallow-exit", "--use-pid-file=no", f"--log-target=file:{self.dir / 'pulse.log'}"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        end = time.monotonic() + timeout
        while subprocess.run(["pactl", "info"], env=env, capture_output=True).returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > end:
                raise RuntimeError(f"pulseaudio did not start: {(self.dir / 'pulse.log').read_text()[-2000:]}")
            time.sleep(0.05)
        for device in ("mic", "spk.monitor"):  # a fresh null sink's monitor gives nothing for ~2 s
            self._wait_for_bytes(device, end)
        return self

    def _wait_for_bytes(self, device: str, end: float) -> None:
        p = subprocess.Popen(["pacat", "-r", "--raw", f"--device={device}", "--latency-msec=20"], env=self.env(),
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        try:
            got = threading.Event()
            threading.Thread(target=lambda: (p.stdout.read(64), got.set()), daemon=True).start()
            if not got.wait(max(0.1, end - time.monotonic())):
                raise RuntimeError(f"no audio from {device}")
        finally:
            p.kill()
            p.wait()

    def pactl(self, *args: str) -> str:
        return subprocess.run(["pactl", *args], env=self.env(), capture_output=True, text=True, check=True).stdout

    def echo_path(self, on: bool = True, latency_ms: int = 60, volume: str = "100%") -> None:
        """The speaker's sound into the microphone, as a laptop's microphone hears its speakers; `volume` is
        PulseAudio's (cubic: 70% is about -9 dB)."""
        if on and self.echo_module is None:
            self.echo_module = self.pactl("load-module", "module-loopback", "source=spk.monitor", "sink=micsink",
                                          f"latency_msec={latency_ms}").strip()
            if volume != "100%":
                self.pactl("set-sink-input-volume", self._input_of(self.echo_module), volume)
        elif not on and self.echo_module is not None:
            self.pactl("unload-module", self.echo_module)
            self.echo_module = None

    def _input_of(self, module: str) -> str:
        """The sink input a module owns (`pactl list sink-inputs`: "Sink Input #N" ... "Owner Module: M")."""
        current = None
        for line in self.pactl("list", "sink-inputs").splitlines():
            line = line.strip()
            if line.startswith("Sink Input #"):
                current = line.split("#", 1)[1]
            elif line == f"Owner Module: {module}" and current is not None:
                return current
        raise RuntimeError(f"no sink input of module {module}")

    def say(self, audio: np.ndarray, rate: int) -> tuple[subprocess.Popen, float]:
        """Play float32 audio into the microphone; returns the paplay process and when it started."""
        path = self.dir / f"say-{time.monotonic_ns()}.wav"
        sf.write(path, np.clip(audio, -1, 1), rate, subtype="PCM_16")  # a float WAV plays 6 dB quieter
        t = time.monotonic()
        return subprocess.Popen(["paplay", "--device=micsink", str(path)], env=self.env()), t

    def kill(self) -> None:
        """The sound server dies: every device goes away at once (a USB interface unplugged)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


class SpeakerMonitor:
    """Listens to the virtual speaker: 10 ms blocks (16 kHz) with the time each arrived."""

    def __init__(self, server: PulseServer):
        self._p = subprocess.Popen(["pacat", "-r", "--raw", "--device=spk.monitor", "--format=s16le", "--channels=1",
                                    f"--rate={MONITOR_RATE}", "--latency-msec=20"], env=server.env(),
                                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.blocks: list[tuple[float, np.ndarray]] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        n = MONITOR_RATE // 100 * 2
        while True:
            data = self._p.stdout.read(n)
            if not data:
                return
            self.blocks.append((time.monotonic(), np.frombuffer(data, np.int16).astype(np.float32) / 32768))

    def loud(self, since: float = 0.0, level: float = 0.01) -> list[float]:
        """Arrival times of the blocks louder than `level` (RMS) from `since` on."""
        return [t for t, b in list(self.blocks) if t >= since and float(np.sqrt(np.mean(b ** 2))) > level]

    def audio(self, since: float = 0.0, until: float = float("inf")) -> np.ndarray:
        parts = [b for t, b in list(self.blocks) if since <= t < until]
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)

    def stop(self) -> None:
        self._p.kill()
        self._p.wait()
        self._thread.join(2.0)


class CameraFifo:
    """A camera stand-in: ffmpeg writes a test picture as y4m into a FIFO at camera pace (`-re`)."""

    def __init__(self, folder: Path, size: str = "320x240", rate: int = 15):
        self.path = Path(folder) / "camera.y4m"
        os.mkfifo(self.path)
        self._p = subprocess.Popen(["ffmpeg", "-loglevel", "error", "-re", "-f", "lavfi", "-i",
                                    f"testsrc=size={size}:rate={rate}", "-pix_fmt", "yuv420p", "-f",
                                    "yuv4mpegpipe", "-y", str(self.path)],
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        self._p.kill()
        self._p.wait()


class VoiceModel:
    """Answers every question with the same recording (int16, 24 kHz), in 0.34 s chunks `speed` x faster than
    real time; honours cancel. Stands in for the model where the answer must be real speech (an echo test)."""

    def __init__(self, pcm: np.ndarray, text: str, speed: float = 2.0):
        self.pcm, self.text, self.speed = pcm, text, speed
        self.calls = 0

    def stream(self, task, audio=None, image=None, text=None, options=None, stride=4, mode="smooth", cancel=None):
        cancel = cancel or threading.Event()
        self.calls += 1
        t0 = time.monotonic()
        stats = Stats(task=task, prompt_length=10)
        time.sleep(0.2)
        yield TextDelta(self.text)
        chunk = int(0.34 * 24000)
        for i in range(0, len(self.pcm), chunk):
            if cancel.is_set():
                break
            piece = self.pcm[i:i + chunk]
            stats.audio_seconds += len(piece) / 24000
            stats.steps += 4
            if stats.time_to_first_audio_s is None:
                stats.time_to_first_audio_s = time.monotonic() - t0
            yield AudioChunk(piece)
            time.sleep(len(piece) / 24000 / self.speed)
        stats.cancelled = cancel.is_set()
        stats.stop_reason = "cancelled" if stats.cancelled else "eoa"
        stats.total_s = stats.decode_s = time.monotonic() - t0
        yield Finished(Result(task, 10, [], [], self.text, self.pcm, stats))
