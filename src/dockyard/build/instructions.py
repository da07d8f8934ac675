"""Parsed Dockerfile instructions and BuildKit's per-instruction checks.

:class:`Instruction` is one node of BuildKit's AST (``parser.Node``) in plain
Python. :func:`validate` applies the checks BuildKit's ``instructions`` package
makes when it turns nodes into commands: known instruction, allowed flags and
their types, argument counts, ONBUILD triggers.
"""

from __future__ import annotations

from .errors import DockerfileError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator

FlagValue = str | bool | list[str]


class Heredoc:
    """One ``<<NAME`` document: ``expand`` is false when the name was quoted."""

    __slots__ = ("chomp", "content", "expand", "fd", "name")

    def __init__(
        self, name: str, content: str = "", expand: bool = True, chomp: bool = False, fd: int = 0
    ) -> None:
        self.name = name
        self.content = content
        self.expand = expand
        self.chomp = chomp
        self.fd = fd

    def as_tuple(self) -> tuple[str, str, bool, bool]:
        return (self.name, self.content, self.expand, self.chomp)

    def __iter__(self) -> Iterator[object]:
        return iter(self.as_tuple())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Heredoc):
            return self.as_tuple() == other.as_tuple() and self.fd == other.fd
        if isinstance(other, tuple):
            return self.as_tuple() == other
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.as_tuple())

    def __repr__(self) -> str:
        return f"Heredoc({self.name!r}, {self.content!r}, expand={self.expand}, chomp={self.chomp})"


class Instruction:
    """One instruction as BuildKit's parser sees it.

    ``cmd`` is lowercase, ``keyword`` as written. ``flags`` are the raw
    ``--x=y`` words; ``flag_values`` the parsed ones (filled by :func:`validate`).
    ``args`` (alias ``value``) is BuildKit's node list: the original string for
    shell form, the list for JSON form, key/value/separator triples for ENV and
    LABEL (separator ``"="`` or ``""`` for the legacy ``ENV k v`` form), the type
    word first for HEALTHCHECK. ``original`` is the joined logical line without
    heredoc bodies; ``sub`` is the wrapped instruction of ONBUILD.
    """

    __slots__ = (
        "args",
        "cmd",
        "end_line",
        "flag_values",
        "flags",
        "heredocs",
        "json",
        "keyword",
        "original",
        "start_line",
        "sub",
    )

    def __init__(
        self,
        keyword: str,
        args: list[str],
        *,
        flags: list[str] | None = None,
        json: bool = False,
        original: str = "",
        start_line: int = 0,
        end_line: int = 0,
        heredocs: list[Heredoc] | None = None,
        sub: Instruction | None = None,
    ) -> None:
        self.keyword = keyword
        self.cmd = keyword.lower()
        self.args = args
        self.flags = flags if flags is not None else []
        self.flag_values: dict[str, FlagValue] = {}
        self.json = json
        self.original = original
        self.start_line = start_line
        self.end_line = end_line
        self.heredocs = heredocs if heredocs is not None else []
        self.sub = sub

    @property
    def value(self) -> list[str]:
        return self.args

    def flag_list(self, name: str) -> list[str]:
        """A repeatable flag's values (`--mount`, `--exclude`), [] when not given."""
        value = self.flag_values.get(name)
        return list(value) if isinstance(value, list) else []

    def pairs(self) -> list[tuple[str, str]]:
        """ENV/LABEL key/value pairs (quotes still in; expansion removes them)."""
        a = self.args
        return [(a[i], a[i + 1]) for i in range(0, len(a) - 2, 3)]

    def copy(self) -> Instruction:
        new = Instruction(
            self.keyword,
            list(self.args),
            flags=list(self.flags),
            json=self.json,
            original=self.original,
            start_line=self.start_line,
            end_line=self.end_line,
            heredocs=[Heredoc(h.name, h.content, h.expand, h.chomp, h.fd) for h in self.heredocs],
            sub=self.sub.copy() if self.sub is not None else None,
        )
        new.flag_values = {
            k: list(v) if isinstance(v, list) else v for k, v in self.flag_values.items()
        }
        return new

    def __repr__(self) -> str:
        extra = f" sub={self.sub!r}" if self.sub is not None else ""
        return (
            f"<Instruction {self.cmd} flags={self.flags} args={self.args} json={self.json}"
            f" lines={self.start_line}-{self.end_line}{extra}>"
        )


# flag name -> "s" (string), "b" (bool), "m" (repeatable string)
_FLAGS: dict[str, dict[str, str]] = {
    "add": {"chown": "s", "chmod": "s", "link": "b", "keep-git-dir": "b", "checksum": "s",
            "unpack": "b", "exclude": "m"},
    "copy": {"chown": "s", "from": "s", "chmod": "s", "link": "b", "exclude": "m", "parents": "b"},
    "from": {"platform": "s"},
    "run": {"mount": "m", "network": "s", "security": "s", "device": "m"},
    "healthcheck": {"interval": "s", "timeout": "s", "start-period": "s", "start-interval": "s",
                    "retries": "s"},
}  # fmt: skip

KNOWN = frozenset(
    [
        "add",
        "arg",
        "cmd",
        "copy",
        "entrypoint",
        "env",
        "expose",
        "from",
        "healthcheck",
        "label",
        "maintainer",
        "onbuild",
        "run",
        "shell",
        "stopsignal",
        "user",
        "volume",
        "workdir",
    ]
)


def parse_flags(cmd: str, raw: list[str]) -> dict[str, FlagValue]:
    """BuildKit's BFlags.Parse for ``cmd``; raises ValueError with its message."""
    allowed = _FLAGS.get(cmd, {})
    out: dict[str, FlagValue] = {}
    for a in raw:
        if a == "--":
            break
        if not a.startswith("--"):
            raise ValueError(f"arg should start with -- : {a}")
        name, eq, value = a.partition("=")
        key = name[2:]
        kind = allowed.get(key)
        if kind is None:
            msg = f"unknown flag: {name}"
            close = _suggest(key, list(allowed))
            raise ValueError(msg + (f" (did you mean {close}?)" if close else ""))
        if key in out and kind != "m":
            raise ValueError(f"duplicate flag specified: {name}")
        if kind == "b":
            if eq and value == "":
                raise ValueError(f"missing a value on flag: {name}")
            low = value.lower()
            if low not in ("true", "", "false"):
                raise ValueError(f"expecting boolean value for flag {name}, not: {value}")
            out[key] = low != "false"
        elif not eq:
            raise ValueError(f"missing a value on flag: {name}")
        elif kind == "m":
            lst = out.setdefault(key, [])
            assert isinstance(lst, list)
            lst.append(value)
        else:
            out[key] = value
    return out


def _suggest(word: str, choices: list[str]) -> str | None:
    import difflib

    got = difflib.get_close_matches(word.lower(), choices, n=1, cutoff=0.6)
    return got[0] if got else None


def _check(ins: Instruction) -> None:
    cmd, args = ins.cmd, ins.args
    up = cmd.upper()
    if cmd not in KNOWN:
        msg = f"unknown instruction: {ins.keyword}"
        close = _suggest(cmd, sorted(KNOWN))
        raise ValueError(msg + (f" (did you mean {close}?)" if close else ""))
    if cmd == "healthcheck" and args and args[0].upper() == "NONE":
        if len(args) > 1:
            raise ValueError("HEALTHCHECK NONE takes no arguments")
        ins.flag_values = parse_flags("", ins.flags)
        return
    if cmd in ("env", "label"):
        if not args:
            raise ValueError(f"{up} requires at least one argument")
        for i in range(0, len(args), 3):
            if args[i] == "":
                raise ValueError(f"{up} names can not be blank")
    elif cmd in ("maintainer", "user", "stopsignal", "workdir") and len(args) != 1:
        raise ValueError(f"{up} requires exactly one argument")
    elif cmd in ("add", "copy"):
        if len(args) < 2:
            raise ValueError(
                f"{up} requires at least two arguments, but only one was provided."
                " Destination could not be determined"
            )
        from .parser import parse_heredoc_word

        if parse_heredoc_word(args[-1]) is not None:
            raise ValueError(f"{up} cannot accept a heredoc as a destination")
    elif cmd == "from":
        if len(args) == 3 and args[1].lower() == "as":
            import re

            if not re.fullmatch(r"[a-z][a-z0-9\-_.]*", args[2].lower()):
                raise ValueError(
                    f"invalid name for build stage: {_q(args[2])}, name can't start with a number"
                    " or contain symbols"
                )
        elif len(args) != 1:
            raise ValueError("FROM requires either one or three arguments")
    elif cmd == "onbuild" and ins.sub is None:
        raise ValueError("ONBUILD requires at least one argument")
    elif cmd in ("expose", "volume", "arg", "healthcheck") and not args:
        raise ValueError(f"{up} requires at least one argument")
    if cmd == "onbuild" and ins.sub is not None:
        trig = ins.sub.keyword.strip().upper()
        if trig == "ONBUILD":
            raise ValueError("Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed")
        if trig in ("MAINTAINER", "FROM"):
            raise ValueError(f"{trig} isn't allowed as an ONBUILD trigger")
    if cmd == "volume" and any(not v.strip() for v in args):
        raise ValueError("VOLUME specified can not be an empty string")
    if cmd == "arg" and any("=" in a and a.startswith("=") for a in args):
        raise ValueError("ARG names can not be blank")
    if cmd == "shell" and args and not ins.json:
        raise ValueError("SHELL requires the arguments to be in JSON form")
    if cmd == "shell" and not args:
        raise ValueError("SHELL requires at least one argument")
    if cmd == "healthcheck":
        typ = args[0].upper()
        ins.flag_values = parse_flags(cmd, ins.flags)
        if typ != "CMD":
            raise ValueError(f"Unknown type {_q(typ)} in HEALTHCHECK (try CMD)")
        if len(args) < 2:
            raise ValueError("Missing command after HEALTHCHECK CMD")
        return
    ins.flag_values = parse_flags(cmd, ins.flags)


def _q(s: str) -> str:
    from .shell import go_quote

    return go_quote(s)


def validate(instructions: list[Instruction], filename: str = "Dockerfile") -> None:
    """Apply BuildKit's instruction checks; fills ``flag_values``."""
    for ins in instructions:
        try:
            _check(ins)
        except ValueError as e:
            raise DockerfileError(
                str(e), ins.start_line, ins.end_line, ins.original, filename
            ) from None
