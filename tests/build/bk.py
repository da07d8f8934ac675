"""Typed wrapper around the PyPI ``dockerfile`` package (BuildKit v0.12.5's parser).

Differences between v0.12.5 and the BuildKit dockyard follows (HEAD), which the
comparison adjusts for:
- ENV/LABEL nodes: HEAD adds a separator node ("=" or "") after each pair.
- ``original`` of an instruction with heredocs: the package appends the bodies.
- ONBUILD: the package reports the wrapped instruction's value/json, the outer flags.
"""

from __future__ import annotations

from typing import Any

import dockerfile  # type: ignore[import-not-found]

from dockyard.build.instructions import Instruction


class BKError(Exception):
    pass


def bk_parse(text: str) -> list[Any]:
    try:
        return list(dockerfile.parse_string(text))
    except dockerfile.GoParseError as e:
        raise BKError(str(e)) from None


def ours_as_bk(ins: Instruction) -> dict[str, Any]:
    """Project dockyard's Instruction onto the fields the package exposes."""
    target = ins.sub if ins.sub is not None else ins
    value = list(target.args)
    if target.sub is not None:  # a nested ONBUILD: BuildKit's node holding the child
        value = [""]
    if target.cmd in ("env", "label"):
        value = [v for i, v in enumerate(value) if i % 3 != 2]
    original = ins.original
    if ins.heredocs and ins.sub is None:
        original += "\n" + "".join(h.content + h.name + "\n" for h in ins.heredocs)
    return {
        "cmd": ins.keyword,
        "sub_cmd": ins.sub.keyword if ins.sub is not None else None,
        "json": target.json,
        "original": original,
        "start_line": ins.start_line,
        "end_line": ins.end_line,
        "flags": list(ins.flags),
        "value": value,
        "heredocs": [(h.name, h.fd, h.content) for h in ins.heredocs] if ins.sub is None else [],
    }


def bk_as_dict(c: Any) -> dict[str, Any]:
    return {
        "cmd": c.cmd,
        "sub_cmd": c.sub_cmd,
        "json": c.json,
        "original": c.original,
        "start_line": c.start_line,
        "end_line": c.end_line,
        "flags": list(c.flags),
        "value": list(c.value),
        "heredocs": [(h.name, h.file_descriptor, h.content) for h in c.heredocs],
    }
