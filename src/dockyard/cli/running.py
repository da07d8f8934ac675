"""Verbs on running containers: exec, top, pause, unpause, stats."""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    import argparse

    from dockyard.runtime.spawn import Helper


def add_arguments(verb: str, p: argparse.ArgumentParser) -> None:
    import argparse

    if verb == "exec":
        p.add_argument("-d", "--detach", action="store_true")
        p.add_argument("-i", "--interactive", action="store_true")
        p.add_argument("-t", "--tty", action="store_true")
        p.add_argument("--detach-keys")
        p.add_argument("-e", "--env", action="append", default=[])
        p.add_argument("--env-file", action="append", default=[])
        p.add_argument("-u", "--user")
        p.add_argument("-w", "--workdir")
        p.add_argument("--privileged", action="store_true")
        p.add_argument("container")
        # REMAINDER: everything after the container is the command (`exec c sh -c ...`).
        p.add_argument("command", nargs=argparse.REMAINDER)
    elif verb == "top":
        p.add_argument("container")
        p.add_argument("ps_args", nargs=argparse.REMAINDER, metavar="ps OPTIONS")
    elif verb in ("pause", "unpause"):
        p.add_argument("containers", nargs="+")
    elif verb == "stats":
        p.add_argument("-a", "--all", action="store_true")
        p.add_argument("--no-stream", action="store_true")
        p.add_argument("--no-trunc", action="store_true")
        p.add_argument("--format")
        p.add_argument("containers", nargs="*")


def run(verb: str, args: argparse.Namespace) -> int:
    if verb == "exec":
        return _exec(args)
    if verb == "top":
        return _top(args)
    if verb == "stats":
        return _stats(args)
    return _pause(args, verb)


def _error(message: str) -> int:
    sys.stderr.write(f"Error response from daemon: {message}\n")
    return 1


def _exec(args: argparse.Namespace) -> int:
    from dockyard.cli.containers import engine
    from dockyard.cli.errors import UsageError, describe
    from dockyard.engine import exec as execs
    from dockyard.engine.containers import EngineError

    if not args.command:
        raise UsageError('"dockyard exec" requires at least 2 arguments: CONTAINER COMMAND')
    from dockyard.cli.attach import check_input_tty

    check_input_tty(args)
    env = list(args.env)
    for path in args.env_file:
        with open(path) as f:
            env += [line.strip() for line in f if line.strip() and not line.startswith("#")]
    opts = execs.ExecOptions(
        args.command,
        env=env,
        user=args.user,
        workdir=args.workdir,
        privileged=args.privileged,
        tty=args.tty and not args.detach,  # a detached exec's terminal would have no reader
    )
    helper = _helper(args.detach, keep_stdin=(args.interactive or args.tty) and not args.detach)
    try:
        eng = engine(args)
    except BaseException:
        helper.abort()
        raise
    try:
        if args.tty and not args.detach:  # a pty of our own, proxied like attach
            from dockyard.cli.attach import exec_attached

            return exec_attached(
                eng, args.container, opts, helper, args.interactive, args.detach_keys
            )
        pid = execs.start(eng, args.container, opts, not args.detach, helper)
    except execs.ExecFailed as err:
        _error(str(err))
        return err.exit_code
    except EngineError as err:
        return _error(describe(err) or str(err))
    if args.detach:
        return 0
    from dockyard.runtime.container import forward_signals

    forward_signals(pid)
    return execs.wait(pid)


def _helper(detach: bool, keep_stdin: bool = False) -> Helper:
    """The runtime's init helper, started now so it boots while we work. It (and
    so the process) inherits our stdio: stdin is /dev/null (no -i); a detached
    exec writes nowhere, as Docker's does, and holds none of our pipes open."""
    from dockyard.runtime.spawn import Helper

    null = os.open(os.devnull, os.O_RDWR)
    saved = [os.dup(fd) for fd in (1, 2)] if detach else []
    try:
        if not keep_stdin:  # exec -i: the process reads our stdin; -t: ours stays for the pty
            os.dup2(null, 0)
        if detach:
            os.dup2(null, 1)
            os.dup2(null, 2)
        return Helper()
    finally:
        for fd, copy in zip((1, 2), saved, strict=False):
            os.dup2(copy, fd)
            os.close(copy)
        os.close(null)


def _table(rows: list[list[str]], gap: str = "   ") -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        cells = [cell.ljust(w) for cell, w in zip(r, widths, strict=False)]
        print(gap.join(cells).rstrip())


def _top(args: argparse.Namespace) -> int:
    from dockyard.cli.containers import engine
    from dockyard.engine import control

    titles, rows = control.top(engine(args), args.container, list(args.ps_args))
    # The last column (CMD) may hold spaces: it takes the rest of each line.
    table = [titles] + [r + [""] * (len(titles) - len(r)) for r in rows]
    _table(table)
    return 0


def _pause(args: argparse.Namespace, verb: str) -> int:
    from dockyard.cli.containers import engine
    from dockyard.cli.errors import describe
    from dockyard.engine import control

    eng = engine(args)
    failed = False
    for name in args.containers:
        try:
            (control.pause if verb == "pause" else control.unpause)(eng, name)
            print(name)
        except Exception as err:
            message = describe(err)
            if message is None:
                raise
            _error(message)
            failed = True
    return 1 if failed else 0


def _stats(args: argparse.Namespace) -> int:
    from dockyard.cli.containers import engine
    from dockyard.engine import stats

    if not args.no_stream:
        from dockyard.cli.errors import UsageError

        raise UsageError("stats streams only with --no-stream for now: add --no-stream")
    eng = engine(args)
    names = list(args.containers)
    if not names and args.all:
        names = [c.id for c in eng.list_containers(all=True)]
    records = stats.collect(eng, names or None)
    shown = [stats.formatted(r) for r in records]
    if args.format:
        from dockyard.cli.gotemplate import TemplateError, render

        template = args.format.removeprefix("table ").strip() if args.format else ""
        try:
            for rec, doc in zip(records, shown, strict=True):
                if args.no_trunc:
                    doc = {**doc, "ID": rec["id"], "Container": rec["id"]}
                print(render(template, doc))
        except TemplateError as err:
            sys.stderr.write(f"{err}\n")
            return 1
        return 0
    head = "CONTAINER ID", "NAME", "CPU %", "MEM USAGE / LIMIT", "MEM %", "NET I/O", "BLOCK I/O"
    rows = [[*head, "PIDS"]]
    for rec, doc in zip(records, shown, strict=True):
        rows.append(
            [
                rec["id"] if args.no_trunc else doc["ID"],
                doc["Name"],
                doc["CPUPerc"],
                doc["MemUsage"],
                doc["MemPerc"],
                doc["NetIO"],
                doc["BlockIO"],
                doc["PIDs"],
            ]
        )
    _table(rows)
    return 0
