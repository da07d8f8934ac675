"""The DNS server of user-defined networks: one detached process per state root.

Like Docker's embedded DNS (or podman's aardvark-dns): containers on a
user-defined network get `nameserver <gateway>`, and the server answers on
each such gateway (UDP and TCP 53) with that network's container names,
short ids and aliases, forwarding everything else to the host's resolvers.
The serving side is dns_server.py, the records dns_records.py; this module is
what the engine calls, and it stays cheap to import (no dnspython).

- `ensure_running(root)` starts the server when none runs, or sends SIGHUP to
  the one that runs so it looks at the DB again. It returns at once: the
  server is a fresh `python -S -I` (double fork, setsid, stdio on /dev/null
  and `<root>/dns.log`), which loads dnspython on its own time.
- One server per root: `<root>/dns.lock` is flocked by the server for its
  whole life. The starter takes the lock, forks the server with the locked
  fd inherited (so there is no moment the lock is free), writes
  `<root>/dns.pid` and lets go of its own copy.
- The server exits after ~10 s without endpoints on user-defined networks. To
  leave no gap with a caller that just added an endpoint, it first removes
  dns.pid, then looks at the DB once more (and stays if something came). A
  caller that finds the lock taken but no pid file waits (briefly) until the
  server either writes it again or is gone.
- `stop(root)` ends it (tests, `system check --repair`).

Why `-S -I`: no site processing (no .pth files, faster start) and no PYTHON*
environment or user site. The interpreter is this process's own (in a venv,
`.venv/bin/python`); the source tree and the directory that holds dnspython
(found on this process's sys.path) are put on the child's sys.path by the
boot line, so it works the same from a venv, an installed package or a
source checkout.
"""

from __future__ import annotations

import os
import sys
import time

PID_FILE = "dns.pid"
LOCK_FILE = "dns.lock"
LOG_FILE = "dns.log"
RESOLV_CONF = "/etc/resolv.conf"
IDLE_EXIT = 10.0
LOG_MAX = 1 << 20  # the log is emptied at start when it grew past this
_SRC = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class DNSError(Exception):
    """The DNS server could not be started or stopped; the message says why."""


# ------------------------------------------------------------------ starting


def ensure_running(
    root: str,
    *,
    port: int = 53,
    resolv_conf: str = RESOLV_CONF,
    idle_exit: float = IDLE_EXIT,
    forward_timeout: float | None = None,
) -> None:
    """Start the root's DNS server if it is not running; else make it re-read the DB.

    The keyword arguments (for tests) only apply to a server started here.
    """
    import fcntl

    root = os.path.abspath(root)
    os.makedirs(root, exist_ok=True)
    lock_path = os.path.join(root, LOCK_FILE)
    deadline = time.monotonic() + 2.0
    for _ in range(1000):
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            pid = _read_pid(root)
            if pid:
                try:
                    os.kill(pid, 1)  # SIGHUP: look at the DB now
                    return
                except ProcessLookupError:
                    pass
            # Being started by someone else, or on its way out: one of the
            # two ends soon (a pid file again, or a free lock).
            if time.monotonic() >= deadline:
                return
            time.sleep(0.01)
            continue
        try:
            options = ["--port", str(port), "--resolv-conf", resolv_conf]
            options += ["--idle-exit", repr(float(idle_exit))]
            if forward_timeout is not None:
                options += ["--forward-timeout", repr(float(forward_timeout))]
            pid = _spawn(root, fd, options)
            if pid:
                _write_pid(root, pid)
        finally:
            os.close(fd)  # the server holds the lock through its own copy
        return


def _site_dirs() -> list[str]:
    """The directories of this interpreter's sys.path the server needs (dnspython's)."""
    for entry in sys.path:
        if entry and os.path.isfile(os.path.join(entry, "dns", "message.py")):
            return [entry]
    return [p for p in sys.path if p.endswith(("site-packages", "dist-packages"))]


def _boot_line() -> str:
    return (
        f"import sys;sys.path[:0]=[{_SRC!r}];sys.path.extend({_site_dirs()!r});"
        "from dockyard.network.dns import main;main()"
    )


def _spawn(root: str, lock_fd: int, options: list[str]) -> int:
    """Double-fork the server with `lock_fd` inherited; its pid (0 if the fork failed)."""
    import _signal

    interp = sys.executable or "/usr/bin/python3"
    argv = [interp, "-S", "-I", "-c", _boot_line(), "--root", root, "--lock-fd", str(lock_fd)]
    argv += options
    env = {"PATH": os.environ.get("PATH") or "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin"}
    log_fd = os.open(
        os.path.join(root, LOG_FILE), os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600
    )
    null_fd = os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC)
    read_fd, write_fd = os.pipe()
    try:
        child = os.fork()
        if child == 0:  # pragma: no cover - ends in _exit or execve
            try:
                os.close(read_fd)
                os.setsid()
                grandchild = os.fork()
                if grandchild == 0:
                    os.dup2(null_fd, 0)
                    os.dup2(log_fd, 1)
                    os.dup2(log_fd, 2)
                    os.chdir("/")
                    os.set_inheritable(lock_fd, True)
                    os.closerange(3, lock_fd)
                    os.closerange(lock_fd + 1, 1 << 16)
                    # Blocked until the server's handler is in place (a HUP
                    # would kill it while it loads); a blocked signal stays
                    # pending across execve.
                    _signal.pthread_sigmask(_signal.SIG_BLOCK, [_signal.SIGHUP])
                    os.execve(interp, argv, env)
                    os._exit(127)
                os.write(write_fd, f"{grandchild}\n".encode())
            finally:
                os._exit(0)
    finally:
        os.close(write_fd)
        os.close(log_fd)
        os.close(null_fd)
    try:
        data = b""
        for _ in range(16):
            chunk = os.read(read_fd, 64)
            if not chunk:
                break
            data += chunk
    finally:
        os.close(read_fd)
        os.waitpid(child, 0)
    try:
        return int(data.decode().strip() or 0)
    except ValueError:
        return 0


# ------------------------------------------------------------------ pid file


def _pid_path(root: str) -> str:
    return os.path.join(root, PID_FILE)


def _start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (pids are reused; this pair is not), None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    fields = raw[raw.rfind(b")") + 2 :].split()
    if len(fields) < 20 or fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])


def _read_pid(root: str) -> int | None:
    """The pid in dns.pid when that process still runs (same start time), else None."""
    try:
        with open(_pid_path(root), "rb") as f:
            words = f.read().split()
        pid, start = int(words[0]), int(words[1])
    except (OSError, ValueError, IndexError):
        return None
    if pid <= 0 or _start_time(pid) != start:
        return None
    return pid


def _write_pid(root: str, pid: int) -> None:
    """dns.pid: `PID START_TIME`."""
    path = _pid_path(root)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(f"{pid} {_start_time(pid) or 0}\n")
    os.replace(tmp, path)


def _remove_pid(root: str, pid: int | None = None) -> None:
    """Remove dns.pid (only when it names `pid`, if given)."""
    path = _pid_path(root)
    if pid is not None:
        try:
            with open(path, "rb") as f:
                if int(f.read().split()[0]) != pid:
                    return
        except (OSError, ValueError, IndexError):
            return
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _lock_free(root: str) -> bool:
    """True when no server holds the root's lock (taking and dropping it)."""
    import fcntl

    try:
        fd = os.open(os.path.join(root, LOCK_FILE), os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


def server_pid(root: str) -> int | None:
    """The pid of the root's running DNS server, or None."""
    root = os.path.abspath(root)
    if _lock_free(root):
        return None
    return _read_pid(root)


# ------------------------------------------------------------------ stopping


def stop(root: str, timeout: float = 5.0) -> bool:
    """End the root's DNS server; True if one was running. Also clears a stale pid file."""
    root = os.path.abspath(root)
    pid = _read_pid(root)
    if _lock_free(root):
        _remove_pid(root)
        return False
    if pid is None:
        raise DNSError(f"DNS server of {root} holds its lock but has no pid file")
    deadline = time.monotonic() + timeout
    signal = 15  # SIGTERM, then SIGKILL when it takes too long
    for _ in range(100_000):
        try:
            os.kill(pid, signal)
        except ProcessLookupError:
            pass
        while time.monotonic() < deadline:
            if _lock_free(root):
                _remove_pid(root, pid)
                return True
            time.sleep(0.01)
        if signal == 9:
            break
        signal = 9
        deadline = time.monotonic() + timeout
    raise DNSError(f"DNS server of {root} (pid {pid}) did not exit")


# ------------------------------------------------------------------ the server process


def main(argv: list[str] | None = None) -> None:
    """The server process: `... --root ROOT [--lock-fd N] [--port 53] ...`."""
    import argparse
    import fcntl
    import signal

    parser = argparse.ArgumentParser(prog="dockyard-dns")
    parser.add_argument("--root", required=True)
    parser.add_argument("--lock-fd", type=int, default=-1)
    parser.add_argument("--port", type=int, default=53)
    parser.add_argument("--resolv-conf", default=RESOLV_CONF)
    parser.add_argument("--idle-exit", type=float, default=IDLE_EXIT)
    parser.add_argument("--forward-timeout", type=float, default=None)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    root = os.path.abspath(args.root)
    pid = os.getpid()
    _trim_log()
    if args.lock_fd >= 0:
        lock_fd = args.lock_fd  # locked by the starter, who also wrote dns.pid
        os.set_inheritable(lock_fd, False)
    else:  # started by hand
        os.makedirs(root, exist_ok=True)
        lock_fd = os.open(os.path.join(root, LOCK_FILE), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            sys.exit(f"dockyard-dns: a DNS server for {root} is already running")

    from dockyard.network.dns_server import FORWARD_TIMEOUT, Server

    try:
        server = Server(
            root,
            port=args.port,
            resolv_conf=args.resolv_conf,
            idle_exit=args.idle_exit,
            forward_timeout=args.forward_timeout or FORWARD_TIMEOUT,
        )
    except Exception as exc:
        _remove_pid(root, pid)
        sys.exit(f"dockyard-dns: cannot start: {exc}")
    signal.signal(signal.SIGHUP, lambda _s, _f: server.request_reload())
    signal.signal(signal.SIGTERM, lambda _s, _f: server.request_stop())
    signal.signal(signal.SIGINT, lambda _s, _f: server.request_stop())
    signal.set_wakeup_fd(server.wake_w.fileno(), warn_on_full_buffer=False)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGHUP])
    if _read_pid(root) != pid:  # a starter that died before writing it, or one by hand
        _write_pid(root, pid)
    server.log(f"serving {root} on port {args.port}")
    try:
        for _ in range(1_000_000):
            reason = server.serve()
            if reason != "idle":
                break
            # On the way out: first the pid file, then one more look (see the top).
            _remove_pid(root, pid)
            if not server.has_endpoints():
                break
            _write_pid(root, pid)
        server.log(f"exiting ({reason})")
    finally:
        _remove_pid(root, pid)
        server.close()


def _trim_log() -> None:
    try:
        st = os.fstat(2)
        if st.st_size > LOG_MAX and (st.st_mode & 0o170000) == 0o100000:
            os.ftruncate(2, 0)
    except OSError:
        pass
