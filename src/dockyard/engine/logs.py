"""Docker's json-file log driver: the writer the monitor uses and the reader `logs` uses.

One JSON object per line, byte for byte what dockerd writes:

    {"log":"hi\\n","stream":"stdout","time":"2026-11-25T07:00:00.123456789Z"}

The time is Go's RFC3339Nano (UTC, trailing zeros of the fraction dropped);
strings are escaped like Docker's `jsonlog` (`<`, `>`, `&` and control
characters as `\\u00XX`, invalid UTF-8 as U+FFFD). A line longer than 16 KiB
is cut into 16 KiB partial entries whose `log` has no newline; the last piece
carries it. Rotation (`max-size`/`max-file`) is by rename: container-json.log
becomes .1, .1 becomes .2 …, the oldest is dropped, so a reader holding a file
open never sees it truncated.

This module is imported by the monitor: keep its top-level imports to `os`
and `time`.
"""

from __future__ import annotations

import os
import time

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from typing import Any, BinaryIO

MAX_LINE = 16 * 1024  # Docker's copier buffer: longer lines become partial entries
STREAMS = ("stdout", "stderr")

# Docker's ffjsonWriteJSONBytesAsString: \" \\ \n \r short, other controls and <>& as \u00XX.
_ESCAPES: dict[int, str] = {c: f"\\u{c:04x}" for c in range(0x20)}
_ESCAPES.update(
    {
        ord("\n"): "\\n",
        ord("\r"): "\\r",
        ord('"'): '\\"',
        ord("\\"): "\\\\",
        ord("<"): "\\u003c",
        ord(">"): "\\u003e",
        ord("&"): "\\u0026",
        0x2028: "\\u2028",
        0x2029: "\\u2029",
        0xFFFD: "\\ufffd",  # what invalid UTF-8 becomes; Docker writes it escaped
    }
)


def json_string(data: bytes) -> bytes:
    """`data` as a JSON string literal, escaped exactly like Docker's json-file driver."""
    return b'"' + data.decode("utf-8", "replace").translate(_ESCAPES).encode() + b'"'


def format_time(ns: int) -> str:
    """Unix nanoseconds as Go's RFC3339Nano in UTC (trailing zeros of the fraction dropped)."""
    sec, frac = divmod(ns, 1_000_000_000)
    base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
    if frac:
        return f"{base}.{frac:09d}".rstrip("0") + "Z"
    return base + "Z"


def fixed_time(stamp: str) -> str:
    """An RFC3339Nano time with the fraction padded to 9 digits (`docker logs -t`)."""
    body = stamp[:-1] if stamp.endswith("Z") else stamp
    base, _, frac = body.partition(".")
    return f"{base}.{(frac + '000000000')[:9]}Z"


def parse_time(stamp: str) -> float:
    """An RFC3339 UTC time (as the writer makes it) as Unix seconds."""
    body = stamp[:-1] if stamp.endswith("Z") else stamp.split("+")[0]
    date, _, clock = body.partition("T")
    y, m, d = (int(x) for x in date.split("-"))
    hms, _, frac = clock.partition(".")
    hh, mm, ss = (int(x) for x in hms.split(":"))
    # days from civil (proleptic Gregorian), no datetime import needed
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    days = era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468
    seconds = days * 86400 + hh * 3600 + mm * 60 + ss
    return seconds + (float("0." + frac) if frac else 0.0)


def encode_entry(stream: str, line: bytes, partial: bool, ns: int) -> bytes:
    """One log line; `line` is without its newline, which is added unless `partial`."""
    text = json_string(line if partial else line + b"\n")
    return b'{"log":%s,"stream":"%s","time":"%s"}\n' % (
        text,
        stream.encode(),
        format_time(ns).encode(),
    )


class JsonFileWriter:
    """Appends a container's output to a json-file log, rotating by size.

    `write(stream, data)` takes raw bytes as they come from a pipe; complete
    lines become entries at once, the rest waits for its newline (or for
    16 KiB, then it becomes a partial entry). `finish(stream)` at EOF writes
    what is left with a newline added, as Docker does.
    """

    def __init__(self, path: str, max_size: int | None = None, max_files: int = 1) -> None:
        self.path = path
        self.max_size = max_size if max_size and max_size > 0 else None
        self.max_files = max(1, max_files)
        self._pending: dict[str, bytes] = {}
        self._fd = self._open()
        self.size = os.fstat(self._fd).st_size

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)

    def write(self, stream: str, data: bytes) -> None:
        buf = self._pending.pop(stream, b"") + data
        entries: list[bytes] = []
        ns = time.time_ns()
        while buf:
            nl = buf.find(b"\n", 0, MAX_LINE + 1)
            if 0 <= nl < MAX_LINE:
                entries.append(encode_entry(stream, buf[:nl], False, ns))
                buf = buf[nl + 1 :]
            elif len(buf) >= MAX_LINE:
                entries.append(encode_entry(stream, buf[:MAX_LINE], True, ns))
                buf = buf[MAX_LINE:]
            else:
                break
        if buf:
            self._pending[stream] = buf
        self._append(entries)

    def finish(self, stream: str) -> None:
        """The stream hit EOF: an unterminated last line is written with a newline."""
        rest = self._pending.pop(stream, b"")
        if rest:
            self.write(stream, rest + b"\n")

    def write_entry(self, stream: str, line: bytes, partial: bool = False) -> None:
        """One entry as is (`line` without newline), no buffering or splitting."""
        self._append([encode_entry(stream, line, partial, time.time_ns())])

    def _append(self, entries: list[bytes]) -> None:
        batch: list[bytes] = []
        size = 0
        for entry in entries:
            if (
                self.max_size
                and self.size + size > 0
                and self.size + size + len(entry) > (self.max_size)
            ):
                self._flush(batch)
                batch, size = [], 0
                self.rotate()
            batch.append(entry)
            size += len(entry)
        self._flush(batch)

    def _flush(self, batch: list[bytes]) -> None:
        if not batch:
            return
        view = memoryview(b"".join(batch))
        self.size += len(view)
        while view:
            view = view[os.write(self._fd, view) :]

    def rotate(self) -> None:
        """container-json.log → .1 → .2 …; the oldest falls off; a fresh file is opened."""
        os.close(self._fd)
        if self.max_files > 1:
            for n in range(self.max_files - 1, 1, -1):
                try:
                    os.rename(f"{self.path}.{n - 1}", f"{self.path}.{n}")
                except FileNotFoundError:
                    pass
            os.rename(self.path, f"{self.path}.1")
        else:
            os.unlink(self.path)
        self._fd = self._open()
        self.size = 0

    def close(self) -> None:
        for stream in list(self._pending):
            self.finish(stream)
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> JsonFileWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def rotated_files(path: str) -> list[str]:
    """The log's files, oldest first: path.N … path.1, path."""
    directory, base = os.path.split(path)
    numbered: list[tuple[int, str]] = []
    try:
        names = os.listdir(directory or ".")
    except FileNotFoundError:
        names = []
    for name in names:
        suffix = name[len(base) + 1 :]
        if name.startswith(base + ".") and suffix.isdigit():
            numbered.append((int(suffix), os.path.join(directory, name)))
    return [p for _, p in sorted(numbered, reverse=True)] + [path]


class _Source:
    """One open log file, read line by line; an unterminated tail waits for more."""

    def __init__(self, path: str, f: BinaryIO) -> None:
        self.path = path
        self.f = f
        self.partial = b""
        self.inode = os.fstat(f.fileno()).st_ino

    def lines(self) -> Iterator[bytes]:
        for raw in iter(self.f.readline, b""):
            if not raw.endswith(b"\n"):
                self.partial += raw
                return
            if self.partial:
                raw, self.partial = self.partial + raw, b""
            yield raw

    def close(self) -> None:
        self.f.close()


def _open_source(path: str) -> _Source | None:
    try:
        return _Source(path, open(path, "rb"))
    except FileNotFoundError:
        return None


def read_logs(
    path: str,
    *,
    follow: bool = False,
    tail: int | None = None,
    since: float | None = None,
    until: float | None = None,
    timestamps: bool = False,
    stdout: bool = True,
    stderr: bool = True,
    stop: Callable[[], bool] | None = None,
    poll_interval: float = 0.05,
    wait: Callable[[float], object] | None = None,
) -> Iterator[tuple[str, str, str]]:
    """(stream, time, text) of each entry across rotated files, oldest first.

    `since`/`until` are Unix seconds (inclusive); `tail` keeps the last N
    entries that pass the filters (0: none, None: all); `timestamps` prefixes
    the text with the fixed-width time and a space, like `docker logs -t`.
    `follow` keeps polling the live file (across rotations) for new entries
    until `stop()` returns true (then what is already written is still read)
    or an entry is later than `until`. Without `stop`, following never ends.
    `wait(seconds)` (default time.sleep) paces the polls; it may return early.
    """
    import json

    wanted = {s for s, on in (("stdout", stdout), ("stderr", stderr)) if on}
    past_until = False

    def entries(source: _Source) -> Iterator[tuple[str, str, str]]:
        nonlocal past_until
        for raw in source.lines():
            try:
                doc = json.loads(raw)
                stream, stamp, text = doc["stream"], doc["time"], doc.get("log", "")
            except (ValueError, KeyError, TypeError):
                continue
            if stream not in wanted:
                continue
            if since is not None or until is not None:
                t = parse_time(stamp)
                if since is not None and t < since:
                    continue
                if until is not None and t > until:
                    past_until = True
                    return
            if timestamps:
                text = f"{fixed_time(stamp)} {text}"
            yield stream, stamp, text

    # Open every file first: a rotation while reading then can't make us skip one.
    sources = [s for s in (_open_source(p) for p in rotated_files(path)) if s is not None]
    live = sources[-1] if sources and sources[-1].path == path else None
    try:
        if tail is not None:
            from collections import deque

            last: deque[tuple[str, str, str]] = deque(maxlen=max(0, tail))
            for source in sources:
                if not past_until:
                    last.extend(entries(source))
            yield from last
        else:
            for source in sources:
                if past_until:
                    break
                yield from entries(source)
        for source in sources:
            if source is not live:
                source.close()
        if not follow or past_until:
            return
        yield from _follow(path, live, entries, stop, wait, poll_interval, lambda: past_until)
    finally:
        for source in sources:
            source.close()


def _follow(
    path: str,
    live: _Source | None,
    entries: Callable[[_Source], Iterator[tuple[str, str, str]]],
    stop: Callable[[], bool] | None,
    wait: Callable[[float], object] | None,
    poll_interval: float,
    done: Callable[[], bool],
) -> Iterator[tuple[str, str, str]]:
    try:
        while True:
            stopping = stop is not None and stop()
            if live is None:
                live = _open_source(path)
            if live is not None:
                yield from entries(live)
                if done():
                    return
                try:
                    current = os.stat(path).st_ino
                except FileNotFoundError:
                    current = None
                if current is not None and current != live.inode:
                    # Rotated: finish the old file, then any file rotated since, then the new one.
                    yield from entries(live)
                    for older in _newer_than(path, live.inode):
                        source = _open_source(older)
                        if source is not None:
                            try:
                                yield from entries(source)
                            finally:
                                source.close()
                    live.close()
                    live = _open_source(path)
                    continue
            if stopping or done():
                return
            (wait or time.sleep)(poll_interval)
    finally:
        if live is not None:
            live.close()


def _newer_than(path: str, inode: int) -> list[str]:
    """Rotated files newer than the one with `inode` (oldest first), not the live file."""
    files = rotated_files(path)[:-1]
    for i, name in enumerate(files):
        try:
            if os.stat(name).st_ino == inode:
                return files[i + 1 :]
        except FileNotFoundError:
            continue
    return []


# ------------------------------------------------------------------ log config

LOG_OPTS = ("max-size", "max-file")  # what dockyard's json-file driver does


class LogConfigError(ValueError):
    """A --log-driver/--log-opt that can't work; Docker's wording."""


def log_config(driver: str | None, opts: dict[str, str] | None = None) -> dict[str, Any]:
    """Docker's HostConfig.LogConfig for `driver` (default json-file) and its options,
    checked as dockerd checks them (values too, so a bad one fails `create`)."""
    kind = driver or "json-file"
    config = {str(k): str(v) for k, v in (opts or {}).items()}
    if kind == "none":
        if config:
            raise LogConfigError("invalid logging opts for driver none")
    elif kind != "json-file":
        raise LogConfigError(
            f"failed to get logging factory: logger: no log driver named '{kind}' is registered"
        )
    else:
        for key in config:
            if key not in LOG_OPTS:
                raise LogConfigError(f"unknown log opt '{key}' for json-file log driver")
        log_limits(config)
    return {"Type": kind, "Config": config}


def log_limits(opts: dict[str, str]) -> tuple[int | None, int]:
    """(max size in bytes or None, max files) from json-file options."""
    import re

    max_size = None
    if "max-size" in opts:
        max_size = from_human_size(opts["max-size"])
        if max_size <= 0:
            raise LogConfigError("max-size must be a positive number")
    max_files = 1
    if "max-file" in opts:
        text = opts["max-file"]
        if not re.fullmatch(r"[+-]?\d+", text):
            raise LogConfigError(f'strconv.Atoi: parsing "{text}": invalid syntax')
        max_files = int(text)
        if max_files < 1:
            raise LogConfigError("max-file cannot be less than 1")
    return max_size, max_files


def from_human_size(text: str) -> int:
    """go-units' FromHumanSize, as json-file's max-size takes it: decimal (10m = 10^7)."""
    import re

    match = re.fullmatch(r"(\d+(?:\.\d+)?) ?([kKmMgGtTpP])?[iI]?[bB]?", text)
    if not match:
        raise LogConfigError(f"invalid size: '{text}'")
    power = " kmgtp".index((match[2] or " ").lower())
    return int(float(match[1]) * 1000**power)


def monitor_options(config: dict[str, Any] | None, log_path: str) -> dict[str, Any]:
    """The MonitorSpec's log arguments for a container's LogConfig. The none driver
    keeps nothing: its entries go to /dev/null."""
    config = config or {}
    if config.get("Type") == "none":
        return {"log_path": os.devnull}
    max_size, max_files = log_limits(config.get("Config") or {})
    return {"log_path": log_path, "log_max_size": max_size, "log_max_files": max_files}
