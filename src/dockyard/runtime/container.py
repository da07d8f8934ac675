"""Container lifecycle as a library: create, start, run, exec, kill, delete, pause, resume.

The engine calls these in process; `dockyard-runtime` is a thin CLI over them.
State transitions follow the OCI runtime spec: start only from created, delete
refuses a running container unless forced, kill only a created or running one.
"""

from __future__ import annotations

import os
import time

from dockyard.oci import runtime_spec as spec
from dockyard.runtime import config as config_mod
from dockyard.runtime import spawn
from dockyard.runtime.errors import RuntimeFailure
from dockyard.runtime.state import (
    FIFO_NAME,
    ContainerState,
    StateRoot,
    pid_start_time,
    write_atomic,
)

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    from typing import Any

    from dockyard.runtime.cgroups import CgroupManager

_NS_FILES = {
    "user": "user",
    "ipc": "ipc",
    "uts": "uts",
    "network": "net",
    "pid": "pid",
    "cgroup": "cgroup",
    "mount": "mnt",
    "time": "time",
}


class Options:
    """What runc's command line can say about how to create or exec."""

    def __init__(
        self,
        pid_file: str | None = None,
        console_socket: str | None = None,
        no_pivot: bool = False,
        preserve_fds: int = 0,
        systemd_cgroup: bool = False,
        debug: bool = False,
    ) -> None:
        self.pid_file = pid_file
        self.console_socket = console_socket
        self.no_pivot = no_pivot
        self.preserve_fds = preserve_fds
        self.systemd_cgroup = systemd_cgroup
        self.debug = debug


def _now() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e9):09d}Z"


def _cgroup_manager(path: str) -> CgroupManager:
    from dockyard.runtime import cgroups

    return cgroups.open_manager(path)


def _cgroup_view(manager: CgroupManager, use_namespace: bool) -> dict[str, Any]:
    """What init needs to mount the container's cgroups at /sys/fs/cgroup."""
    mounts: dict[str, str] = getattr(manager, "mounts", {}) or {}
    hierarchies: dict[str, str] = {}
    for mount in mounts.values():
        hierarchies.setdefault(os.path.basename(mount), mount)
    mode = "v1" if mounts else "v2"
    return {
        "mode": mode,
        "namespace": use_namespace,
        "root": getattr(manager, "root", "/sys/fs/cgroup"),
        "path": manager.path,
        "hierarchies": hierarchies,
    }


def _device_rules(linux: dict[str, Any]) -> dict[str, Any]:
    """linux.resources with the rules runc always adds so the default devices work."""
    from dockyard.runtime.devices import DEFAULT_ALLOW_RULES

    resources = dict(linux.get("resources") or {})
    rules = list(resources.get("devices") or [])
    if rules:
        # A device the config already has an allow rule for keeps that rule's access.
        covered = {(r.get("type"), r.get("major"), r.get("minor")) for r in rules if r.get("allow")}
        extra = [
            {
                "allow": True,
                "type": d.get("type", "c"),
                "major": d.get("major"),
                "minor": d.get("minor"),
                "access": "rwm",
            }
            for d in linux.get("devices") or []
            if (d.get("type", "c"), d.get("major"), d.get("minor")) not in covered
        ]
        resources["devices"] = rules + DEFAULT_ALLOW_RULES + extra
    return resources


def _absolute(path: str | None) -> str | None:
    return os.path.abspath(path) if path else None


def _hook_state(
    container_id: str, status: str, pid: int, bundle: str, config: dict[str, Any]
) -> bytes:
    import json

    doc = spec.state_document(container_id, status, pid, bundle, config.get("annotations"))
    if status == spec.STATUS_CREATING:
        doc["pid"] = pid  # creating still has a pid worth giving the hooks
    return json.dumps(doc).encode()


def create(
    root: StateRoot,
    container_id: str,
    bundle: str,
    opts: Options,
    helper: spawn.Helper | None = None,
) -> ContainerState:
    """Set up the container and leave its init waiting for `start`.

    `helper` is an init helper started earlier (the CLI starts one before it
    parses its arguments); without one, one is started here.
    """
    helper = helper or spawn.Helper()
    try:
        bundle, config = config_mod.load_bundle(bundle)
        state_dir = root.reserve(container_id)
    except BaseException:
        helper.abort()
        raise
    linux = config.get("linux") or {}
    manager: CgroupManager | None = None
    init_pid = 0
    try:
        from dockyard.runtime import cgroups

        cgroup_path = cgroups.parse_cgroups_path(
            linux.get("cgroupsPath"), container_id, opts.systemd_cgroup
        )
        manager = _cgroup_manager(cgroup_path)
        fifo = os.path.join(state_dir, FIFO_NAME)
        os.mkfifo(fifo, 0o622)
        # Like runc: the container's root (maybe a mapped uid) must open it for writing.
        os.chown(fifo, _host_root(linux, "uidMappings"), _host_root(linux, "gidMappings"))
        namespaces = linux.get("namespaces") or []
        wanted = {n["type"] for n in namespaces}
        rootfs = config_mod.rootfs_path(config, bundle)
        payload = {
            "mode": "create",
            "config": config,
            "rootfs": rootfs,
            "bundle": bundle,
            "ns_paths": {n["type"]: n["path"] for n in namespaces if n.get("path")},
            "fifo_path": fifo,
            "console_socket": _absolute(opts.console_socket),
            "no_pivot": opts.no_pivot,
            "preserve_fds": opts.preserve_fds,
            "cgroup": _cgroup_view(manager, "cgroup" in wanted),
            "debug": opts.debug,
        }
        cgroup = manager

        def make_cgroup() -> CgroupManager:
            cgroup.create()
            cgroup.apply(_device_rules(linux))
            return cgroup

        helper.send(payload, make_cgroup)
        try:
            init_pid = _await_ready(helper.chan, helper.pid, container_id, bundle, config)
        finally:
            helper.chan.close()
            helper.reap()
        start_time = pid_start_time(init_pid)
        if start_time is None:
            raise RuntimeFailure("container init exited during create")
        state = ContainerState(
            id=container_id,
            bundle=bundle,
            rootfs=rootfs,
            pid=init_pid,
            pid_start=start_time,
            created=_now(),
            cgroup_path=cgroup_path,
            owner="",
            config=config,
            state_dir=state_dir,
        )
        root.save(state)
        if opts.pid_file:
            write_atomic(os.path.abspath(opts.pid_file), str(init_pid).encode())
        return state
    except BaseException:
        helper.abort()
        _undo_create(state_dir, manager, init_pid)
        raise


def _await_ready(
    chan: spawn.Channel, helper: int, container_id: str, bundle: str, config: dict[str, Any]
) -> int:
    """Serve init's requests until it is ready; returns the container's pid."""
    from dockyard.runtime import hooks

    init_pid = 0
    linux = config.get("linux") or {}
    all_hooks = config.get("hooks") or {}
    while True:
        message = chan.recv()
        if message == "maps":
            spawn.write_id_maps(helper, linux)
            chan.send("ok")
        elif message.startswith("pid "):
            init_pid = int(message[4:])
        elif message == "hooks":
            state = _hook_state(container_id, spec.STATUS_CREATING, init_pid, bundle, config)
            try:
                for name in ("prestart", "createRuntime"):
                    if all_hooks.get(name):
                        hooks.run(name, all_hooks[name], state)
            except RuntimeFailure as err:
                chan.send(f"error {err}")
                raise
            chan.send("ok " + state.decode())
        elif message == "ready":
            return init_pid
        elif message.startswith("error "):
            raise RuntimeFailure(message[6:])
        else:
            raise RuntimeFailure("container init exited before it was ready")


def _host_root(linux: dict[str, Any], key: str) -> int:
    """The host id that container id 0 maps to (-1: no mapping, keep the owner)."""
    for m in linux.get(key) or []:
        if m["containerID"] <= 0 < m["containerID"] + m["size"]:
            return int(m["hostID"]) - int(m["containerID"])
    return -1


def _undo_create(state_dir: str, manager: CgroupManager | None, init_pid: int) -> None:
    import shutil

    if init_pid:
        try:
            os.kill(init_pid, 9)
        except ProcessLookupError:
            pass
    if manager is not None:
        _kill_cgroup(manager, 9)
        try:
            manager.destroy()
        except (OSError, RuntimeFailure):
            pass
    shutil.rmtree(state_dir, ignore_errors=True)


def _kill_cgroup(manager: CgroupManager, signum: int) -> None:
    try:
        pids = manager.pids()
    except OSError:
        return
    for pid in pids:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def _load_when(
    root: StateRoot, container_id: str, verb: str, allowed: tuple[str, ...]
) -> tuple[ContainerState, str]:
    """The container's state and status, if its status allows `verb` (the spec's rules)."""
    state = root.load(container_id)
    status = state.status()
    if status not in allowed:
        wanted = " or ".join(allowed)
        raise RuntimeFailure(
            f'cannot {verb} container "{container_id}": it is {status}, not {wanted}'
        )
    return state, status


def start(root: StateRoot, container_id: str) -> ContainerState:
    """Let a created container's init run the user's program."""
    state, _ = _load_when(root, container_id, "start", (spec.STATUS_CREATED,))
    fifo_path = os.path.join(state.state_dir, FIFO_NAME)
    fd = os.open(fifo_path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        _read_fifo(fd, state)
    finally:
        os.close(fd)
        os.unlink(fifo_path)
    poststart = (state.config.get("hooks") or {}).get("poststart")
    if poststart:
        from dockyard.runtime import hooks

        doc = _hook_state(container_id, spec.STATUS_RUNNING, state.pid, state.bundle, state.config)
        try:
            hooks.run("poststart", poststart, doc)
        except RuntimeFailure as err:
            # The spec: a failing poststart hook is logged; the container keeps running.
            import sys

            sys.stderr.write(f"dockyard-runtime: warning: {err}\n")
    return state


def _read_fifo(fd: int, state: ContainerState) -> None:
    import select

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.05)
        if ready and os.read(fd, 1):
            return
        if not state.init_alive():
            raise RuntimeFailure(f'container "{state.id}" init died before start')
    raise RuntimeFailure(f'container "{state.id}" did not start within 10s')


def state_of(root: StateRoot, container_id: str) -> dict[str, Any]:
    return root.load(container_id).document()


def kill(root: StateRoot, container_id: str, signum: int, all_processes: bool = False) -> None:
    alive = (spec.STATUS_CREATED, spec.STATUS_RUNNING, spec.STATUS_PAUSED)
    state, status = _load_when(root, container_id, "kill", alive)
    if all_processes:
        manager = _cgroup_manager(state.cgroup_path)
        _kill_cgroup(manager, signum)
        if status == spec.STATUS_PAUSED and signum == 9:
            manager.thaw()
        return
    try:
        os.kill(state.pid, signum)
    except ProcessLookupError:
        raise RuntimeFailure(f'container "{container_id}" is not running') from None


def delete(root: StateRoot, container_id: str, force: bool = False) -> None:
    """Remove a stopped (or created) container; --force kills a running one first."""
    import shutil

    try:
        state = root.load(container_id)
    except RuntimeFailure:
        if force:
            # A create that died before writing state.json leaves only its directory.
            shutil.rmtree(root.dir_for(container_id), ignore_errors=True)
            return
        raise
    status = state.status()
    if status in (spec.STATUS_RUNNING, spec.STATUS_PAUSED) and not force:
        raise RuntimeFailure(
            f'cannot delete container "{container_id}" that is {status}: '
            "stop it first or use --force"
        )
    manager = _cgroup_manager(state.cgroup_path)
    if status != spec.STATUS_STOPPED:
        _kill_cgroup(manager, 9)
        try:
            os.kill(state.pid, 9)
        except ProcessLookupError:
            pass
        if status == spec.STATUS_PAUSED:
            manager.thaw()
        _wait_gone(state, manager)
    poststop = (state.config.get("hooks") or {}).get("poststop")
    if poststop:
        from dockyard.runtime import hooks

        doc = _hook_state(container_id, spec.STATUS_STOPPED, 0, state.bundle, state.config)
        try:
            hooks.run("poststop", poststop, doc)
        except RuntimeFailure as err:
            import sys

            sys.stderr.write(f"dockyard-runtime: warning: {err}\n")
    try:
        manager.destroy()
    except RuntimeFailure:
        _kill_cgroup(manager, 9)
        _wait_gone(state, manager)
        manager.destroy()
    shutil.rmtree(state.state_dir, ignore_errors=True)


def _wait_gone(state: ContainerState, manager: CgroupManager, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            left = manager.pids()
        except OSError:
            left = []
        if not left and not state.init_alive():
            return
        # Reap our own children (run's init) so they don't linger as zombies.
        try:
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
        except ChildProcessError:
            pass
        time.sleep(0.005)


def pause(root: StateRoot, container_id: str) -> None:
    state, _ = _load_when(root, container_id, "pause", (spec.STATUS_RUNNING,))
    _cgroup_manager(state.cgroup_path).freeze()


def resume(root: StateRoot, container_id: str) -> None:
    state, _ = _load_when(root, container_id, "resume", (spec.STATUS_PAUSED,))
    _cgroup_manager(state.cgroup_path).thaw()


def processes(root: StateRoot, container_id: str) -> list[int]:
    state = root.load(container_id)
    return sorted(_cgroup_manager(state.cgroup_path).pids())


def list_all(root: StateRoot) -> list[ContainerState]:
    found = []
    for cid in root.ids():
        try:
            found.append(root.load(cid))
        except RuntimeFailure:
            continue
    return found


def exec_process(
    root: StateRoot,
    container_id: str,
    process: dict[str, Any],
    opts: Options,
    helper: spawn.Helper | None = None,
) -> int:
    """Start one more process in a created or running container; returns its host pid."""
    helper = helper or spawn.Helper()
    try:
        state, _ = _load_when(
            root, container_id, "exec in", (spec.STATUS_CREATED, spec.STATUS_RUNNING)
        )
        linux = state.config.get("linux") or {}
        payload = {
            "mode": "exec",
            "process": process,
            "linux": {"seccomp": linux.get("seccomp"), "namespaces": linux.get("namespaces") or []},
            "ns_paths": _target_namespaces(state.pid),
            "console_socket": _absolute(opts.console_socket),
            "preserve_fds": opts.preserve_fds,
            "debug": opts.debug,
        }
        manager = _cgroup_manager(state.cgroup_path)
    except BaseException:
        helper.abort()
        raise
    helper.send(payload, lambda: manager)
    chan = helper.chan
    try:
        pid = 0
        while True:
            message = chan.recv()
            if message.startswith("pid "):
                pid = int(message[4:])
            elif message.startswith("error "):
                raise RuntimeFailure(message[6:])
            elif not message:
                break
    finally:
        chan.close()
        helper.reap()
    if not pid:
        raise RuntimeFailure("exec: the process could not be started")
    if opts.pid_file:
        write_atomic(os.path.abspath(opts.pid_file), str(pid).encode())
    return pid


def _target_namespaces(pid: int) -> dict[str, str]:
    """Paths of the container's namespaces that differ from ours (mnt always)."""
    paths: dict[str, str] = {}
    for kind, name in _NS_FILES.items():
        theirs = f"/proc/{pid}/ns/{name}"
        try:
            ours = os.stat(f"/proc/self/ns/{name}").st_ino
            if kind != "mount" and os.stat(theirs).st_ino == ours:
                continue
        except FileNotFoundError:
            continue
        paths[kind] = theirs
    return paths


FORWARDED_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGWINCH")


def forward_signals(pid: int) -> None:
    """Pass the signals a user sends to a foreground command on to the container's process."""
    import _signal

    def forward(signum: int, _frame: object) -> None:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    for name in FORWARDED_SIGNALS:
        _signal.signal(getattr(_signal, name), forward)


def become_subreaper() -> None:
    """Adopt orphaned descendants: the container's process is a grandchild to wait for."""
    from dockyard.runtime import syscalls

    syscalls.current().prctl(syscalls.PR_SET_CHILD_SUBREAPER, 1)


def wait_exit(pid: int) -> int:
    """Wait for a child (or, as subreaper, an adopted descendant); shell-style status."""
    while True:
        try:
            _, status = os.waitpid(pid, 0)
        except InterruptedError:
            continue
        except ChildProcessError:
            return 255
        return os.waitstatus_to_exitcode(status) if status & 0x7F == 0 else 128 + (status & 0x7F)
