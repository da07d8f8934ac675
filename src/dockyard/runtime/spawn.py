"""Starting the container's init: the runtime side of the fork, re-exec and sync.

The child re-executes the interpreter from a read-only bind mount of itself,
in a private mount namespace, before it enters any container namespace. From
then on /proc/<pid>/exe of every runtime process a container can see (and the
`#!/proc/self/exe` trick, CVE-2019-5736) leads to a read-only file: the host's
interpreter can't be overwritten from inside.

The config goes to init over a third pipe, marshalled. Runtime and init talk
over two pipes, one line per message: `maps`, `pid N`, `hooks`, `ready`,
`error MESSAGE` from init; `ok [DATA]` from the runtime.
"""

from __future__ import annotations

import marshal
import os
import sys

from dockyard.runtime import syscalls as sc
from dockyard.runtime.errors import RuntimeFailure

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from dockyard.runtime.cgroups import CgroupManager

_SRC = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_BOOT = (
    f"import sys;sys.path.insert(0,{_SRC!r});"
    "from dockyard.runtime.init import main;main(*map(int,sys.argv[1:5]))"
)


class Channel:
    """Line messages over a pair of pipe fds."""

    def __init__(self, read_fd: int, write_fd: int) -> None:
        self.read_fd = read_fd
        self.write_fd = write_fd
        self._buf = b""

    def send(self, message: str) -> None:
        os.write(self.write_fd, message.encode() + b"\n")

    def recv(self) -> str:
        """The next message, or "" when the other side has closed."""
        while b"\n" not in self._buf:
            chunk = os.read(self.read_fd, 65536)
            if not chunk:
                rest, self._buf = self._buf, b""
                return rest.decode(errors="replace")
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line.decode(errors="replace")

    def request(self, message: str) -> str:
        """Send and wait for `ok [DATA]`; anything else is a failure."""
        self.send(message)
        reply = self.recv()
        if reply == "ok" or reply.startswith("ok "):
            return reply[3:]
        raise RuntimeFailure(reply.removeprefix("error ") or "runtime went away")

    def close(self) -> None:
        for fd in (self.read_fd, self.write_fd):
            try:
                os.close(fd)
            except OSError:
                pass


def interpreter() -> str:
    return os.path.realpath(sys.executable)


# True in a process that `exec_read_only` started (and that went back to the
# host's mount namespace): its /proc/self/exe is already the read-only file, so
# the init helpers it forks need no re-exec of their own.
READ_ONLY_EXE = False
# True where a longer-lived ancestor keeps the cgroup attach lock warm (the
# monitor server): a helper's own warmer would only add a thread.
LOCK_KEPT_WARM = False


def exec_read_only(interp: str, args: list[str], fds: tuple[int, ...], env: dict[str, str]) -> None:
    """In a forked child: exec `interp -S -I ARGS FD… HOST_MNT` from a read-only
    bind mount of itself, in a private mount namespace.

    `fds` stay open across the exec and go on the command line, followed by an
    fd of the host's mount namespace: the new process `setns`es back to it
    (`return_to_host`) and keeps its read-only exe. Never returns.
    """
    host_mnt = os.open("/proc/self/ns/mnt", os.O_RDONLY)
    syscalls = sc.current()
    syscalls.unshare(sc.CLONE_NEWNS)
    syscalls.mount(None, "/", None, sc.MS_REC | sc.MS_SLAVE)
    syscalls.mount(interp, interp, None, sc.MS_BIND)
    syscalls.mount(None, interp, None, sc.MS_BIND | sc.MS_REMOUNT | sc.MS_RDONLY)
    for fd in (*fds, host_mnt):
        os.set_inheritable(fd, True)
    os.execve(interp, [interp, "-S", "-I", *args, *map(str, (*fds, host_mnt))], env)


def return_to_host(host_mnt: int) -> None:
    """Back from `exec_read_only`'s private mount namespace to the host's, as it
    is now (mounts made since the fork are there); the exe stays read-only."""
    global READ_ONLY_EXE
    if host_mnt < 0:
        return
    try:
        sc.current().setns(host_mnt, sc.CLONE_NEWNS)
        READ_ONLY_EXE = True
    except OSError:
        pass  # stay where we are: the mounts as they were at the fork
    os.close(host_mnt)


def _run_init_here(fds: tuple[int, int, int], parent_fds: tuple[int, ...]) -> None:
    """The helper as a plain fork of a process whose exe is already read-only."""
    import _signal

    for fd in parent_fds:
        os.close(fd)
    # Handlers and the wakeup fd are the parent's (a monitor's); an init child
    # must neither wake the parent nor swallow SIGTERM.
    _signal.set_wakeup_fd(-1)
    for name in ("SIGINT", "SIGHUP", "SIGTERM", "SIGCHLD"):
        _signal.signal(getattr(_signal, name), _signal.SIG_DFL)
    from dockyard.runtime.init import main

    try:
        main(*fds)
    finally:
        os._exit(1)


class Helper:
    """An init helper, already booting its interpreter, waiting for its orders.

    Starting it is the first thing `create`, `run` and `exec` do (the CLI does
    it before it even parses its arguments): the helper's interpreter start
    then overlaps with the runtime's own imports and config checks. Orders
    are sent once (`send`); a helper that gets none is `abort`ed.
    """

    def __init__(self) -> None:
        to_init_r, to_init_w = os.pipe()
        from_init_r, from_init_w = os.pipe()
        cfg_r, cfg_w = os.pipe()
        interp = interpreter()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child ends in execve or _exit
            try:
                fds = (cfg_r, to_init_r, from_init_w)
                if READ_ONLY_EXE:
                    _run_init_here(fds, (to_init_w, from_init_r, cfg_w))
                exec_read_only(interp, ["-c", _BOOT], fds, {})
            except BaseException as err:
                try:
                    os.write(from_init_w, f"error starting container init: {err}\n".encode())
                finally:
                    os._exit(127)
        for fd in (to_init_r, from_init_w, cfg_r):
            os.close(fd)
        self.pid = pid
        self.chan = Channel(from_init_r, to_init_w)
        self._cfg_w = cfg_w
        self.used = False
        from dockyard.runtime.cgroups.warm import AttachLockWarmer

        self._warmer = AttachLockWarmer(limit=0 if LOCK_KEPT_WARM else 0.5)

    def send(self, payload: dict[str, Any], cgroup: Callable[[], CgroupManager] | None) -> None:
        """Give the helper its orders, then put it in its cgroup and let it go.

        The cgroup join happens here, while the helper reads its orders: on
        cgroup v1 each join waits for an RCU grace period. The helper waits
        for the `ok` before it enters any namespace.
        """
        self.used = True
        try:
            try:
                _write_all(self._cfg_w, marshal.dumps(payload))
            except BrokenPipeError:
                pass  # the helper died before reading; its error message says why
            finally:
                os.close(self._cfg_w)
            if cgroup is not None:
                cgroup().add_process(self.pid)
            self._warmer.stop()
            self.chan.send("ok")
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Kill a helper that won't be used (or failed) and release its pipes."""
        self._warmer.stop()
        try:
            os.kill(self.pid, 9)
            os.waitpid(self.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        if not self.used:
            os.close(self._cfg_w)
            self.used = True
        self.chan.close()

    def reap(self) -> None:
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def write_id_maps(pid: int, linux: dict[str, Any]) -> None:
    """uid_map/gid_map of a process that has just unshared its user namespace."""
    for key, name in (("uidMappings", "uid_map"), ("gidMappings", "gid_map")):
        entries = linux.get(key) or []
        if not entries:
            continue
        text = "".join(f"{m['containerID']} {m['hostID']} {m['size']}\n" for m in entries)
        try:
            with open(f"/proc/{pid}/{name}", "w") as f:
                f.write(text)
        except OSError as err:
            raise RuntimeFailure(
                f"cannot write linux.{key} to /proc/{pid}/{name}: {err.strerror}"
            ) from None
