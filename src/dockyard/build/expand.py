"""Variable expansion of instruction arguments, as BuildKit's dispatcher does it.

Expanded (each word with the single-word lexer, which also removes quotes):
ENV and LABEL keys and values, ARG names and defaults, ADD/COPY sources,
destination, ``--chown``/``--chmod`` (and ADD ``--checksum``), heredoc bodies of
ADD/COPY whose delimiter was unquoted (quotes kept), WORKDIR, USER, STOPSIGNAL,
VOLUME entries, EXPOSE (expanded then split into words), FROM image and
``--platform``, the values inside RUN ``--mount``. ``COPY --from`` must not
contain variables (BuildKit refuses it). RUN, CMD, ENTRYPOINT, SHELL,
HEALTHCHECK, MAINTAINER and ONBUILD are left alone: the shell (or a later
build) sees them as written.
"""

from __future__ import annotations

from .errors import DockerfileError
from .shell import ShellError, ShellLex

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

    from .instructions import Instruction

__all__ = ["ShellError", "ShellLex", "expand_instruction", "expand_word", "expand_words"]


def expand_word(word: str, env: Mapping[str, str], escape: str = "\\") -> str:
    return ShellLex(escape).process_word(word, env)


def expand_words(word: str, env: Mapping[str, str], escape: str = "\\") -> list[str]:
    return ShellLex(escape).process_words(word, env)


def _sub_flag(ins: Instruction, name: str, fn: object) -> None:
    prefix = f"--{name}="
    out = []
    for f in ins.flags:
        if f.startswith(prefix):
            f = prefix + fn(f[len(prefix) :])  # type: ignore[operator]
        out.append(f)
    ins.flags = out
    v = ins.flag_values.get(name)
    if isinstance(v, str):
        ins.flag_values[name] = fn(v)  # type: ignore[operator]
    elif isinstance(v, list):
        ins.flag_values[name] = [fn(x) for x in v]  # type: ignore[operator]


def _expand_mount(spec: str, word: object) -> str:
    fields = []
    for field in spec.split(","):
        k, eq, v = field.partition("=")
        fields.append(k + eq + word(v) if eq else field)  # type: ignore[operator]
    return ",".join(fields)


def expand_instruction(
    ins: Instruction, env: Mapping[str, str], escape: str = "\\", filename: str = "Dockerfile"
) -> Instruction:
    """A copy of ``ins`` with the arguments BuildKit expands expanded against ``env``."""
    lex = ShellLex(escape)
    new = ins.copy()

    def word(w: str) -> str:
        return lex.process_word(w, env)

    try:
        _expand(new, word, lex, env, escape)
    except ShellError as e:
        raise DockerfileError(
            str(e), ins.start_line, ins.end_line, ins.original, filename
        ) from None
    return new


def _expand(
    new: Instruction, word: object, lex: ShellLex, env: Mapping[str, str], escape: str
) -> None:
    w = word  # callable str -> str
    cmd, a = new.cmd, new.args
    if cmd in ("env", "label"):
        for i in range(0, len(a) - 2, 3):
            a[i] = w(a[i])  # type: ignore[operator]
            a[i + 1] = w(a[i + 1])  # type: ignore[operator]
    elif cmd == "arg":
        out = []
        for item in a:
            k, eq, v = item.partition("=")
            out.append(w(k) + eq + (w(v) if eq else ""))  # type: ignore[operator]
        new.args = out
    elif cmd in ("add", "copy"):
        from .parser import parse_heredoc_word

        names = {h.name: h for h in new.heredocs}
        for i, item in enumerate(a):
            if i < len(a) - 1 and parse_heredoc_word(item) is not None:
                continue
            a[i] = w(item)  # type: ignore[operator]
        raw = ShellLex("\\", skip_process_quotes=True)
        for h in names.values():
            if h.expand:
                h.content = raw.process_word(h.content, env)
        for name in ("chown", "chmod") + (("checksum",) if cmd == "add" else ()):
            _sub_flag(new, name, w)
        if cmd == "copy":
            for f in new.flags:
                if f.startswith("--from="):
                    v = f[len("--from=") :]
                    if lex.process_word(v, {}) != v:
                        raise ShellError(
                            "variable expansion is not supported for --from, define a new stage"
                            " with FROM using ARG from global scope as a workaround"
                        )
    elif cmd in ("workdir", "user", "stopsignal", "volume"):
        new.args = [w(x) for x in a]  # type: ignore[operator]
    elif cmd == "expose":
        new.args = [p for x in a for p in lex.process_words(x, env)]
    elif cmd == "from":
        if a:
            a[0] = w(a[0])  # type: ignore[operator]
        _sub_flag(new, "platform", w)
    elif cmd == "run":
        _sub_flag(new, "mount", lambda s: _expand_mount(s, w))
