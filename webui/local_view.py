"""What the presenter mode shows: a terminal view a projector can show (rich), redrawn from the app's state, or,
when the output is not a terminal (a log, a test), one plain line per change. And the keys, read from the
terminal one at a time (space, s, m, c, q), or from a pipe."""

from __future__ import annotations

import os
import select
import sys
import threading
from dataclasses import dataclass, field
from typing import Callable

KEYS = "space push-to-talk · s stop the answer · m mute the mic · c camera on/off · q quit"
POLICY_LABELS = {"command": "only stop phrases interrupt", "any": "any speech interrupts",
                 "off": "half-duplex: the mic is off while it speaks",
                 "model": "the model's own stop signal (irq) interrupts"}


@dataclass
class ViewState:
    """Everything the view shows, gathered by the app each tick."""
    state: str = "starting"  # listening, hearing you, thinking, speaking, paused, interrupted, muted, recording
    mic: str = ""
    speaker: str = ""
    echo: str = ""
    policy: str = ""
    camera: str = ""  # "on 320x240", "off", "none", "lost"
    level: float = 0.0
    turns: list = field(default_factory=list)  # (index, who, text) lines of the transcript
    figures: list = field(default_factory=list)  # (label, value) of the latest turn
    notice: str = ""
    banner: str = ""


STATE_STYLE = {"listening": "green", "hearing you": "bold cyan", "thinking": "yellow", "speaking": "bold magenta",
               "paused": "bold yellow", "interrupted": "bold red", "muted": "red", "recording": "bold cyan",
               "starting": "dim"}


def render(v: ViewState):
    """The rich renderable of the whole view."""
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    bar = "█" * min(20, int(v.level * 200))
    head.add_row("State", Text(v.state.upper(), style=STATE_STYLE.get(v.state, "")))
    head.add_row("Microphone", f"{v.mic}  {bar}")
    head.add_row("Speaker", v.speaker)
    head.add_row("Echo", v.echo)
    head.add_row("Barge-in", v.policy)
    head.add_row("Camera", v.camera)
    talk = Table.grid(padding=(0, 1))
    talk.add_column(style="bold", no_wrap=True)
    talk.add_column()
    for index, who, text in v.turns[-8:]:
        talk.add_row(f"{index:>2} {who}", Text(text, style="magenta" if who == "Omni" else "cyan"))
    figures = Table.grid(padding=(0, 2))
    for label, value in v.figures:
        figures.add_row(label, value)
    parts = [Panel(head, title="Mini-Omni2 · presenter mode", border_style=STATE_STYLE.get(v.state, "white"))]
    if v.banner:
        parts.append(Text(v.banner, style="bold red"))
    parts.append(Panel(talk, title="Transcript"))
    parts.append(Panel(figures, title="Latest turn"))
    if v.notice:
        parts.append(Text(v.notice, style="yellow"))
    parts.append(Text(KEYS, style="dim"))
    return Group(*parts)


class TerminalView:
    """A live rich view, redrawn a few times a second."""

    def __init__(self):
        from rich.console import Console
        from rich.live import Live

        self._live = Live(console=Console(), auto_refresh=False, screen=False, transient=False)
        self._live.start()

    def show(self, v: ViewState) -> None:
        self._live.update(render(v), refresh=True)

    def say(self, line: str) -> None:
        self._live.console.print(line)

    def close(self) -> None:
        self._live.stop()


class LineView:
    """Without a terminal: one line for each change of state, transcript line and turn's figures."""

    def __init__(self, out=None):
        self._out = out or sys.stdout
        self._said: set = set()
        self._state = ""

    def _print(self, line: str) -> None:
        self._out.write(line + "\n")
        self._out.flush()

    def show(self, v: ViewState) -> None:
        if v.state != self._state:
            self._state = v.state
            self._print(f"[state] {v.state} (camera {v.camera})")
        if v.notice and ("notice", v.notice) not in self._said:
            self._said.add(("notice", v.notice))
            self._print(f"[notice] {v.notice}")

    def turn_done(self, line: str) -> None:
        self._print(line)

    def say(self, line: str) -> None:
        self._print(line)

    def close(self) -> None:
        pass


class Keys:
    """Reads keys on a thread: from a terminal one at a time (cbreak mode, so Ctrl-C still interrupts), or the
    characters of a pipe. `on_key(char)` for each; the terminal is restored by close()."""

    def __init__(self, on_key: Callable[[str], None], stream=None):
        self._on_key = on_key
        self._stream = stream or sys.stdin
        self._saved = None
        self._stop = threading.Event()
        try:
            self._fd = self._stream.fileno()
        except (AttributeError, OSError, ValueError):
            self._fd = None
        if self._fd is not None and os.isatty(self._fd):
            import termios
            import tty

            self._saved = termios.tcgetattr(self._fd)
            tty.setcbreak(self._fd)
        if self._fd is not None:
            threading.Thread(target=self._read, name="keys", daemon=True).start()

    def _read(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self._fd], [], [], 0.2)
            if not ready:
                continue
            data = os.read(self._fd, 64)
            if not data:
                return  # end of the pipe: no more keys, the app goes on
            for ch in data.decode(errors="ignore"):
                self._on_key(ch)

    def close(self) -> None:
        self._stop.set()
        if self._saved is not None:
            import termios

            termios.tcsetattr(self._fd, termios.TCSADRAIN, self._saved)
