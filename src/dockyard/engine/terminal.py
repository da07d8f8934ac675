"""Container stdin and terminals: the monitor's side and the attach protocol.

A container made with `-t` has a pty: the monitor listens on a console
socket, hands it to the runtime's `create` (`Options.console_socket`), gets
the pty master back (SCM_RIGHTS) and holds it for the container's life. It
reads the master into the json-file log (stream "stdout", as Docker logs a
tty container) and sends those bytes to attach clients raw (a tty attach
stream is not multiplexed, as in Docker's API).

The attach socket (`attach.sock` in the container's directory) is a unix
stream socket. Monitor → client: raw bytes for a tty container, else
Docker's multiplexed stream (per chunk `[stream, 0, 0, 0, size u32 BE]` then
the bytes; 1 = stdout, 2 = stderr). Client → monitor: frames with the same
8-byte header:

- kind 0 (`STDIN`): bytes for the container's stdin (the pty master, or the
  stdin fifo of a `-i` container); ignored when the container has no open
  stdin;
- kind 1 (`RESIZE`): 4 bytes, rows and columns (u16 BE each): TIOCSWINSZ on
  the master, so the container gets SIGWINCH;
- kind 2 (`CLOSE_STDIN`): no payload: the monitor closes its end of the
  stdin fifo, so the container reads EOF (what `run -i` does at EOF).

A client that only reads sends nothing. A client whose output can't be
written at once is dropped; input the container can't take at once is
dropped too (the writes never block the monitor).

When the spec asks for `replay` (a `run`/`start -a` that attaches right
after starting), what the container writes before the first client connects
(up to 64 KiB) is kept and sent to that client, so a shell's first prompt
is not lost.

Imported by the monitor: top-level imports stay at `os` and `sys`.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    from typing import Any

    from dockyard.engine.monitor import Monitor

STDIN = 0
RESIZE = 1
CLOSE_STDIN = 2
HEADER = 8
MAX_PENDING = 1 << 20  # a client's unfinished frame may not grow past this
TIOCSWINSZ = 0x5414
BACKLOG_MAX = 1 << 16


def frame(kind: int, payload: bytes = b"") -> bytes:
    """One client → monitor (or monitor → client) frame."""
    return bytes((kind, 0, 0, 0)) + len(payload).to_bytes(4, "big") + payload


def resize_frame(rows: int, cols: int) -> bytes:
    return frame(RESIZE, rows.to_bytes(2, "big") + cols.to_bytes(2, "big"))


def set_window_size(fd: int, rows: int, cols: int) -> None:
    import fcntl

    order = sys.byteorder
    size = rows.to_bytes(2, order) + cols.to_bytes(2, order) + bytes(4)
    fcntl.ioctl(fd, TIOCSWINSZ, size)


# ------------------------------------------------------------------ monitor side


def container_stdin(monitor: Monitor) -> None:
    """Make fd 0 what the container's stdin will be: /dev/null, or a read-only
    end of the stdin fifo (the monitor's own end is the only writer that
    lasts, so closing it gives the container EOF)."""
    fd = monitor.stdin_fd
    if fd != monitor.null:
        fd = os.open(monitor.spec.stdin_fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        os.set_blocking(fd, True)
        os.dup2(fd, 0)
        os.close(fd)
    else:
        os.dup2(fd, 0)


def create(monitor: Monitor, opts: Any, out_r: int) -> int:
    """The runtime's create with a console socket; the pty master, which replaces
    the stdout pipe's read end `out_r` (closed here once the master is in hand)."""
    from dockyard.runtime import container

    spec = monitor.spec
    directory, path, sock = _console_socket(spec.container_dir)
    try:
        opts.console_socket = path
        container.create(monitor.root, spec.container_id, spec.bundle, opts)
        master = _receive_fd(sock)
    finally:
        sock.close()
        _remove(path)
        if directory:
            os.rmdir(directory)
    os.set_blocking(master, False)
    os.close(out_r)
    monitor.master = master
    return master


def listen_unix(path: str, backlog: int) -> Any:
    """A listening, non-blocking unix socket at `path` (mode 0600), bound by a
    relative name: sun_path is 108 bytes."""
    import _socket

    _remove(path)
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    directory, name = os.path.split(path)
    cwd = os.open(".", os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.chdir(directory)
        sock.bind(name)
    finally:
        os.fchdir(cwd)
        os.close(cwd)
    os.chmod(path, 0o600)
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


def _console_socket(container_dir: str) -> tuple[str, str, Any]:
    """(private dir to remove or "", socket path, listening socket). sun_path is
    108 bytes and the runtime connects by path: long paths go to a fresh 0700
    directory under /tmp."""
    import _socket

    directory = ""
    path = os.path.join(container_dir, "console.sock")
    if len(path) > 100:
        directory = f"/tmp/dockyard-console-{os.getpid()}-{os.urandom(4).hex()}"
        os.mkdir(directory, 0o700)
        path = os.path.join(directory, "console.sock")
    _remove(path)
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.bind(path)
        os.chmod(path, 0o600)
        sock.listen(1)
    except BaseException:
        sock.close()
        if directory:
            _remove(path)
            os.rmdir(directory)
        raise
    return directory, path, sock


def _receive_fd(listener: Any, timeout: float = 30.0) -> int:
    """Accept the runtime's connection and take the one fd it sends (SCM_RIGHTS)."""
    import _socket

    listener.settimeout(timeout)
    fd, _ = listener._accept()
    conn = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM, 0, fd)
    try:
        conn.settimeout(timeout)
        _, ancdata, _, _ = conn.recvmsg(1024, _socket.CMSG_SPACE(16), _socket.MSG_CMSG_CLOEXEC)
    finally:
        conn.close()
    fds: list[int] = []
    for level, kind, data in ancdata:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            usable = len(data) - len(data) % 4
            fds += [int.from_bytes(data[i : i + 4], sys.byteorder) for i in range(0, usable, 4)]
    if not fds:
        raise OSError("the runtime sent no terminal over the console socket")
    for extra in fds[1:]:
        os.close(extra)
    return fds[0]


def feed(monitor: Monitor, fd: int, data: bytes) -> bool:
    """Frames from attach client `fd`; False when it sent nonsense (drop it)."""
    buf = monitor.clients.get(fd, b"") + data
    while len(buf) >= HEADER:
        size = int.from_bytes(buf[4:8], "big")
        if len(buf) < HEADER + size:
            break
        kind, payload, buf = buf[0], buf[HEADER : HEADER + size], buf[HEADER + size :]
        if kind == STDIN:
            _input(monitor, payload)
        elif kind == RESIZE and len(payload) == 4 and monitor.master >= 0:
            rows, cols = int.from_bytes(payload[:2], "big"), int.from_bytes(payload[2:], "big")
            try:
                set_window_size(monitor.master, rows, cols)
            except OSError:
                pass
        elif kind == CLOSE_STDIN and monitor.master < 0 and monitor.stdin_fd != monitor.null:
            os.close(monitor.stdin_fd)
            monitor.stdin_fd = monitor.null
    if len(buf) > MAX_PENDING:
        return False
    monitor.clients[fd] = buf
    return True


def _input(monitor: Monitor, data: bytes) -> None:
    if not monitor.spec.interactive or not data:
        return
    target = monitor.master if monitor.master >= 0 else monitor.stdin_fd
    if target == monitor.null:
        return
    try:
        os.write(target, data)  # non-blocking: what doesn't fit is dropped
    except OSError:
        pass


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
