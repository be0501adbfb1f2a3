"""This machine's camera for the presenter mode, through OpenCV: a device index, or a path or URL of any stream
OpenCV reads (a y4m FIFO, `udp://…`). Frames are read on a thread of their own, so a slow camera never stalls the
audio, and the latest one goes to the session; the optional preview window is drawn on that thread too."""

from __future__ import annotations

import glob
import os
import sys
import threading
import time
from typing import Callable

import numpy as np

from .local_audio import DeviceError

OPEN_TIMEOUT_S = 10.0
LOST_AFTER_S = 2.0  # reads failing this long: the camera is gone
PREVIEW_WINDOW = "mini-omni2 camera"


def _cv2():
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")  # a failed probe is said once by us, not by OpenCV
    import cv2

    return cv2


def gui_support() -> bool:
    """Whether this OpenCV can open a window (opencv-python-headless cannot)."""
    info = _cv2().getBuildInformation()
    for line in info.splitlines():
        if line.strip().startswith("GUI:"):
            return line.split(":", 1)[1].strip().upper() not in ("", "NONE", "NO")
    return False


def source_of(spec: str):
    """An index for a number, else the path or URL as given."""
    return int(spec) if spec.strip().isdigit() else spec


def camera_lines() -> list[str]:
    """The cameras OpenCV can open, for --list-devices (/dev/video* on Linux, indexes 0-3 elsewhere)."""
    cv2 = _cv2()
    if sys.platform.startswith("linux"):
        indexes = sorted(int(p[len("/dev/video"):]) for p in glob.glob("/dev/video*") if p[10:].isdigit())
    else:
        indexes = list(range(4))
    lines = ["Cameras (--camera INDEX, or a path/URL OpenCV reads):"]
    for i in indexes:
        cap = cv2.VideoCapture(i)
        if cap.isOpened():
            w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
            fps = cap.get(cv2.CAP_PROP_FPS) or 0
            lines.append(f"  {i:3d}  {w}x{h}" + (f", {fps:.0f} fps" if fps else ""))
        cap.release()
    if len(lines) == 1:
        lines.append("  none found (a path or URL still works: --camera live.y4m, --camera udp://127.0.0.1:5600)")
    return lines


def _open(cv2, src, spec: str):
    """cv2.VideoCapture, given OPEN_TIMEOUT_S: opening a FIFO nobody writes, or a silent stream, never returns."""
    box: list = []
    t = threading.Thread(target=lambda: box.append(cv2.VideoCapture(src, cv2.CAP_FFMPEG) if isinstance(src, str)
                                                   else cv2.VideoCapture(src)), name="camera-open", daemon=True)
    t.start()
    t.join(OPEN_TIMEOUT_S)
    if not box:
        raise DeviceError(f"The camera {spec!r} did not open within {OPEN_TIMEOUT_S:.0f} s (a FIFO nobody writes to, "
                          f"a stream that sends nothing?). Start its sender first, or try --camera none.")
    return box[0]


class Camera:
    """An open camera and its reader thread. `on_frame(rgb)` gets each frame while the camera is on and None
    when it is turned off; `on_lost(message)` is called once if the camera stops delivering."""

    def __init__(self, spec: str, preview: bool = False):
        cv2 = self._cv2 = _cv2()
        self.spec = spec
        self._cap = _open(cv2, source_of(spec), spec)
        if not self._cap.isOpened():
            self._cap.release()
            raise DeviceError(f"The camera {spec!r} could not be opened (no such device, file or stream). "
                              f"Try --camera none, another index from --list-devices, or a path/URL OpenCV reads.")
        self.preview = preview and gui_support()
        self.on = True
        self.size: tuple[int, int] | None = None  # (width, height) of the latest frame
        self.frames = 0
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, on_frame: Callable[[np.ndarray | None], None], on_lost: Callable[[str], None]) -> None:
        self._thread = threading.Thread(target=self._run, args=(on_frame, on_lost), name="camera", daemon=True)
        self._thread.start()

    def toggle(self, on_frame: Callable[[np.ndarray | None], None]) -> bool:
        """Camera on/off (off: the session gets None and no frames until it is on again)."""
        self.on = not self.on
        if not self.on:
            on_frame(None)
        return self.on

    def _run(self, on_frame, on_lost) -> None:
        cv2 = self._cv2
        failing_since = None
        while not self._stop.is_set():
            ok, frame = self._cap.read()  # reading on while off keeps a live stream from backing up
            now = time.monotonic()
            if not ok or frame is None:
                failing_since = failing_since or now
                if now - failing_since > LOST_AFTER_S:
                    self.lost = True
                    on_frame(None)
                    on_lost(f"The camera {self.spec!r} stopped delivering frames: going on without it.")
                    return
                time.sleep(0.05)
                continue
            failing_since = None
            self.frames += 1
            self.size = (frame.shape[1], frame.shape[0])
            if self.on:
                on_frame(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
            if self.preview:
                cv2.imshow(PREVIEW_WINDOW, frame)
                cv2.waitKey(1)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)
            if self._thread.is_alive():
                return  # stuck in a read of a stalled stream: releasing under it would crash; the process ends
        self._cap.release()
        if self.preview:
            self._cv2.destroyAllWindows()
