"""Pull and push progress, displayed as Docker displays it.

On a terminal each layer has its own line, rewritten in place (cursor up, clear,
rewrite, cursor down, as Docker's jsonmessage does):

    a3ed95caeb02: Downloading [=========>                          ]  12.3MB/45.6MB

Elsewhere (a pipe, a log) each status change is one line and byte counts are left
out, as Docker does: `a3ed95caeb02: Pulling fs layer` … `a3ed95caeb02: Pull complete`.
`Quiet` shows nothing; `Collect` keeps Docker's JSON messages (the Python API).
Every method may be called from any thread.
"""

from __future__ import annotations

import threading
import time

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    from typing import Any, TextIO

_MIN_INTERVAL = 0.1
"""Seconds between two redraws of one layer's byte count."""


def human_size(size: float) -> str:
    """Docker's units.HumanSize: decimal units, 4 significant digits (`12.35MB`)."""
    units = ("B", "kB", "MB", "GB", "TB", "PB")
    i = 0
    while size >= 1000 and i < len(units) - 1:
        size /= 1000.0
        i += 1
    return f"{size:.4g}{units[i]}"


def bar(current: int, total: int, width: int = 200) -> str:
    """Docker's progress text: `[====>     ]  1.2MB/4.5MB` (the bar only when wide enough)."""
    if total <= 0:
        return f"{human_size(current):>8}"
    filled = min(50, int(current / total * 100) // 2)
    box = f"[{'=' * filled}>{' ' * (50 - filled)}] " if width > 110 else ""
    return f"{box}{human_size(current):>8}/{human_size(total)}"


class Progress:
    """What the transfer code calls; this base class shows nothing."""

    def message(self, text: str) -> None:
        """A line of its own: `latest: Pulling from library/nginx`, `Digest: …`."""

    def status(self, ident: str, text: str) -> None:
        """A layer's state: `Pulling fs layer`, `Already exists`, `Pull complete`."""

    def transfer(self, ident: str, action: str, current: int, total: int) -> None:
        """Bytes moved so far (`Downloading`, `Pushing`)."""

    def close(self) -> None:
        """No more updates."""


Quiet = Progress


class Plain(Progress):
    """One line per status change; byte counts left out."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.lock = threading.Lock()

    def message(self, text: str) -> None:
        with self.lock:
            self.out.write(text + "\n")
            self.out.flush()

    def status(self, ident: str, text: str) -> None:
        self.message(f"{ident}: {text}")


class Terminal(Progress):
    """A line per layer, redrawn in place."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.lock = threading.Lock()
        self.lines: dict[str, int] = {}  # layer -> its line, counted from the first
        self.last: dict[str, float] = {}
        try:
            import os

            self.width = os.get_terminal_size(out.fileno()).columns
        except (OSError, ValueError):
            self.width = 80

    def _draw(self, ident: str, text: str) -> None:
        line = self.lines.get(ident)
        if line is None:
            line = self.lines[ident] = len(self.lines)
            self.out.write("\n")
        diff = len(self.lines) - line
        self.out.write(f"\x1b[{diff}A\x1b[2K\r{ident}: {text}\r\x1b[{diff}B")
        self.out.flush()

    def message(self, text: str) -> None:
        with self.lock:
            self.lines.clear()  # as Docker: a plain line starts a new group of layers
            self.out.write(text + "\n")
            self.out.flush()

    def status(self, ident: str, text: str) -> None:
        with self.lock:
            self._draw(ident, f"{text} ")

    def transfer(self, ident: str, action: str, current: int, total: int) -> None:
        now = time.monotonic()
        with self.lock:
            if current < total and now - self.last.get(ident, 0.0) < _MIN_INTERVAL:
                return
            self.last[ident] = now
            self._draw(ident, f"{action} {bar(current, total, self.width)}")


class Collect(Progress):
    """Docker's JSON progress messages, kept in a list (docker-py's `push()` returns them)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.messages: list[dict[str, Any]] = []

    def message(self, text: str) -> None:
        with self.lock:
            self.messages.append({"status": text})

    def status(self, ident: str, text: str) -> None:
        with self.lock:
            self.messages.append({"status": text, "progressDetail": {}, "id": ident})

    def transfer(self, ident: str, action: str, current: int, total: int) -> None:
        if current < total:
            return  # only the end of a transfer: the list is read after the fact
        with self.lock:
            self.messages.append(
                {
                    "status": action,
                    "progressDetail": {"current": current, "total": total},
                    "progress": bar(current, total),
                    "id": ident,
                }
            )


def for_stream(out: TextIO, quiet: bool = False) -> Progress:
    """Quiet, Terminal when `out` is a terminal, else Plain."""
    if quiet:
        return Quiet()
    try:
        tty = out.isatty()
    except (AttributeError, ValueError):
        tty = False
    return Terminal(out) if tty else Plain(out)
