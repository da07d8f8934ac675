"""`exec`: one more process in a running container, through the runtime library.

The process is the container's own (config.json's `process`: env, user,
capabilities, rlimits, no_new_privileges, cwd) with the exec's overrides, as
Docker builds it. It joins the container's namespaces and cgroup
(`runtime.container.exec_process`). A foreground exec makes the caller a
child subreaper, so the process (a grandchild: the runtime's helper forks it)
is reaped by the caller and its exit code can be passed through.
"""

from __future__ import annotations

import json
import os

from dockyard.engine.containers import EngineError

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    from typing import Any

    from dockyard.engine.containers import Engine
    from dockyard.runtime.spawn import Helper


class ExecFailed(EngineError):
    """The process could not be started; `exit_code` is Docker's (126 or 127)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class ExecOptions:
    """What `docker exec` can say about the process."""

    def __init__(
        self,
        command: list[str],
        env: list[str] | None = None,
        user: str | None = None,
        workdir: str | None = None,
        privileged: bool = False,
        tty: bool = False,
        console_size: tuple[int, int] | None = None,
    ) -> None:
        self.command = list(command)
        self.env = list(env or [])
        self.user = user
        self.workdir = workdir
        self.privileged = privileged
        self.tty = tty
        self.console_size = console_size  # (rows, columns) of the tty


def parse_user(text: str) -> dict[str, Any]:
    uid, _, gid = text.partition(":")
    if not uid.isdigit() or (gid and not gid.isdigit()):
        raise EngineError(
            f'--user "{text}": give UID[:GID] as numbers (names come with a later release)'
        )
    return {"uid": int(uid), "gid": int(gid or 0)}


def build_process(base: dict[str, Any], opts: ExecOptions) -> dict[str, Any]:
    """The container's process with the exec's command and overrides."""
    if not opts.command:
        raise EngineError("exec needs a command: dockyard exec CONTAINER COMMAND [ARG...]")
    process = dict(base)
    process["args"] = list(opts.command)
    process["terminal"] = opts.tty
    process.pop("consoleSize", None)
    if opts.tty and opts.console_size:
        process["consoleSize"] = {"height": opts.console_size[0], "width": opts.console_size[1]}
    env = list(process.get("env") or [])
    index = {e.split("=", 1)[0]: i for i, e in enumerate(env)}
    for entry in opts.env:
        key = entry.split("=", 1)[0]
        if "=" not in entry:
            entry = f"{key}={os.environ.get(key, '')}"
        if key in index:
            env[index[key]] = entry
        else:
            index[key] = len(env)
            env.append(entry)
    if opts.tty and "TERM" not in index:  # as Docker's daemon environment has it
        env.append("TERM=xterm")
    process["env"] = env
    if opts.workdir:
        if not opts.workdir.startswith("/"):
            raise EngineError(f'the working directory "{opts.workdir}" is invalid: not absolute')
        process["cwd"] = opts.workdir
    if opts.user:
        process["user"] = parse_user(opts.user)
    if opts.privileged:
        every = _own_capabilities()
        process["capabilities"] = {k: list(every) for k in ("bounding", "effective", "permitted")}
    return process


def _own_capabilities() -> list[str]:
    """Every capability this process may pass on (its bounding set), as Docker's daemon does."""
    from dockyard.runtime import capabilities

    try:
        with open("/proc/self/status") as f:
            line = next(x for x in f if x.startswith("CapBnd:"))
        return capabilities.to_names(int(line.split()[1], 16))
    except (OSError, StopIteration, ValueError):
        return list(capabilities.CAPABILITIES)


def start(
    engine: Engine,
    name: str,
    opts: ExecOptions,
    foreground: bool,
    helper: Helper | None = None,
    console_socket: str | None = None,
) -> int:
    """Start the process; its host pid. With `foreground` the caller becomes a
    child subreaper first, so `wait(pid)` gets the exit code."""
    from dockyard.runtime import container as runtime
    from dockyard.runtime.errors import RuntimeFailure
    from dockyard.runtime.state import StateRoot

    try:
        target = engine.get(name)
        status = target.status()
        if status == "paused":
            raise EngineError(f"Container {target.id} is paused, unpause the container before exec")
        if status != "running":
            raise EngineError(f"container {target.id} is not running")
        with open(os.path.join(target.dir, "config.json"), "rb") as f:
            config = json.load(f)
        process = build_process(config.get("process") or {}, opts)
    except BaseException:
        if helper is not None:
            helper.abort()
        raise
    if foreground:
        from dockyard.runtime import syscalls

        syscalls.current().prctl(syscalls.PR_SET_CHILD_SUBREAPER, 1)
    root = StateRoot(engine.runtime_root)
    try:
        return runtime.exec_process(
            root, target.id, process, runtime.Options(console_socket=console_socket), helper
        )
    except RuntimeFailure as err:
        raise _failure(str(err)) from None


def _failure(message: str) -> EngineError:
    if "is stopped, not" in message or "it is stopped" in message:
        return EngineError("container is not running")
    text = f"OCI runtime exec failed: exec failed: unable to start container process: {message}"
    if message.startswith("exec: ") and (
        "not found" in message or "no such file or directory" in message
    ):
        return ExecFailed(text + ": unknown", 127)
    return ExecFailed(text + ": unknown", 126)


def wait(pid: int) -> int:
    """The exit code of a foreground exec (shell style: 128+N for signal N)."""
    from dockyard.runtime.container import wait_exit

    return wait_exit(pid)
