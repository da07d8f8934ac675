"""The container's init: runs in the re-executed interpreter and ends in execve.

`main` reads its orders (a marshalled dict) from a pipe, enters or creates the
namespaces, forks the process that becomes the container (PID 1 of a new PID
namespace), builds its root file system, waits for `start`, drops privileges
and executes the user's program. Everything it needs is imported before
pivot_root: after it, the host's Python library is out of reach.
"""

from __future__ import annotations

import marshal
import os

from dockyard.runtime import syscalls as sc
from dockyard.runtime.errors import RuntimeFailure
from dockyard.runtime.spawn import Channel

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    from typing import Any

NS_FLAGS = {
    "user": sc.CLONE_NEWUSER,
    "ipc": sc.CLONE_NEWIPC,
    "uts": sc.CLONE_NEWUTS,
    "network": sc.CLONE_NEWNET,
    "pid": sc.CLONE_NEWPID,
    "cgroup": sc.CLONE_NEWCGROUP,
    "time": sc.CLONE_NEWTIME,
    "mount": sc.CLONE_NEWNS,
}
# The user namespace first (it owns the others), the mount namespace last
# (after it, paths on the host are gone).
_NS_ORDER = ("ipc", "uts", "network", "pid", "cgroup", "time", "mount")


def main(cfg_fd: int, chan_read: int, chan_write: int, host_mnt: int = -1) -> None:
    chunks = []
    while chunk := os.read(cfg_fd, 65536):
        chunks.append(chunk)
    os.close(cfg_fd)
    if not chunks:
        os._exit(0)  # the runtime had no use for this helper
    if host_mnt >= 0:
        # Back from the private mount namespace the read-only re-exec needed (our
        # exe stays on that read-only mount) to the runtime's, as it is now: a
        # helper started early would otherwise miss mounts made since (the rootfs).
        try:
            sc.current().setns(host_mnt, sc.CLONE_NEWNS)
        except OSError:
            pass  # stay where we are: the mounts as they were at the fork
        os.close(host_mnt)
    payload: dict[str, Any] = marshal.loads(b"".join(chunks))
    chan = Channel(chan_read, chan_write)
    try:
        if chan.recv() != "ok":  # the runtime has put us in the container's cgroup
            os._exit(1)
        if payload["mode"] == "create":
            _create(payload, chan)
        else:
            _exec(payload, chan)
    except RuntimeFailure as err:
        _die(chan, str(err))
    except OSError as err:
        _trace(payload)
        _die(chan, f"{err.filename + ': ' if err.filename else ''}{err.strerror or err}")
    except BaseException as err:
        _trace(payload)
        _die(chan, f"{type(err).__name__}: {err}")


def _trace(payload: dict[str, Any]) -> None:
    """With --debug, the init's traceback goes to stderr: the one place it helps."""
    if payload.get("debug"):
        import traceback

        traceback.print_exc()


def _preload(process: dict[str, Any], linux: dict[str, Any]) -> None:
    """Import now what the last steps need: after pivot_root or setns(mnt) the host's
    Python library and libseccomp are out of reach."""
    from dockyard.runtime import capabilities, rlimits  # noqa: F401

    if linux.get("seccomp"):  # (validated by the runtime already)
        from dockyard.runtime import seccomp

        seccomp.load_library()
    if process.get("terminal"):
        import socket  # noqa: F401

        from dockyard.runtime import console  # noqa: F401


def _die(chan: Channel, message: str) -> None:
    try:
        chan.send("error " + message.replace("\n", " "))
    except BrokenPipeError:
        pass  # the runtime has closed its end: it has reported the failure itself
    except OSError:
        os.write(2, f"dockyard-runtime init: {message}\n".encode())
    os._exit(1)


def _open_namespaces(paths: dict[str, str]) -> dict[str, int]:
    fds: dict[str, int] = {}
    for kind, path in paths.items():
        try:
            fds[kind] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as err:
            raise RuntimeFailure(f"namespace {kind} at {path}: {err.strerror}") from None
    return fds


def _connect_console(path: str | None) -> int:
    """The console socket, connected by path (before the host's paths are gone)."""
    if not path:
        return -1
    import socket

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError as err:
        sock.close()
        raise RuntimeFailure(f"cannot connect to console socket {path}: {err.strerror}") from None
    return sock.detach()


def _enter_namespaces(linux: dict[str, Any], ns_fds: dict[str, int], chan: Channel | None) -> None:
    """Join (setns) or create (unshare) every namespace the config lists."""
    syscalls = sc.current()
    wanted = {n["type"] for n in linux.get("namespaces") or []}
    if "user" in ns_fds:
        syscalls.setns(ns_fds["user"], sc.CLONE_NEWUSER)
    elif "user" in wanted and chan is not None:
        syscalls.unshare(sc.CLONE_NEWUSER)
        chan.request("maps")
    if "user" in ns_fds or "user" in wanted:
        # Become root of the new user namespace, as runc does.
        os.setresgid(0, 0, 0)
        os.setresuid(0, 0, 0)
    for kind in _NS_ORDER:
        if kind in ns_fds:
            syscalls.setns(ns_fds[kind], NS_FLAGS[kind])
        elif kind in wanted and chan is not None:
            syscalls.unshare(NS_FLAGS[kind])


def _enter_and_fork(
    linux: dict[str, Any], ns_paths: dict[str, str], chan: Channel, create: bool
) -> None:
    """Enter the namespaces, then fork (a new pid namespace holds only children).

    Returns in the child; the parent reports the child's pid and exits.
    """
    ns_fds = _open_namespaces(ns_paths)
    _enter_namespaces(linux, ns_fds, chan if create else None)
    for fd in ns_fds.values():
        os.close(fd)
    pid = os.fork()
    if pid:
        chan.send(f"pid {pid}")
        os._exit(0)


def _create(payload: dict[str, Any], chan: Channel) -> None:
    config = payload["config"]
    linux = config.get("linux") or {}
    _enter_and_fork(linux, payload["ns_paths"], chan, create=True)
    _setup_container(payload, config, linux, chan)


def _bring_up_loopback() -> None:
    """A new network namespace has lo down; runc brings it up, so do we."""
    import _socket
    import fcntl
    import struct

    sock = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)
    try:
        req = struct.pack("16sH22x", b"lo", 0)
        flags = struct.unpack("16sH22x", fcntl.ioctl(sock.fileno(), 0x8913, req))[1]
        fcntl.ioctl(sock.fileno(), 0x8914, struct.pack("16sH22x", b"lo", flags | 1))
    finally:
        sock.close()


def _setup_container(
    payload: dict[str, Any], config: dict[str, Any], linux: dict[str, Any], chan: Channel
) -> None:
    from dockyard.runtime import devices, hooks, mounts, rlimits

    process = config["process"]
    rootfs, bundle = payload["rootfs"], payload["bundle"]
    wanted = {n["type"]: n for n in linux.get("namespaces") or []}
    os.setsid()
    if "network" in wanted and "network" not in payload["ns_paths"]:
        _bring_up_loopback()
    mounts.prepare_root(rootfs, linux.get("rootfsPropagation"))
    has_devpts = dev_bound = False
    for entry in config.get("mounts") or []:
        mounts.mount_entry(rootfs, bundle, entry, payload["cgroup"])
        dest = os.path.normpath(entry["destination"])
        has_devpts = has_devpts or dest == "/dev/pts"
        if dest == "/dev" and entry.get("type") != "tmpfs":
            dev_bound = True
    if not dev_bound:
        devices.create(rootfs, devices.all_devices(linux), bind_from_host="user" in wanted)
        devices.links(rootfs, has_devpts)
    mounts.make_mount_point(rootfs, process.get("cwd") or "/", True)
    state_json = chan.request("hooks").encode()
    all_hooks = config.get("hooks") or {}
    if all_hooks.get("createContainer"):
        hooks.run("createContainer", all_hooks["createContainer"], state_json)
    if all_hooks.get("startContainer"):
        import subprocess  # noqa: F401 - needed after pivot_root, when the stdlib is gone
    terminal = bool(process.get("terminal"))
    _preload(process, linux)
    # Handles on host paths, taken while they are still in reach.
    fifo_fd = os.open(payload["fifo_path"], os.O_PATH | os.O_CLOEXEC)
    console_fd = _connect_console(payload["console_socket"]) if terminal else -1
    mounts.pivot(rootfs, payload["no_pivot"])
    mounts.finish_propagation(linux.get("rootfsPropagation"))
    for key, value in (linux.get("sysctl") or {}).items():
        with open("/proc/sys/" + key.replace(".", "/"), "w") as f:
            f.write(str(value))
    mounts.mask_paths(linux.get("maskedPaths") or [])
    mounts.readonly_paths(linux.get("readonlyPaths") or [])
    if (config.get("root") or {}).get("readonly"):
        mounts.readonly_root()
    syscalls = sc.current()
    if config.get("hostname"):
        syscalls.sethostname(config["hostname"])
    if config.get("domainname"):
        syscalls.setdomainname(config["domainname"])
    if terminal:
        _attach_console(console_fd, process)
    rlimits.apply(process.get("rlimits") or [])
    _oom_score_adj(process)
    env = _environment(process)
    path = find_executable(process["args"][0], env.get("PATH", ""))
    os.chdir(process.get("cwd") or "/")
    chan.send("ready")
    chan.close()
    fifo = os.open(f"/proc/self/fd/{fifo_fd}", os.O_WRONLY | os.O_CLOEXEC)
    # `start` is under way (it opened the fifo); it returns, and runs poststart,
    # only after the byte: startContainer hooks must come before that.
    if all_hooks.get("startContainer"):
        hooks.run("startContainer", all_hooks["startContainer"], state_json)
    os.write(fifo, b"0")
    os.close(fifo)
    os.close(fifo_fd)
    _finish_and_exec(path, process, linux, payload["preserve_fds"])


def _attach_console(console_fd: int, process: dict[str, Any]) -> None:
    from dockyard.runtime import console

    if console_fd < 0:
        raise RuntimeFailure("process.terminal is set but no --console-socket was given")
    master, slave, name = console.open_pty()
    uid = (process.get("user") or {}).get("uid", 0)
    try:
        os.fchown(slave, uid, -1)
    except OSError:
        pass
    console.set_size(slave, process.get("consoleSize"))
    console.send_master(console_fd, master, name)
    os.close(master)
    console.become_stdio(slave)


def _oom_score_adj(process: dict[str, Any]) -> None:
    if "oomScoreAdj" in process:
        value = process["oomScoreAdj"]
        try:
            with open("/proc/self/oom_score_adj", "w") as f:
                f.write(str(value))
        except OSError as err:
            hint = " (lowering it needs CAP_SYS_RESOURCE)" if int(value) < 0 else ""
            raise RuntimeFailure(
                f"cannot set process.oomScoreAdj to {value}: {err.strerror}{hint}"
            ) from None


def _environment(process: dict[str, Any]) -> dict[str, str]:
    env = dict(e.split("=", 1) for e in process.get("env") or [])
    if "HOME" not in env:
        env["HOME"] = _home_of((process.get("user") or {}).get("uid", 0))
    return env


def _home_of(uid: int) -> str:
    try:
        with open("/etc/passwd") as f:
            for line in f:
                fields = line.rstrip("\n").split(":")
                if len(fields) > 5 and fields[2] == str(uid):
                    return fields[5] or "/"
    except OSError:
        pass
    return "/"


def find_executable(name: str, search_path: str) -> str:
    """Resolve args[0] like execvp, in the container's file system."""
    candidates = (
        [name] if "/" in name else [os.path.join(d or ".", name) for d in search_path.split(":")]
    )
    for path in candidates:
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    if "/" in name:
        if os.path.exists(name):  # there but not runnable: docker maps this to exit 126
            raise RuntimeFailure(f'exec: "{name}": permission denied')
        # runc's wording: podman/docker map "no such file or directory" to exit 127.
        raise RuntimeFailure(f'exec: "{name}": stat {name}: no such file or directory')
    raise RuntimeFailure(f'exec: "{name}": executable file not found in $PATH')


def _switch_user(user: dict[str, Any]) -> None:
    syscalls = sc.current()
    uid, gid = user.get("uid", 0), user.get("gid", 0)
    groups = list(user.get("additionalGids") or [])
    try:
        os.setgroups(groups)
    except PermissionError:
        if groups:
            raise RuntimeFailure("cannot set additionalGids: setgroups is denied here") from None
    syscalls.prctl(sc.PR_SET_KEEPCAPS, 1)
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    syscalls.prctl(sc.PR_SET_KEEPCAPS, 0)
    if user.get("umask") is not None:
        os.umask(user["umask"])


def _finish_and_exec(
    path: str, process: dict[str, Any], linux: dict[str, Any], preserve: int
) -> None:
    """The last steps, in runc's order, then execve."""
    import _signal

    from dockyard.runtime import capabilities

    syscalls = sc.current()
    env = _environment(process)
    # Only stdio and the preserved fds (LISTEN_FDS) may reach the container.
    syscalls.close_range(3 + preserve, 0xFFFFFFFF, sc.CLOSE_RANGE_CLOEXEC)
    # Python ignores SIGPIPE and SIGXFSZ; an ignored signal survives execve.
    for signum in (_signal.SIGPIPE, _signal.SIGXFSZ):
        _signal.signal(signum, _signal.SIG_DFL)
    seccomp = linux.get("seccomp")
    nnp = bool(process.get("noNewPrivileges"))
    if seccomp:
        from dockyard.runtime import seccomp as seccomp_mod
    if seccomp and not nnp:
        seccomp_mod.load(seccomp)
    _switch_user(process.get("user") or {})
    capabilities.apply(process.get("capabilities"))
    if nnp:
        syscalls.prctl(sc.PR_SET_NO_NEW_PRIVS, 1)
        if seccomp:
            seccomp_mod.load(seccomp)
    os.execve(path, process["args"], env)


def _exec(payload: dict[str, Any], chan: Channel) -> None:
    """`exec`: join the running container's namespaces and run one more process."""
    process = payload["process"]
    linux = payload["linux"]
    _preload(process, linux)
    terminal = bool(process.get("terminal"))
    console_fd = _connect_console(payload["console_socket"]) if terminal else -1
    _enter_and_fork(linux, payload["ns_paths"], chan, create=False)
    from dockyard.runtime import rlimits

    if terminal:
        os.setsid()
        _attach_console(console_fd, process)
    cwd = process.get("cwd") or "/"
    try:
        os.chdir(cwd)
    except OSError as err:
        raise RuntimeFailure(f"cwd {cwd} in the container: {err.strerror}") from None
    rlimits.apply(process.get("rlimits") or [])
    env = _environment(process)
    path = find_executable(process["args"][0], env.get("PATH", ""))
    # The channel closes on a successful execve: that is the runtime's "started".
    os.set_inheritable(chan.write_fd, False)
    os.set_inheritable(chan.read_fd, False)
    _finish_and_exec(path, process, linux, payload["preserve_fds"])
