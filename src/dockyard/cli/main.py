"""`dockyard`: the entry point. Each verb lives in a small module and is imported
only when it runs, so start-up stays cheap (`dockyard --version` imports nothing
but this file)."""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    import argparse

    from dockyard.engine.monitor_start import MonitorStarter

# verb -> (module under dockyard.cli, one-line help). Each module has
# `add_arguments(parser)` and `run(args) -> int`.
VERBS: dict[str, tuple[str, str]] = {
    "run": ("containers", "create and start a container from an image"),
    "create": ("containers", "create a container"),
    "start": ("containers", "start stopped containers"),
    "stop": ("containers", "stop running containers"),
    "kill": ("containers", "send a signal to running containers"),
    "rm": ("containers", "remove containers"),
    "ps": ("containers", "list containers"),
    "logs": ("containers", "show a container's logs"),
    "wait": ("containers", "wait for containers to stop; print their exit codes"),
    "restart": ("lifecycle", "restart containers (stop, then start)"),
    "update": ("lifecycle", "update the resource limits or restart policy of containers"),
    "exec": ("running", "run a command in a running container"),
    "attach": ("attach", "attach local stdin, stdout and stderr to a running container"),
    "top": ("running", "show the processes of a container"),
    "pause": ("running", "pause every process of containers"),
    "unpause": ("running", "unpause every process of containers"),
    "stats": ("running", "show containers' resource use (--no-stream)"),
    "inspect": ("inspect", "show low-level information on containers or images"),
    "rename": ("inspect", "rename a container"),
    "container": ("groups", "manage containers: container ls/inspect/prune/…"),
    "import": ("images", "create an image from a root file system tar"),
    "images": ("images", "list images"),
    "tag": ("images", "add a name to an image"),
    "rmi": ("images", "remove images"),
    "save": ("image_transfer", "save images to a tar archive (docker-save + OCI layout)"),
    "load": ("image_transfer", "load images from a tar archive (docker-save or OCI)"),
    "history": ("image_transfer", "show the history of an image"),
    "export": ("image_transfer", "export a container's file system as a tar archive"),
    "commit": ("image_transfer", "create a new image from a container's changes"),
    "image": ("image_transfer", "manage images: image prune [-a] [-f], image ls/rm/save/load"),
    "pull": ("registry_client", "download an image from a registry"),
    "push": ("registry_client", "upload an image to a registry"),
    "login": ("registry_client", "log in to a registry"),
    "logout": ("registry_client", "log out from a registry"),
    "search": ("registry_client", "search a registry for images"),
    "system": ("system", "manage dockyard: system check [--repair], df [-v], prune [-a] [-f]"),
    "info": ("sysinfo", "show system-wide information"),
    "cp": ("copy", "copy files between a container and the local file system"),
    "diff": ("copy", "show the changes to a container's file system"),
    "version": ("system", "show the dockyard version information"),
    "volume": ("volumes", "manage volumes: create, ls, inspect, rm, prune"),
    "network": ("networks", "manage networks: create, ls, inspect, rm, prune, connect, …"),
    "port": ("networks", "list a container's published ports"),
    "build": ("build", "build an image from a Dockerfile (the classic builder)"),
    "builder": ("build", "manage the build cache: builder prune"),
    "registry": ("registry", "run an OCI registry: registry serve, registry gc"),
}


def _version_line() -> str:
    from dockyard import __version__

    return f"dockyard version {__version__}"


def _global_parser() -> argparse.ArgumentParser:
    import argparse

    verbs = "\n".join(f"  {name:<10} {help_text}" for name, (_, help_text) in VERBS.items())
    p = argparse.ArgumentParser(
        prog="dockyard",
        description="A container platform: Docker's verbs, no daemon needed.",
        epilog=f"commands:\n{verbs}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--root", default=os.environ.get("DOCKYARD_ROOT"), help="state directory")
    p.add_argument("-v", "--version", action="store_true", help="print the version and exit")
    p.add_argument("verb", nargs="?", choices=list(VERBS), metavar="COMMAND")
    p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    as_command = argv is None
    argv = sys.argv[1:] if argv is None else argv
    if argv in (["--version"], ["-v"]):
        print(_version_line())
        code = 0
    else:
        if _verb_of(argv) == "run" and not {"-h", "--help"}.intersection(argv):
            # The container's monitor boots (an interpreter start and the
            # runtime's imports, on another CPU) while this process imports,
            # parses and creates: started first, it is ready when `start` comes.
            from dockyard.engine.monitor_start import MonitorStarter

            global early_monitor
            early_monitor = MonitorStarter()
        code = _dispatch(argv)
    if as_command:
        # Nothing left to clean up but the interpreter, whose teardown costs milliseconds.
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            code = _stdout_closed()
        sys.stderr.flush()
        os._exit(code)
    return code


early_monitor: MonitorStarter | None = None  # taken by `run`


def _verb_of(argv: list[str]) -> str | None:
    """The verb, found without argparse (only --root takes a value before it)."""
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--root":
            skip = True
        elif not arg.startswith("-"):
            return arg
    return None


def _dispatch(argv: list[str]) -> int:
    import argparse
    import importlib

    args = _global_parser().parse_args(argv)
    if args.version:
        print(_version_line())
        return 0
    if not args.verb:
        _global_parser().print_help()
        return 2
    module_name, help_text = VERBS[args.verb]
    module = importlib.import_module(f"dockyard.cli.{module_name}")
    # "resolve": verbs may take -h for themselves (run -h is --hostname); --help stays.
    verb = argparse.ArgumentParser(
        prog=f"dockyard {args.verb}", description=help_text, conflict_handler="resolve"
    )
    module.add_arguments(args.verb, verb)
    verb.parse_args(args.rest, namespace=args)
    try:
        return int(module.run(args.verb, args))
    except Exception as err:  # every user error is one line; anything else is a bug
        if isinstance(err, BrokenPipeError) and _reader_gone():
            return _stdout_closed()  # `dockyard logs c | head`: the reader left; not an error
        from dockyard.cli.errors import describe

        message = describe(err)
        if message is None:
            raise
        sys.stderr.write(f"Error: {message}\n")
        return 1


def _reader_gone() -> bool:
    """Whether stdout is a pipe nobody reads any more (and not some other pipe we wrote)."""
    import select

    poller = select.poll()
    poller.register(sys.stdout.fileno(), select.POLLOUT)
    return any(event & select.POLLERR for _, event in poller.poll(0))


def _stdout_closed() -> int:
    """Whoever read our stdout is gone: drop what is left unwritten; 128 + SIGPIPE,
    as a shell reports for a Go program like docker."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 141
