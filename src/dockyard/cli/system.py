"""`dockyard version` (and, later, `info`, `system df/prune/check`)."""

from __future__ import annotations

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    import argparse


def add_arguments(verb: str, parser: argparse.ArgumentParser) -> None:
    if verb == "version":
        parser.add_argument("-f", "--format", help="Go-template-style format")
    elif verb == "system":
        parser.add_argument("action", choices=["check", "df", "prune"])
        parser.add_argument("--repair", action="store_true", help="mend what a crash left behind")
        # df and prune (cli/sysinfo.py)
        parser.add_argument("-v", "--verbose", action="store_true", help="df: show details")
        parser.add_argument("--format", help="df: Go-template-style format")
        parser.add_argument("-a", "--all", action="store_true", help="prune: all unused images")
        parser.add_argument("-f", "--force", action="store_true", help="prune: do not prompt")
        parser.add_argument("--volumes", action="store_true", help="prune: anonymous volumes too")


def run(verb: str, args: argparse.Namespace) -> int:
    if verb == "system" and args.action in ("df", "prune"):
        from dockyard.cli import sysinfo

        return sysinfo.df(args) if args.action == "df" else sysinfo.prune(args)
    if verb == "system":
        return _check(args)
    return _version(args)


def _check(args: argparse.Namespace) -> int:
    from dockyard.cli.containers import engine
    from dockyard.engine.check import check

    findings = check(engine(args), repair=args.repair)
    for finding in findings:
        print(finding)
    left = [f for f in findings if not f.repaired]
    if not findings:
        print("ok: blobs, images, snapshots and containers are consistent")
    elif left:
        hint = "" if args.repair else "; run `dockyard system check --repair`"
        print(f"{len(left)} problem(s) left{hint}")
    return 1 if left else 0


def _version(args: argparse.Namespace) -> int:
    import platform

    from dockyard import __version__
    from dockyard.oci.image_spec import host_architecture
    from dockyard.oci.runtime_spec import OCI_VERSION

    info = {
        "Version": __version__,
        "ApiVersion": "1.43",
        "Os": "linux",
        "Arch": host_architecture(),
        "KernelVersion": platform.release(),
        "PythonVersion": platform.python_version(),
        "OciRuntimeSpec": OCI_VERSION,
    }
    if args.format:
        import sys

        from dockyard.cli.gotemplate import TemplateError, render

        try:
            print(render(args.format, {"Client": info}))
        except TemplateError as err:
            sys.stderr.write(f"template parsing error: {err}\n")
            return 1
        return 0
    print("Client: dockyard")
    for key, value in info.items():
        print(f" {key + ':':<16}{value}")
    return 0
