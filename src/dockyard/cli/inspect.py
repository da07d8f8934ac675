"""Verbs that look at or rename objects: inspect (containers and images), rename."""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    import argparse
    from typing import Any


def add_arguments(verb: str, p: argparse.ArgumentParser) -> None:
    if verb == "inspect":
        p.add_argument("-f", "--format", help="Go-template-style format, e.g. {{.State.Status}}")
        p.add_argument("--type", choices=("container", "image", "volume"))
        p.add_argument("-s", "--size", action="store_true", help="accepted; sizes come later")
        p.add_argument("names", nargs="+", metavar="NAME")
    elif verb == "rename":
        p.add_argument("old")
        p.add_argument("new")


def run(verb: str, args: argparse.Namespace) -> int:
    if verb == "rename":
        return _rename(args)
    return inspect(args, getattr(args, "type", None))


def _rename(args: argparse.Namespace) -> int:
    from dockyard.cli.containers import engine
    from dockyard.engine import control
    from dockyard.engine.containers import EngineError

    try:
        control.rename(engine(args), args.old, args.new)
    except EngineError as err:  # Docker's wording: the daemon refused
        sys.stderr.write(f"Error response from daemon: {err}\n")
        return 1
    return 0


def inspect(args: argparse.Namespace, kind: str | None) -> int:
    """Print each object's document (a JSON array) or the template's output per object."""
    import json

    from dockyard.cli.containers import engine
    from dockyard.cli.errors import describe
    from dockyard.cli.gotemplate import TemplateError, parse, render

    if args.format:
        try:
            parse(args.format)
        except TemplateError as err:
            sys.stderr.write(f"template parsing error: {err}\n")
            return 1
    eng = engine(args)
    documents: list[dict[str, Any]] = []
    failed = False
    for name in args.names:
        try:
            documents.append(_find(eng, name, kind))
        except Exception as err:
            message = describe(err)
            if message is None:
                raise
            sys.stderr.write(f"Error: {message}\n")
            failed = True
    if args.format:
        for doc in documents:
            try:
                text = render(args.format, doc)
            except TemplateError as err:
                sys.stderr.write(f"{err}\n")
                return 1
            sys.stdout.write(text + "\n")
    else:
        sys.stdout.write(json.dumps(documents, indent=4, ensure_ascii=False) + "\n")
    return 1 if failed else 0


def _find(eng: Any, name: str, kind: str | None) -> dict[str, Any]:
    from dockyard.engine.inspect import find

    return find(eng, name, kind)[1]
