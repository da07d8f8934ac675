"""`dockyard-runtime`: runc's command line over dockyard.runtime.container.

Thin by design: parse, call the library, print. One small function per verb.
Errors are one line on stderr (and in --log, as text or JSON), exit status 1.
"""

from __future__ import annotations

import os
import sys

from dockyard.runtime.errors import RuntimeFailure

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable
    from typing import Any

    from dockyard.runtime.container import Options
    from dockyard.runtime.spawn import Helper
    from dockyard.runtime.state import StateRoot


def _global_parser() -> argparse.ArgumentParser:
    import argparse

    verbs = "\n".join(f"  {name:<10} {help_text}" for name, (help_text, _, _) in _VERBS.items())
    p = argparse.ArgumentParser(
        prog="dockyard-runtime",
        description="An OCI runtime (runc-compatible).",
        epilog=f"commands:\n{verbs}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--root", default=None, help="state directory (default /run/dockyard-runtime)")
    p.add_argument("--log", default=None, help="also write errors to this file")
    p.add_argument("--log-format", choices=("text", "json"), default="text")
    p.add_argument("--debug", action="store_true")
    p.add_argument("--systemd-cgroup", action="store_true", help="accepted; cgroupfs is used")
    p.add_argument("--rootless", default=None, help="accepted for runc compatibility")
    p.add_argument("--criu", default=None, help=argparse.SUPPRESS)
    p.add_argument("-v", "--version", action="store_true")
    p.add_argument("command", nargs="?", choices=list(_VERBS), metavar="COMMAND")
    p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return p


def _parse(argv: list[str]) -> argparse.Namespace:
    """Global flags, then only the chosen verb's parser is built (start-up time)."""
    import argparse

    args = _global_parser().parse_args(argv)
    if args.command:
        help_text, add_arguments, handler = _VERBS[args.command]
        verb = argparse.ArgumentParser(
            prog=f"dockyard-runtime {args.command}", description=help_text
        )
        add_arguments(verb)
        verb.parse_args(args.rest, namespace=args)
        args.handler = handler
    return args


def _id_only(p: argparse.ArgumentParser) -> None:
    p.add_argument("id")


def _create_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-b", "--bundle", default=".")
    p.add_argument("--pid-file")
    p.add_argument("--console-socket")
    p.add_argument("--no-pivot", action="store_true")
    p.add_argument("--no-new-keyring", action="store_true")
    p.add_argument("--preserve-fds", type=int, default=0)
    p.add_argument("id")


def _run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-d", "--detach", action="store_true")
    p.add_argument("--keep", action="store_true", help="don't delete the container after it exits")
    _create_args(p)


def _kill_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-a", "--all", action="store_true")
    p.add_argument("id")
    p.add_argument("signal", nargs="?", default="SIGTERM")


def _delete_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--force", action="store_true")
    p.add_argument("id")


def _exec_args(p: argparse.ArgumentParser) -> None:
    import argparse

    p.add_argument("-p", "--process")
    p.add_argument("-t", "--tty", action="store_true")
    p.add_argument("-d", "--detach", action="store_true")
    p.add_argument("--pid-file")
    p.add_argument("--console-socket")
    p.add_argument("-e", "--env", action="append", default=[])
    p.add_argument("--cwd")
    p.add_argument("-u", "--user")
    p.add_argument("-g", "--additional-gids", action="append", default=[])
    p.add_argument("-c", "--cap", action="append", default=[])
    p.add_argument("--no-new-privs", action="store_true")
    p.add_argument("--preserve-fds", type=int, default=0)
    p.add_argument("--process-label", help="accepted; SELinux is not used")
    p.add_argument("--apparmor", help="accepted; AppArmor is not used")
    p.add_argument("id")
    # REMAINDER: like runc, everything after the id is the command (`exec ID sh -c ...`).
    p.add_argument("args", nargs=argparse.REMAINDER)


def _ps_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--format", choices=("table", "json"), default="table")
    p.add_argument("id")
    p.add_argument("ps_args", nargs="*")


def _list_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-q", "--quiet", action="store_true")
    p.add_argument("-f", "--format", choices=("table", "json"), default="table")


def _no_args(p: argparse.ArgumentParser) -> None:
    pass


def _spec_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-b", "--bundle", default=".")
    p.add_argument("--rootless", action="store_true")


# Verbs that start a container process: their init helper is started before
# anything else, so its interpreter boots while this one imports and parses.
_STARTS_PROCESS = frozenset(("create", "run", "exec"))


def main(argv: list[str] | None = None) -> int:
    as_command = argv is None
    argv = sys.argv[1:] if argv is None else argv
    helper = None
    if _STARTS_PROCESS.intersection(argv) and not {"-h", "--help"}.intersection(argv):
        from dockyard.runtime.spawn import Helper

        helper = Helper()
    try:
        code = _main(argv, helper)
    finally:
        if helper is not None and not helper.used:
            helper.abort()
    if as_command:
        # Run as the command: nothing is left to clean up but the interpreter,
        # whose teardown costs milliseconds on every call.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _main(argv: list[str], helper: Helper | None) -> int:
    args = _parse(argv)
    args.helper = helper
    if args.version:
        from dockyard import __version__
        from dockyard.oci.runtime_spec import OCI_VERSION

        print(f"dockyard-runtime version {__version__}\nspec: {OCI_VERSION}")
        return 0
    if not getattr(args, "handler", None):
        _global_parser().print_help()
        return 2
    try:
        return int(args.handler(args))
    except RuntimeFailure as err:
        _report(args, str(err))
    except OSError as err:
        where = f"{err.filename}: " if err.filename else ""
        _report(args, f"{where}{err.strerror or err}")
    except KeyboardInterrupt:
        return 130
    return 1


def _report(args: argparse.Namespace, message: str) -> None:
    sys.stderr.write(f"dockyard-runtime: {message}\n")
    if args.log:
        import json
        import time

        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        if args.log_format == "json":
            line = json.dumps({"level": "error", "msg": message, "time": now})
        else:
            line = f'time="{now}" level=error msg="{message}"'
        try:
            with open(args.log, "a") as f:
                f.write(line + "\n")
        except OSError:
            pass


def _root(args: argparse.Namespace) -> StateRoot:
    from dockyard.runtime.state import StateRoot

    return StateRoot(args.root)


def _options(args: argparse.Namespace) -> Options:
    from dockyard.runtime.container import Options

    return Options(
        pid_file=args.pid_file,
        console_socket=args.console_socket,
        no_pivot=getattr(args, "no_pivot", False),
        preserve_fds=args.preserve_fds,
        systemd_cgroup=args.systemd_cgroup,
        debug=args.debug,
    )


def _create(args: argparse.Namespace) -> int:
    from dockyard.runtime import container

    container.create(_root(args), args.id, args.bundle, _options(args), args.helper)
    return 0


def _start(args: argparse.Namespace) -> int:
    from dockyard.runtime import container

    container.start(_root(args), args.id)
    return 0


def _run(args: argparse.Namespace) -> int:
    from dockyard.runtime import container

    root = _root(args)
    if not args.detach:
        container.become_subreaper()
    state = container.create(root, args.id, args.bundle, _options(args), args.helper)
    if args.detach:
        container.start(root, args.id)
        return 0
    container.forward_signals(state.pid)
    try:
        container.start(root, args.id)
        code = container.wait_exit(state.pid)
    except BaseException:
        container.delete(root, args.id, force=True)
        raise
    if not args.keep:
        container.delete(root, args.id, force=True)
    return code


def _state(args: argparse.Namespace) -> int:
    import json

    from dockyard.runtime import container

    print(json.dumps(container.state_of(_root(args), args.id), indent=2))
    return 0


def parse_signal(value: str) -> int:
    import _signal

    if value.isdigit():
        number = int(value)
        if 0 < number < 65:
            return number
    else:
        name = value.upper()
        name = name if name.startswith("SIG") else "SIG" + name
        if name.startswith("SIGRTMIN+") or name.startswith("SIGRTMAX-"):
            base, _, offset = name.partition("+" if "+" in name else "-")
            sign = 1 if "+" in name else -1
            return int(getattr(_signal, base[: len("SIGRTMIN")])) + sign * int(offset)
        found = getattr(_signal, name, None)
        if isinstance(found, int):
            return found
    raise RuntimeFailure(f'unknown signal "{value}": use a name like TERM or KILL, or a number')


def _kill(args: argparse.Namespace) -> int:
    from dockyard.runtime import container

    container.kill(_root(args), args.id, parse_signal(args.signal), args.all)
    return 0


def _delete(args: argparse.Namespace) -> int:
    from dockyard.runtime import container

    container.delete(_root(args), args.id, args.force)
    return 0


def _exec_process(args: argparse.Namespace, root: StateRoot) -> dict[str, Any]:
    """The process to exec: --process FILE, or the container's own process with ARGS."""
    import json

    from dockyard.runtime import config

    if args.process:
        try:
            with open(args.process, "rb") as f:
                process = json.load(f)
        except OSError as err:
            raise RuntimeFailure(f"--process {args.process}: {err.strerror}") from None
        except ValueError as err:
            raise RuntimeFailure(f"--process {args.process} is not valid JSON: {err}") from None
        config.validate_process(process)
        return dict(process)
    if not args.args:
        raise RuntimeFailure("exec needs a command: dockyard-runtime exec ID COMMAND [ARG...]")
    state = root.load(args.id)
    process = dict(state.config.get("process") or {})
    process["args"] = list(args.args)
    process["terminal"] = args.tty
    process.pop("consoleSize", None)
    env = list(process.get("env") or [])
    keys = {e.split("=", 1)[0]: i for i, e in enumerate(env)}
    for entry in args.env:
        key = entry.split("=", 1)[0]
        if key in keys:
            env[keys[key]] = entry
        else:
            env.append(entry)
    process["env"] = env
    if args.cwd:
        process["cwd"] = args.cwd
    if args.user:
        uid, _, gid = args.user.partition(":")
        try:
            process["user"] = {"uid": int(uid), "gid": int(gid or 0)}
        except ValueError:
            raise RuntimeFailure(f'--user "{args.user}": use UID[:GID] with numbers') from None
    if args.additional_gids:
        process.setdefault("user", {})["additionalGids"] = [int(g) for g in args.additional_gids]
    if args.cap:
        caps = {k: list(v) for k, v in (process.get("capabilities") or {}).items()}
        for name in args.cap:
            for key in ("bounding", "effective", "permitted", "ambient"):
                caps.setdefault(key, [])
                if name not in caps[key]:
                    caps[key].append(name)
        process["capabilities"] = caps
    if args.no_new_privs:
        process["noNewPrivileges"] = True
    config.validate_process(process)
    return process


def _exec(args: argparse.Namespace) -> int:
    from dockyard.runtime import container

    root = _root(args)
    process = _exec_process(args, root)
    if process.get("terminal") and not args.console_socket:
        raise RuntimeFailure("exec with a terminal needs --console-socket")
    if not args.detach:
        container.become_subreaper()
    pid = container.exec_process(root, args.id, process, _options(args), args.helper)
    if args.detach:
        return 0
    container.forward_signals(pid)
    return container.wait_exit(pid)


def _ps(args: argparse.Namespace) -> int:
    import json
    import subprocess

    from dockyard.runtime import container

    pids = container.processes(_root(args), args.id)
    if args.format == "json":
        print(json.dumps(pids))
        return 0
    out = subprocess.run(
        ["ps", *(args.ps_args or ["-ef"])], capture_output=True, text=True, check=False
    )
    lines = out.stdout.splitlines()
    if not lines:
        raise RuntimeFailure(f"ps failed: {out.stderr.strip()}")
    header = lines[0].split()
    if "PID" not in header:
        raise RuntimeFailure("ps output has no PID column: pass options that print one")
    column = header.index("PID")
    wanted = set(pids)
    print(lines[0])
    for line in lines[1:]:
        fields = line.split()
        if len(fields) > column and fields[column].isdigit() and int(fields[column]) in wanted:
            print(line)
    return 0


def _list(args: argparse.Namespace) -> int:
    import json

    from dockyard.runtime import container

    states = container.list_all(_root(args))
    if args.quiet:
        for s in states:
            print(s.id)
        return 0
    rows = []
    for s in states:
        status = s.status()
        rows.append(
            {
                "ociVersion": s.config.get("ociVersion", ""),
                "id": s.id,
                "pid": s.pid if status != "stopped" else 0,
                "status": status,
                "bundle": s.bundle,
                "rootfs": s.rootfs,
                "created": s.created,
                "owner": s.owner or "root",
            }
        )
    if args.format == "json":
        print(json.dumps(rows))
        return 0
    table = [["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"]]
    table += [
        [r["id"], str(r["pid"]), r["status"], r["bundle"], r["created"], r["owner"]] for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("   ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def _pause(args: argparse.Namespace) -> int:
    from dockyard.runtime import container

    container.pause(_root(args), args.id)
    return 0


def _resume(args: argparse.Namespace) -> int:
    from dockyard.runtime import container

    container.resume(_root(args), args.id)
    return 0


def _features(args: argparse.Namespace) -> int:
    import json

    from dockyard.runtime.features import features

    print(json.dumps(features(), indent=2))
    return 0


def _spec(args: argparse.Namespace) -> int:
    import json

    from dockyard.oci.runtime_spec import default_spec

    path = os.path.join(args.bundle, "config.json")
    if os.path.exists(path):
        raise RuntimeFailure(f"{path} exists: remove it first")
    with open(path, "w") as f:
        json.dump(default_spec(rootless=args.rootless), f, indent="\t")
        f.write("\n")
    return 0


# name -> (help, arguments, handler); a verb's parser is built only when it runs.
_VERBS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[..., int]]] = {
    "create": ("create a container", _create_args, _create),
    "start": ("start a created container", _id_only, _start),
    "run": ("create, start and wait for a container", _run_args, _run),
    "exec": ("run a process in a container", _exec_args, _exec),
    "state": ("print a container's state", _id_only, _state),
    "kill": ("send a signal to a container", _kill_args, _kill),
    "delete": ("delete a container", _delete_args, _delete),
    "ps": ("list a container's processes", _ps_args, _ps),
    "list": ("list containers", _list_args, _list),
    "pause": ("freeze a container", _id_only, _pause),
    "resume": ("thaw a paused container", _id_only, _resume),
    "features": ("print the runtime's features as JSON", _no_args, _features),
    "spec": ("write a default config.json", _spec_args, _spec),
}


if __name__ == "__main__":
    sys.exit(main())
