"""`-it` terminals, `-i` stdin, detach and attach, `exec -it`: the CLI driven under a pty."""

from __future__ import annotations

import errno
import os
import select
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from dockyard.cli.attach import _DetachScanner, parse_detach_keys
from dockyard.cli.errors import UsageError
from dockyard.engine.terminal import set_window_size
from tests.cli.dockyard_helper import DOCKYARD, Dockyard

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


class Term:
    """`dockyard ARGS` with a pty as its stdin, stdout and stderr."""

    def __init__(self, dy: Dockyard, *args: str, rows: int = 24, cols: int = 80) -> None:
        self.master, slave = os.openpty()
        try:
            set_window_size(slave, rows, cols)
            self.proc = subprocess.Popen(
                [DOCKYARD, "--root", str(dy.root), *args],
                stdin=slave,
                stdout=slave,
                stderr=slave,
                start_new_session=True,
            )
        except BaseException:
            os.close(self.master)
            raise
        finally:
            os.close(slave)
        self.out = b""

    def write(self, data: bytes) -> None:
        os.write(self.master, data)

    def read_until(self, needle: bytes, timeout: float = 15.0) -> bytes:
        """Everything read so far once `needle` shows up after the last mark."""
        deadline = time.monotonic() + timeout
        start = len(self.out)
        while needle not in self.out[start:]:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {needle!r} within {timeout}s; got {self.out!r}")
            if not select.select([self.master], [], [], min(left, 0.1))[0]:
                continue
            try:
                chunk = os.read(self.master, 4096)
            except OSError as err:
                if err.errno != errno.EIO:
                    raise
                chunk = b""
            if not chunk:
                raise AssertionError(f"EOF before {needle!r}; got {self.out!r}")
            self.out += chunk
        return self.out[start:]

    def resize(self, rows: int, cols: int) -> None:
        set_window_size(self.master, rows, cols)
        os.kill(self.proc.pid, signal.SIGWINCH)

    def wait(self, timeout: float = 15.0) -> int:
        return self.proc.wait(timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        os.close(self.master)


@contextmanager
def term(dy: Dockyard, *args: str, rows: int = 24, cols: int = 80) -> Iterator[Term]:
    t = Term(dy, *args, rows=rows, cols=cols)
    try:
        yield t
    finally:
        t.close()


def ask(t: Term, command: str, needle: bytes, timeout: float = 15.0) -> bytes:
    t.write(command.encode() + b"\r")
    return t.read_until(needle, timeout)


# ------------------------------------------------------------------ pure parts


def test_detach_keys_parse() -> None:
    assert parse_detach_keys(None) == b"\x10\x11"
    assert parse_detach_keys("ctrl-a,x") == b"\x01x"
    assert parse_detach_keys("ctrl-@,ctrl-[") == b"\x00\x1b"
    with pytest.raises(UsageError):
        parse_detach_keys("ctrl-pq")


def test_detach_scanner_holds_back_a_prefix_only() -> None:
    scanner = _DetachScanner(b"\x10\x11")
    assert scanner.scan(b"ab\x10") == (b"ab", False)
    assert scanner.scan(b"c") == (b"\x10c", False)
    assert scanner.scan(b"\x10\x10") == (b"\x10", False)
    assert scanner.scan(b"\x11") == (b"", True)


# ------------------------------------------------------------------ end to end


@needs_root
def test_run_it_is_a_real_terminal(dy: Dockyard) -> None:
    with term(dy, "run", "-it", "--name", "tty1", "busybox", "sh") as t:
        t.read_until(b"/ # ")  # the first prompt, written before the CLI attached
        out = ask(t, "echo $((6*7)); tty", b"/dev/pts/0")
        assert b"42\r\n" in out
        t.write(b"exit 4\r")
        assert t.wait() == 4
    logs = dy("logs", "tty1").stdout
    assert "42" in logs and "/dev/pts/0" in logs
    assert "true" in dy("inspect", "-f", "{{.Config.Tty}}", "tty1").stdout


@needs_root
def test_window_size_at_start_and_on_sigwinch(dy: Dockyard) -> None:
    with term(dy, "run", "-it", "--rm", "busybox", "sh", rows=33, cols=111) as t:
        ask(t, "stty size", b"33 111")
        t.resize(40, 123)
        deadline = time.monotonic() + 10
        while b"40 123" not in ask(t, "stty size", b"\r\n/ # "):
            assert time.monotonic() < deadline, t.out
        t.write(b"exit\r")
        assert t.wait() == 0


@needs_root
def test_detach_then_attach(dy: Dockyard) -> None:
    with term(dy, "run", "-it", "--name", "det", "busybox", "sh") as t:
        ask(t, "echo rea$((0))dy", b"rea0dy")
        t.write(b"\x10\x11")
        assert t.wait() == 0
    assert "det" in dy("ps").stdout
    with term(dy, "attach", "det") as t:
        ask(t, "echo back$((1+1))", b"back2")
        t.write(b"exit 3\r")
        assert t.wait() == 3
    assert "Exited (3)" in dy("ps", "-a").stdout


@needs_root
def test_start_attach_interactive(dy: Dockyard) -> None:
    cid = dy("create", "-it", "busybox", "sh").stdout.strip()
    with term(dy, "start", "-ai", cid) as t:
        ask(t, "echo st$((2*3))", b"st6")
        t.write(b"exit 7\r")
        assert t.wait() == 7


@needs_root
def test_run_i_streams_stdin_without_tty(dy: Dockyard) -> None:
    base = [DOCKYARD, "--root", str(dy.root), "run", "-i", "--rm", "busybox"]
    out = subprocess.run(
        [*base, "sh", "-c", "read x; echo got $x"],
        input="hello\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (out.returncode, out.stdout) == (0, "got hello\n"), out.stderr
    # EOF on our stdin closes the container's: cat ends.
    out = subprocess.run(
        [*base, "sh", "-c", "cat; echo done >&2; exit 2"],
        input="a\nb\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (out.returncode, out.stdout, out.stderr) == (2, "a\nb\n", "done\n")


@needs_root
def test_exec_it_and_exec_i(dy: Dockyard) -> None:
    dy("run", "-d", "--name", "ex", "busybox", "sleep", "300")
    with term(dy, "exec", "-it", "ex", "sh", rows=30, cols=90) as t:
        t.read_until(b"# ")
        out = ask(t, "echo hi$((1+1)); stty size; tty", b"/dev/pts/")
        assert b"hi2\r\n" in out and b"30 90\r\n" in out
        t.write(b"exit 5\r")
        assert t.wait() == 5
    res = subprocess.run(
        [DOCKYARD, "--root", str(dy.root), "exec", "-i", "ex", "sh", "-c", "read x; echo got $x"],
        input="yo\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (res.returncode, res.stdout) == (0, "got yo\n"), res.stderr


@needs_root
def test_it_needs_a_terminal_on_stdin(dy: Dockyard) -> None:
    out = dy("run", "-it", "--rm", "busybox", "true", check=False)
    assert (out.returncode, out.stderr) == (125, "Error: the input device is not a TTY\n")
    assert dy("ps", "-aq").stdout == ""
