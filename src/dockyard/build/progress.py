"""Build progress as BuildKit's plain mode prints it (`--progress plain`).

Every unit of work is a vertex numbered ``#N``; its lines carry the number, so
stages built in parallel can interleave. When the output switches back to a
vertex, its name is printed again, as BuildKit does. A command's output lines
carry the seconds since its vertex started; the last lines are kept for the
error summary.
"""

from __future__ import annotations

import threading
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import TextIO

_TAIL = 12  # output lines a failed step quotes again


class Progress:
    def __init__(self, stream: TextIO | None) -> None:
        self.stream = stream
        self.lock = threading.Lock()
        self.count = 0
        self.last: Vertex | None = None

    def vertex(self, name: str) -> Vertex:
        with self.lock:
            self.count += 1
            v = Vertex(self, self.count, name)
            self._switch(v)
        return v

    def _switch(self, v: Vertex) -> None:
        if self.last is not v:
            self._write(f"\n#{v.number} {v.name}\n")
            self.last = v

    def _write(self, text: str) -> None:
        if self.stream is not None:
            self.stream.write(text)
            self.stream.flush()

    def emit(self, v: Vertex, text: str) -> None:
        with self.lock:
            self._switch(v)
            self._write(f"#{v.number} {text}\n")

    def raw(self, text: str) -> None:
        with self.lock:
            self.last = None
            self._write(text)


class Vertex:
    def __init__(self, progress: Progress, number: int, name: str) -> None:
        self.progress = progress
        self.number = number
        self.name = name
        self.started = time.monotonic()
        self.tail: list[str] = []

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def status(self, text: str) -> None:
        self.progress.emit(self, text)

    def log(self, text: str) -> None:
        """A line of the step's own output."""
        stamp = f"{self.elapsed():.3f}"
        for line in text.rstrip("\n").split("\n"):
            self.tail = [*self.tail[-(_TAIL - 1) :], f"{stamp} {line}"]
            self.progress.emit(self, f"{stamp} {line}")

    def cached(self) -> None:
        self.progress.emit(self, "CACHED")

    def done(self) -> None:
        self.progress.emit(self, f"DONE {self.elapsed():.1f}s")

    def error(self, message: str) -> None:
        self.progress.emit(self, f"ERROR: {message}")
        summary = "".join(f"{line}\n" for line in self.tail)
        self.progress.raw(f"------\n > {self.name}:\n{summary}------\n")


def size_text(n: int) -> str:
    """Sizes as BuildKit prints them (go-units HumanSize: 2B, 4.10kB, 1.23MB)."""
    value = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{int(value)}B" if unit == "B" else f"{value:.4g}{unit}"
        value /= 1000
    return f"{value:.4g}GB"


def snippet(text: str, first: int, last: int, filename: str) -> str:
    """The failing lines of the Dockerfile with two around them, marked ``>>>``."""
    lines = text.splitlines()
    lo, hi = max(1, first - 2), min(len(lines), last + 2)
    out = [f"{filename}:{first}" if first == last else f"{filename}:{first}-{last}"]
    out.append("-" * 20)
    for n in range(lo, hi + 1):
        mark = ">>>" if first <= n <= last else "   "
        out.append(f"{n:>4} | {mark} {lines[n - 1]}".rstrip())
    out.append("-" * 20)
    return "\n".join(out) + "\n"
