"""The container's terminal: a pty made inside it, its master sent over --console-socket.

conmon and podman listen on a unix socket and expect the pty master as one
SCM_RIGHTS message; the slave becomes the process's stdio and controlling tty.
"""

from __future__ import annotations

import fcntl
import os
import struct

TIOCGPTN = 0x80045430
TIOCSPTLCK = 0x40045431
TIOCSCTTY = 0x540E
TIOCSWINSZ = 0x5414


def open_pty() -> tuple[int, int, str]:
    """(master, slave, slave path) from the /dev/ptmx in the current mount namespace."""
    master = os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    fcntl.ioctl(master, TIOCSPTLCK, struct.pack("i", 0))
    number = struct.unpack("I", fcntl.ioctl(master, TIOCGPTN, b"\0\0\0\0"))[0]
    path = f"/dev/pts/{number}"
    slave = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    return master, slave, path


def set_size(fd: int, size: dict[str, int] | None) -> None:
    if size:
        rows, cols = size.get("height", 0), size.get("width", 0)
        fcntl.ioctl(fd, TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def send_master(socket_fd: int, master: int, name: str) -> None:
    import socket

    sock = socket.socket(fileno=socket_fd)
    try:
        socket.send_fds(sock, [name.encode()], [master])
    finally:
        sock.close()


def become_stdio(slave: int) -> None:
    """The slave as fds 0-2 and controlling terminal (the caller has called setsid)."""
    for fd in (0, 1, 2):
        os.dup2(slave, fd)
    fcntl.ioctl(0, TIOCSCTTY, 0)
    if slave > 2:
        os.close(slave)
