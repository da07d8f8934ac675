"""The local terminal joined to a container: `attach`, and what `run -i/-t`,
`start -a/-i` and `exec -i/-t` do once the process runs.

A container's output and stdin go through its monitor's attach socket (the
protocol is in `engine/terminal.py`); an `exec -t` process's pty master comes
to this process over a console socket of its own. Either way the loop is the
same: with a tty the local terminal is in raw mode, its size is sent at the
start and on SIGWINCH, and the detach keys (ctrl-p ctrl-q by default) leave
the process running; without one, output is demultiplexed onto stdout and
stderr and signals are passed on to the container (`--sig-proxy`).
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    import argparse
    import socket
    from collections.abc import Callable
    from typing import Any

    from dockyard.engine.containers import Container, Engine
    from dockyard.engine.exec import ExecOptions
    from dockyard.runtime.spawn import Helper

DEFAULT_DETACH_KEYS = "ctrl-p,ctrl-q"
_PROXIED_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2")


def add_arguments(verb: str, p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-stdin", action="store_true", help="do not attach stdin")
    p.add_argument("--sig-proxy", default="true", help="proxy signals to the container")
    p.add_argument("--detach-keys", help=f"keys that detach (default {DEFAULT_DETACH_KEYS})")
    p.add_argument("container")


def run(verb: str, args: argparse.Namespace) -> int:
    from dockyard.cli.containers import engine
    from dockyard.engine.containers import EngineError

    eng = engine(args)
    container = eng.get(args.container)
    status = container.status()
    if status == "paused":
        raise EngineError("You cannot attach to a paused container, unpause it first")
    if status != "running":
        raise EngineError("You cannot attach to a stopped container, start it first")
    from dockyard.engine import autoremove

    autoremove.hold(container)  # AutoRemove: removed after we read its exit code
    code = attach_container(
        eng,
        container,
        stdin=not args.no_stdin and bool(container.config.get("OpenStdin")),
        detach_keys=args.detach_keys,
        close_stdin=False,
        sig_proxy=args.sig_proxy.lower() not in ("false", "0", "no"),
    )
    return 0 if code is None else code


def check_input_tty(args: argparse.Namespace) -> None:
    """`-it` needs a terminal to read from, as Docker says."""
    if args.tty and args.interactive and not getattr(args, "detach", False) and not os.isatty(0):
        from dockyard.cli.errors import UsageError

        raise UsageError("the input device is not a TTY")


def parse_detach_keys(text: str | None) -> bytes:
    """Docker's --detach-keys: comma-separated `ctrl-X` or single characters."""
    from dockyard.cli.errors import UsageError

    keys = bytearray()
    for part in (text or DEFAULT_DETACH_KEYS).split(","):
        key = part.strip()
        if key.lower().startswith("ctrl-") and len(key) == 6:
            code = ord(key[5].lower() if key[5].isalpha() else key[5])
            if "a" <= chr(code) <= "z":
                keys.append(code - ord("a") + 1)
            elif chr(code) in "@[\\]^_":
                keys.append({"@": 0, "[": 27, "\\": 28, "]": 29, "^": 30, "_": 31}[chr(code)])
            else:
                raise UsageError(f"invalid detach key: {key!r}")
        elif len(key) == 1:
            keys.append(ord(key))
        else:
            raise UsageError(f'invalid --detach-keys "{text}": use e.g. ctrl-p,ctrl-q')
    return bytes(keys)


# ------------------------------------------------------------------ links


class Link:
    """One side of the proxy loop: the container's output and stdin."""

    fd: int
    received = 0

    def output(self) -> bool:
        """Copy what is readable to the local stdout/stderr; False at EOF."""
        raise NotImplementedError

    def send(self, data: bytes) -> None:
        raise NotImplementedError

    def close_stdin(self) -> None:
        """Stdin is at EOF."""

    def resize(self, rows: int, cols: int) -> None:
        """The local terminal's size changed."""

    def close(self) -> None:
        raise NotImplementedError


class AttachLink(Link):
    """A container's attach socket: raw output for a tty, else multiplexed."""

    def __init__(
        self, container_dir: str, tty: bool, outputs: tuple[bool, bool] = (True, True)
    ) -> None:
        import socket

        self.tty = tty
        self.outputs = outputs  # (stdout, stderr): what `run -a` attached
        self.buf = b""
        self.sock: socket.socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        dir_fd = os.open(container_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:  # by /proc/self/fd: sun_path is 108 bytes, container dirs can be deeper
            self.sock.connect(f"/proc/self/fd/{dir_fd}/attach.sock")
        except BaseException:
            self.sock.close()
            raise
        finally:
            os.close(dir_fd)
        self.fd = self.sock.fileno()

    def output(self) -> bool:
        try:
            data = self.sock.recv(65536)
        except OSError:
            data = b""
        if not data:
            return False
        self.received += len(data)
        if self.tty:
            if self.outputs[0]:
                _write_all(1, data)
            return True
        self.buf += data
        while len(self.buf) >= 8:
            size = int.from_bytes(self.buf[4:8], "big")
            if len(self.buf) < 8 + size:
                break
            stream, chunk, self.buf = self.buf[0], self.buf[8 : 8 + size], self.buf[8 + size :]
            if self.outputs[stream == 2]:
                _write_all(2 if stream == 2 else 1, chunk)
        return True

    def _frame(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError:
            pass  # the container is gone: its output side says so next

    def send(self, data: bytes) -> None:
        from dockyard.engine.terminal import STDIN, frame

        self._frame(frame(STDIN, data))

    def close_stdin(self) -> None:
        from dockyard.engine.terminal import CLOSE_STDIN, frame

        self._frame(frame(CLOSE_STDIN))

    def resize(self, rows: int, cols: int) -> None:
        from dockyard.engine.terminal import resize_frame

        self._frame(resize_frame(rows, cols))

    def close(self) -> None:
        self.sock.close()


class PtyLink(Link):
    """A pty master this process holds (an `exec -t` process's terminal)."""

    def __init__(self, master: int) -> None:
        self.fd = master

    def output(self) -> bool:
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return True
        except OSError:  # EIO: the slave side is closed everywhere
            data = b""
        if not data:
            return False
        self.received += len(data)
        _write_all(1, data)
        return True

    def send(self, data: bytes) -> None:
        try:
            _write_all(self.fd, data)
        except OSError:
            pass

    def resize(self, rows: int, cols: int) -> None:
        from dockyard.engine.terminal import set_window_size

        try:
            set_window_size(self.fd, rows, cols)
        except OSError:
            pass

    def close(self) -> None:
        os.close(self.fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


# ------------------------------------------------------------------ the loop


class _DetachScanner:
    """Docker's escape proxy: holds back a prefix of the detach keys until it
    either completes (detach) or breaks (the held bytes go on)."""

    def __init__(self, keys: bytes) -> None:
        self.keys = keys
        self.held = bytearray()

    def scan(self, data: bytes) -> tuple[bytes, bool]:
        out = bytearray()
        for byte in data:
            if self.keys and byte == self.keys[len(self.held)]:
                self.held.append(byte)
                if len(self.held) == len(self.keys):
                    return bytes(out), True
                continue
            out += self.held
            self.held.clear()
            if self.keys and byte == self.keys[0]:
                self.held.append(byte)
            else:
                out.append(byte)
        return bytes(out), False


def proxy(
    link: Link,
    *,
    stdin: bool,
    tty: bool,
    detach_keys: str | None = None,
    close_stdin: bool = False,
    done: Callable[[], bool] | None = None,
    on_signal: Callable[[int], None] | None = None,
) -> bool:
    """Join the local stdio to `link` until its output ends (or `done()`);
    True when the user detached."""
    import select
    import signal

    local_tty = tty and os.isatty(0)
    scanner = _DetachScanner(parse_detach_keys(detach_keys)) if tty and stdin else None
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    saved_handlers: dict[int, object] = {}

    def wake(signum: int, _frame: object) -> None:
        if signum == signal.SIGWINCH:
            os.write(wake_w, b"w")
        elif on_signal is not None:
            on_signal(signum)

    if local_tty:
        saved_handlers[signal.SIGWINCH] = signal.signal(signal.SIGWINCH, wake)
    elif on_signal is not None:
        for name in _PROXIED_SIGNALS:
            signum = getattr(signal, name)
            saved_handlers[signum] = signal.signal(signum, wake)
    saved_mode = _raw_mode() if local_tty and stdin else None
    try:
        if local_tty:
            _send_size(link)
        watched = [link.fd, wake_r] + ([0] if stdin else [])
        while True:
            if done is not None and done():
                _drain(link)
                return False
            ready = select.select(watched, [], [], 0.1 if done is not None else None)[0]
            if wake_r in ready:
                while _read_some(wake_r):
                    pass
                _send_size(link)
            if link.fd in ready and not link.output():
                return False
            if 0 in ready:
                data = _read_some(0)
                if not data:
                    watched.remove(0)
                    if close_stdin:
                        link.close_stdin()
                    continue
                if scanner is not None:
                    data, detach = scanner.scan(data)
                    if data:
                        link.send(data)
                    if detach:
                        return True
                else:
                    link.send(data)
    finally:
        if saved_mode is not None:
            import termios

            termios.tcsetattr(0, termios.TCSADRAIN, saved_mode)
        for signum, handler in saved_handlers.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        os.close(wake_r)
        os.close(wake_w)


def _read_some(fd: int) -> bytes:
    try:
        return os.read(fd, 65536)
    except BlockingIOError:
        return b""
    except OSError:  # EIO from a hung-up terminal: as EOF
        return b""


def _drain(link: Link) -> None:
    """What is still readable once the process is known to be gone."""
    import select

    while select.select([link.fd], [], [], 0.05)[0] and link.output():
        pass


def _raw_mode() -> list[Any]:
    import termios
    import tty

    saved = termios.tcgetattr(0)
    tty.setraw(0, termios.TCSANOW)
    return saved


def _send_size(link: Link) -> None:
    try:
        size = os.get_terminal_size(0)
    except OSError:
        return
    link.resize(size.lines, size.columns)


# ------------------------------------------------------------------ callers


def attach_container(
    eng: Engine,
    container: Container,
    stdin: bool,
    detach_keys: str | None,
    close_stdin: bool,
    sig_proxy: bool = True,
    outputs: tuple[bool, bool] = (True, True),
) -> int | None:
    """Attach until the container exits (its exit code) or the user detaches (None);
    `outputs`: whether its stdout, stderr are shown."""
    tty = bool(container.config.get("Tty"))
    try:
        link: Link = AttachLink(container.dir, tty, outputs)
    except OSError:  # it ended before we came: show what it wrote
        link = _NoLink()

    def kill(signum: int) -> None:
        try:
            eng.kill(container.id, signum)
        except Exception:
            pass

    try:
        if not isinstance(link, _NoLink):
            detached = proxy(
                link,
                stdin=stdin,
                tty=tty,
                detach_keys=detach_keys,
                close_stdin=close_stdin,
                on_signal=kill if sig_proxy and not tty else None,
            )
            if detached:  # Docker prints nothing more
                _write_all(1, b"\n")
                return None
    finally:
        link.close()
    logged = (container.config.get("LogConfig") or {}).get("Type") != "none"
    if not link.received and logged:  # nothing came over the socket: the log has it all
        for stream, _, text in eng.logs(container.id, stdout=outputs[0], stderr=outputs[1]):
            out = sys.stdout if stream == "stdout" else sys.stderr
            out.write(text)
            out.flush()
    return eng.wait(container.id)


class _NoLink(Link):
    fd = -1

    def close(self) -> None:
        pass


def start_attached(eng: Engine, args: argparse.Namespace) -> int:
    """`start -a/-i CONTAINER`: start it and attach (stdin with -i)."""
    from dockyard.cli.errors import UsageError

    if len(args.containers) != 1:
        raise UsageError("you cannot start and attach multiple containers at once")
    container = eng.get(args.containers[0])
    interactive = bool(args.interactive and container.config.get("OpenStdin"))
    from dockyard.engine import autoremove

    autoremove.hold(container)  # AutoRemove: removed after we read its exit code
    eng.start(container.id, attach=True)
    code = attach_container(eng, container, interactive, args.detach_keys, close_stdin=True)
    return 0 if code is None else code


def run_attached(eng: Engine, container: Container, args: argparse.Namespace) -> int:
    """`run -i/-t` without -d (or with a log that can't be read), once started: attach;
    --rm once it exited."""
    from dockyard.cli.containers import remove_exited

    config = container.config
    outputs = (bool(config.get("AttachStdout", True)), bool(config.get("AttachStderr", True)))
    code = attach_container(
        eng, container, args.interactive, args.detach_keys, close_stdin=True, outputs=outputs
    )
    if code is None:  # detached: it runs on
        if args.rm:
            from dockyard.engine import autoremove

            autoremove.release(container)  # its remover takes it from here
        return 0
    if args.rm:
        remove_exited(eng, container)
    return code


def exec_attached(
    eng: Engine,
    name: str,
    opts: ExecOptions,
    helper: Helper,
    stdin: bool,
    detach_keys: str | None,
) -> int:
    """`exec -t [-i]`: the process gets a pty whose master comes to us over a
    console socket we listen on; then the same loop as attach. Its exit code."""
    import shutil
    import socket
    import tempfile

    from dockyard.engine import exec as execs

    directory = tempfile.mkdtemp(prefix="dockyard-exec-")
    path = os.path.join(directory, "console.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            listener.bind(path)
            listener.listen(1)
            listener.settimeout(30)
            if os.isatty(0):
                size = os.get_terminal_size(0)
                opts.console_size = (size.lines, size.columns)
        except BaseException:
            helper.abort()
            raise
        pid = execs.start(eng, name, opts, True, helper, console_socket=path)
        master = _receive_master(listener)
    finally:
        listener.close()
        shutil.rmtree(directory, ignore_errors=True)
    exit_code: list[int] = []

    def done() -> bool:
        if not exit_code:
            try:
                reaped, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                reaped, status = pid, 255 << 8
            if reaped:
                code = os.waitstatus_to_exitcode(status)
                exit_code.append(code if code >= 0 else 128 - code)
        return bool(exit_code)

    link = PtyLink(master)
    try:
        detached = proxy(link, stdin=stdin, tty=True, detach_keys=detach_keys, done=done)
    finally:
        link.close()
    if detached:
        _write_all(1, b"\n")
        return 0
    return exit_code[0] if exit_code else execs.wait(pid)


def _receive_master(listener: socket.socket) -> int:
    import socket

    conn, _ = listener.accept()
    with conn:
        conn.settimeout(30)
        _, fds, _, _ = socket.recv_fds(conn, 1024, 1)
    if not fds:
        from dockyard.engine.containers import EngineError

        raise EngineError("the runtime sent no terminal for the exec")
    os.set_inheritable(fds[0], False)
    return fds[0]
