"""Container verbs: run, create, start, stop, kill, rm, ps, logs, wait."""

from __future__ import annotations

import os
import sys

from dockyard.cli.errors import UsageError
from dockyard.engine.spec import MIN_MEMORY, parse_size  # the other verbs take them from here

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    import argparse

    from dockyard.engine.containers import Container, Engine
    from dockyard.engine.mountspec import MountSpec
    from dockyard.engine.spec import RunOptions

DEFAULT_ROOT = "/var/lib/dockyard"


def engine(args: argparse.Namespace) -> Engine:
    from dockyard.engine.containers import Engine

    return Engine(args.root or DEFAULT_ROOT)


def _create_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name")
    p.add_argument("-e", "--env", action="append", default=[])
    p.add_argument("--env-file", action="append", default=[])
    p.add_argument("-w", "--workdir")
    p.add_argument("-u", "--user")
    p.add_argument("--entrypoint")
    p.add_argument("-h", "--hostname")
    p.add_argument("-l", "--label", action="append", default=[])
    p.add_argument("-t", "--tty", action="store_true")
    p.add_argument("-i", "--interactive", action="store_true")
    p.add_argument("--read-only", action="store_true")
    p.add_argument("--restart", default="no")
    p.add_argument("--privileged", action="store_true")
    p.add_argument("--cap-add", action="append", default=[])
    p.add_argument("--cap-drop", action="append", default=[])
    p.add_argument("--security-opt", action="append", default=[])
    p.add_argument("-m", "--memory")
    p.add_argument("--cpus")
    p.add_argument("--pids-limit", type=int)
    p.add_argument("--rm", action="store_true")
    p.add_argument("-v", "--volume", action="append", default=[])
    p.add_argument("--mount", action="append", default=[])
    p.add_argument("--tmpfs", action="append", default=[])
    from dockyard.cli import autopull, netflags, runflags

    runflags.add_flags(p)
    netflags.add_flags(p)
    autopull.add_flags(p)
    p.add_argument("image")
    p.add_argument("command", nargs="...")


def add_arguments(verb: str, p: argparse.ArgumentParser) -> None:
    # -h is --hostname for run/create, as in Docker; help stays on --help.
    if verb in ("run", "create"):
        if verb == "run":
            p.add_argument("-d", "--detach", action="store_true")
            p.add_argument("--detach-keys")
        _create_flags(p)
    elif verb in ("start", "wait"):
        if verb == "start":
            p.add_argument("-a", "--attach", action="store_true")
            p.add_argument("-i", "--interactive", action="store_true")
            p.add_argument("--detach-keys")
        p.add_argument("containers", nargs="+")
    elif verb == "stop":
        p.add_argument("-t", "--time", type=float)
        p.add_argument("containers", nargs="+")
    elif verb == "kill":
        p.add_argument("-s", "--signal", default="KILL")
        p.add_argument("containers", nargs="+")
    elif verb == "rm":
        p.add_argument("-f", "--force", action="store_true")
        p.add_argument("-v", "--volumes", action="store_true")
        p.add_argument("containers", nargs="+")
    elif verb == "ps":
        from dockyard.cli.listing import add_ps_arguments

        add_ps_arguments(p)
    elif verb == "logs":
        p.add_argument("-f", "--follow", action="store_true")
        p.add_argument("-t", "--timestamps", action="store_true")
        p.add_argument("-n", "--tail")
        p.add_argument("--since")
        p.add_argument("--until")
        p.add_argument("container")


def run_options(args: argparse.Namespace) -> RunOptions:
    import shlex

    from dockyard.engine.spec import RunOptions

    env = list(args.env)
    for path in args.env_file:
        with open(path) as f:
            env += [line.strip() for line in f if line.strip() and not line.startswith("#")]
    env = [e if "=" in e else f"{e}={os.environ.get(e, '')}" for e in env]
    if args.user is not None and not args.user.partition(":")[0]:
        raise UsageError(f'invalid --user "{args.user}": use USER[:GROUP], names or numbers')
    resources: dict[str, object] = {}
    if args.memory:
        limit = parse_size(args.memory)
        if limit < MIN_MEMORY:
            raise UsageError("Minimum memory limit allowed is 6MB")
        resources["memory"] = {"limit": limit}
    if args.cpus:
        try:
            cpus = float(args.cpus)
        except ValueError:
            raise UsageError(f'--cpus "{args.cpus}": give a number like 0.5') from None
        resources["cpu"] = {"quota": int(cpus * 100000), "period": 100000}
    if args.pids_limit:
        resources["pids"] = {"limit": args.pids_limit}
    labels = dict(label.partition("=")[::2] for label in args.label)
    nnp = False
    seccomp: dict[str, object] | str = "default"
    for opt in args.security_opt:
        key, _, value = opt.replace("=", ":", 1).partition(":")
        if key == "no-new-privileges":
            nnp = value in ("", "true")
        elif key == "seccomp":
            seccomp = "unconfined" if value == "unconfined" else _seccomp_file(value)
        elif key in ("apparmor", "label"):
            continue  # accepted as Docker does on hosts without AppArmor/SELinux
        else:
            raise UsageError(
                f'invalid --security-opt "{opt}": use no-new-privileges, seccomp=unconfined '
                "or seccomp=PROFILE.json"
            )
    opts = RunOptions(
        command=list(args.command) or None,
        entrypoint=shlex.split(args.entrypoint) if args.entrypoint is not None else None,
        env=env,
        workdir=args.workdir,
        user_spec=args.user,
        hostname=args.hostname,
        tty=args.tty,
        read_only=args.read_only,
        privileged=args.privileged,
        cap_add=args.cap_add,
        cap_drop=args.cap_drop,
        no_new_privileges=nnp,
        network=args.network,
        resources=resources,
        labels=labels,
        mount_specs=_mount_specs(args),
        seccomp=seccomp,
    )
    from dockyard.cli import netflags

    netflags.apply(args, opts)
    return opts


def _mount_specs(args: argparse.Namespace) -> list[MountSpec]:
    from dockyard.engine import mountspec

    return [
        *(mountspec.parse_volume(v) for v in args.volume),
        *(mountspec.parse_mount(m) for m in args.mount),
        *(mountspec.parse_tmpfs(t) for t in args.tmpfs),
    ]


def _seccomp_file(path: str) -> dict[str, object]:
    """A profile in Docker's format (or OCI's); rules are chosen for the container's caps
    when the container is built, so keep the raw document here and mark it."""
    import json

    try:
        with open(path) as f:
            doc = json.load(f)
    except OSError as err:
        raise UsageError(f"opening seccomp profile ({path}) failed: {err.strerror}") from None
    except ValueError as err:
        raise UsageError(f"decoding seccomp profile ({path}) failed: {err}") from None
    if not isinstance(doc, dict):
        raise UsageError(f"seccomp profile ({path}) must be a JSON object")
    return {"docker_profile": doc}


def restart_policy(text: str) -> dict[str, object]:
    name, _, count = text.partition(":")
    if name not in ("no", "always", "on-failure", "unless-stopped") or (
        count and (name != "on-failure" or not count.isdigit())
    ):
        raise UsageError(
            f'invalid restart policy "{text}": use no, always, unless-stopped or on-failure[:N]'
        )
    return {"name": name, "maximum_retry_count": int(count or 0)}


def run(verb: str, args: argparse.Namespace) -> int:
    return int(globals()[f"_{verb}"](args))


def _create_container(args: argparse.Namespace, eng: Engine | None = None) -> Container:
    if args.rm and args.restart != "no":
        raise UsageError("Conflicting options: --restart and --rm")
    from dockyard.cli import autopull, runflags

    eng = eng or engine(args)
    autopull.ensure_image(args, eng)
    return eng.create(
        args.image,
        runflags.extend(run_options(args), args),
        name=args.name,
        restart_policy=restart_policy(args.restart),
        auto_remove=args.rm,
        interactive=args.interactive,
    )


def _create(args: argparse.Namespace) -> int:
    print(_create_container(args).id)
    return 0


def _run(args: argparse.Namespace) -> int:
    """Docker's exit codes for `run` itself: 125 when run fails, 126 when the command
    can't be invoked, 127 when it isn't there; otherwise the container's own."""
    from dockyard.cli.errors import describe
    from dockyard.runtime.errors import RuntimeFailure

    try:
        return _run_container(args)
    except Exception as err:
        message = describe(err)
        if message is None:
            raise
        sys.stderr.write(f"Error: {message}\n")
        low = message.lower()
        if isinstance(err, RuntimeFailure) and (
            "executable file not found" in low or "no such file or directory" in low
        ):
            return 127
        if isinstance(err, RuntimeFailure) and "permission denied" in low:
            return 126
        return 125


def _run_container(args: argparse.Namespace) -> int:
    from dockyard.cli.attach import check_input_tty
    from dockyard.engine.monitor_start import MonitorStarter

    check_input_tty(args)

    from dockyard.cli import main

    # Booted while this process opens the store and creates (main starts it first).
    early, main.early_monitor = main.early_monitor or MonitorStarter(), None
    eng = engine(args)
    eng.warm_monitor(early)
    container = _create_container(args, eng)
    no_log = (container.config.get("LogConfig") or {}).get("Type") == "none"
    attached = not args.detach and (args.interactive or args.tty or no_log)
    if args.rm and not args.detach:  # its monitor's remover waits: the exit code is ours
        from dockyard.engine import autoremove

        autoremove.hold(container)
    try:
        eng.start(container.id, attach=attached)
    except BaseException:
        eng.remove(container.id, force=True)
        raise
    if args.detach:
        print(container.id)
        return 0
    if attached:  # a terminal and/or stdin (or no log to read): through the attach socket
        from dockyard.cli.attach import run_attached

        return run_attached(eng, container, args)
    streams = {"stdout": container.config.get("AttachStdout", True)}
    streams["stderr"] = container.config.get("AttachStderr", True)
    if any(streams.values()):  # (-a stdin alone shows nothing)
        # A short poll: the output shows up promptly and `run` returns as soon as it exits.
        for stream, _, text in eng.logs(container.id, follow=True, poll_interval=0.005, **streams):
            out = sys.stdout if stream == "stdout" else sys.stderr
            out.write(text)
            out.flush()
    code = eng.wait(container.id)
    if args.rm:
        remove_exited(eng, container)
    return code


def remove_exited(eng: Engine, container: Container) -> None:
    """`run --rm` once the container exited: remove it, unless its remover was first."""
    from dockyard.engine.containers import ContainerNotFound

    try:
        eng.remove(container.id, force=True, volumes=True)
    except ContainerNotFound:
        pass


def _each(args: argparse.Namespace, action: str) -> int:
    """Apply an action to every named container, as Docker's multi-name verbs do."""
    from dockyard.cli.errors import for_each

    eng = engine(args)

    def one(name: str) -> None:
        if action == "start":
            eng.start(name)
        elif action == "stop":
            container = eng.get(name)
            running = container.status() in ("running", "restarting", "paused")
            eng.stop(container.id, timeout=args.time)
            if running and container.config.get("AutoRemove"):
                from dockyard.engine import autoremove

                autoremove.wait_removed(eng, container)  # gone when stop returns
        elif action == "kill":
            from dockyard.runtime.cli import parse_signal

            eng.kill(name, parse_signal(args.signal))
        elif action == "rm":
            eng.remove(name, force=args.force, volumes=args.volumes)
        elif action == "wait":
            print(eng.wait(name))
            return
        print(name)

    return for_each(args.containers, one)


def _start(args: argparse.Namespace) -> int:
    if args.attach or args.interactive:
        from dockyard.cli.attach import start_attached

        return start_attached(engine(args), args)
    return _each(args, "start")


def _stop(args: argparse.Namespace) -> int:
    return _each(args, "stop")


def _kill(args: argparse.Namespace) -> int:
    return _each(args, "kill")


def _rm(args: argparse.Namespace) -> int:
    return _each(args, "rm")


def _wait(args: argparse.Namespace) -> int:
    return _each(args, "wait")


def _ago(timestamp: str) -> str:
    from datetime import UTC, datetime

    try:
        then = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except ValueError:
        return timestamp
    seconds = int((datetime.now(UTC) - then).total_seconds())
    for size, unit in ((86400, "day"), (3600, "hour"), (60, "minute")):
        if seconds >= size:
            n = seconds // size
            return f"{n} {unit}{'s' if n != 1 else ''}"
    return "Less than a second" if seconds < 1 else f"{seconds} second{'s' if seconds != 1 else ''}"


def status_line(container: Container) -> str:
    status = container.status()
    if status in ("running", "paused"):
        up = f"Up {_ago(container.monitor_state.get('started_at') or container.created)}"
        if status == "paused":
            return up + " (Paused)"
        from dockyard.engine.health import read_state, status_suffix

        return up + status_suffix(read_state(container.dir))
    if status == "exited":
        finished = container.exit_info.get("finished_at") or container.created
        return f"Exited ({container.exit_code}) {_ago(finished)} ago"
    return status.capitalize()


def _ps(args: argparse.Namespace) -> int:
    from dockyard.cli import listing

    return listing.ps(engine(args), args)


def _logs(args: argparse.Namespace) -> int:
    from dockyard.cli.filters import parse_timestamp

    try:
        tail = None if args.tail in (None, "all") else int(args.tail)
    except ValueError:
        raise UsageError(
            f'invalid value for --tail: "{args.tail}": give a number of lines or "all"'
        ) from None
    since = parse_timestamp(args.since, "--since") if args.since else None
    until = parse_timestamp(args.until, "--until") if args.until else None
    for stream, _, text in engine(args).logs(
        args.container,
        follow=args.follow,
        tail=tail,
        timestamps=args.timestamps,
        since=since,
        until=until,
    ):
        out = sys.stdout if stream == "stdout" else sys.stderr
        out.write(text)
        out.flush()
    return 0
