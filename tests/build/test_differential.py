"""dockyard's parser against BuildKit's own (the PyPI ``dockerfile`` package)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dockyard.build.errors import DockerfileError
from dockyard.build.instructions import Instruction
from dockyard.build.parser import parse_with_directives

from .bk import BKError, bk_as_dict, bk_parse, ours_as_bk

CORPUS = sorted((Path(__file__).parent / "corpus").glob("*.Dockerfile"))


# Files where BuildKit v0.12.5 (the package) and current BuildKit (dockyard) differ.
KNOWN = {
    # v0.12.5 does not know `# check=`: it ends the directives, so escape=` is ignored.
    "directives_all",
}

_MAYBE_JSON = ("run", "cmd", "entrypoint", "shell", "add", "copy", "volume", "healthcheck")


def legacy_json_divergence(ins: Instruction) -> bool:
    """v0.12.5 decoded the first JSON value and ignored trailing text; HEAD needs it all."""
    target = ins.sub if ins.sub is not None else ins
    if target.json or target.cmd not in _MAYBE_JSON or not target.args:
        return False
    rest = " ".join(target.args[1:] if target.cmd == "healthcheck" else target.args)
    rest = rest.lstrip()
    try:
        _, end = json.JSONDecoder().raw_decode(rest)
    except ValueError:
        return False
    return rest.startswith("[") and rest[end:].strip() != ""


def compare(text: str) -> None:
    try:
        theirs = [bk_as_dict(c) for c in bk_parse(text)]
    except BKError as e:
        try:
            got = parse_with_directives(text)[0]
        except DockerfileError:
            return
        if any(legacy_json_divergence(i) for i in got):
            return
        raise AssertionError(f"BuildKit rejects ({e}), dockyard accepts: {text!r}") from None
    got, directives = parse_with_directives(text)
    ours = [ours_as_bk(i) for i in got]
    if ours != theirs and any(legacy_json_divergence(i) for i in got):
        return
    if ours != theirs and directives.get("escape") == "`":
        # v0.12.5 read flags with `\\` as escape whatever the escape directive said
        for d in (*ours, *theirs):
            d.pop("flags")
    assert ours == theirs, text


def test_corpus_is_there() -> None:
    assert len(CORPUS) >= 30


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.stem)
def test_corpus(path: Path) -> None:
    if path.stem in KNOWN:
        pytest.xfail("known v0.12.5 divergence")
    compare(path.read_bytes().decode())


# -- generated Dockerfiles ------------------------------------------------------------

_plain = st.text(alphabet="abcxyz019._/:@-+,", min_size=1, max_size=6)
_var = st.sampled_from(["$A", "${B}", "${C:-d}", "$HOME", "${X:+y}"])
_quoted = st.builds(lambda s: f'"{s}"', st.text(alphabet="ab $\\'=", max_size=5)) | st.builds(
    lambda s: f"'{s}'", st.text(alphabet='ab $"=', max_size=5)
)
_word = st.one_of(_plain, _plain, _var, _quoted, st.sampled_from(["\\ ", 'a\\"b', "=", "a=b"]))
_sp = st.sampled_from([" ", " ", "  ", "\t", " \t "])


@st.composite
def _words(draw: st.DrawFn, min_size: int = 0) -> str:
    ws = draw(st.lists(_word, min_size=min_size, max_size=5))
    return "".join(draw(_sp) + w for w in ws)


_json_item = st.text(alphabet='ab c"\\/$', max_size=5).map(
    lambda s: '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'
)
_json_bad = st.sampled_from(["1", "true", "null", '["x"]', "'x'", "x"])


@st.composite
def _json(draw: st.DrawFn) -> str:
    items = draw(
        st.lists(_json_item | _json_bad if draw(st.booleans()) else _json_item, max_size=4)
    )
    sep = draw(st.sampled_from([",", ", ", " , "]))
    close = draw(st.sampled_from(["]", "]", " ]", ""]))
    return " [" + sep.join(items) + close


_FLAGS = ["--from=build", "--chown=1:1", "--chmod=755", "--link", "--exclude=*.md",
          "--mount=type=cache,target=/x", "--network=none", "--platform=linux/amd64",
          "--checksum=sha256:ab", "--keep-git-dir", "--interval=5s", "--start-period=1s",
          '--from="a b"', "--x='y'", "--bogus", "--"]  # fmt: skip
_CMDS = ["FROM", "RUN", "CMD", "ENTRYPOINT", "SHELL", "ENV", "ARG", "LABEL", "EXPOSE",
         "VOLUME", "WORKDIR", "USER", "COPY", "ADD", "STOPSIGNAL", "HEALTHCHECK",
         "MAINTAINER", "ONBUILD", "from", "Run", "NOPE"]  # fmt: skip


@st.composite
def _instruction(draw: st.DrawFn, depth: int = 0) -> str:
    cmd = draw(st.sampled_from(_CMDS))
    flags = "".join(" " + f for f in draw(st.lists(st.sampled_from(_FLAGS), max_size=2)))
    kind = draw(st.integers(0, 5))
    if cmd.upper() == "ONBUILD" and depth == 0 and kind < 4:
        return f"{cmd}{flags} " + draw(_instruction(depth=1))
    if cmd.upper() == "HEALTHCHECK" and kind < 3:
        body = draw(st.sampled_from([" NONE", " CMD", " cmd"])) + (
            draw(_json()) if kind == 0 else draw(_words())
        )
    elif cmd.upper() in ("ENV", "LABEL") and kind < 3:
        pairs = draw(st.lists(st.tuples(_plain, _word), min_size=1, max_size=3))
        body = "".join(draw(_sp) + k + "=" + v for k, v in pairs)
    elif kind == 0:
        body = draw(_json())
    else:
        body = draw(_words())
    return cmd + flags + body


@st.composite
def _dockerfile(draw: st.DrawFn) -> str:
    lines: list[str] = []
    if draw(st.booleans()):
        top = [
            "# syntax=docker/dockerfile:1",
            "# escape=`",
            "# escape=\\\\",
            "#escape = `",
            "# x=y",
        ]
        lines.append(draw(st.sampled_from(top)))
    for _ in range(draw(st.integers(1, 6))):
        choice = draw(st.integers(0, 9))
        if choice == 0:
            lines.append(draw(st.sampled_from(["# a comment", "", "   ", "  # indented"])))
        elif choice == 1:
            # continuation with comments / empty lines inside
            first = draw(_instruction())
            esc = draw(st.sampled_from(["\\", "`"]))
            cont = [first + draw(st.sampled_from([" ", ""])) + esc]
            for _ in range(draw(st.integers(1, 3))):
                cont.append(draw(st.sampled_from(["# inner", "", "  more args", "\tx=y " + esc,
                                                  "  tail " + esc])))  # fmt: skip
            cont.append("  end")
            lines += cont
        elif choice == 2:
            cmd = draw(st.sampled_from(["RUN", "COPY", "ADD", "ONBUILD RUN", "CMD", "RUN ["]))
            name = draw(st.sampled_from(["EOF", "END", "'EOF'", '"EOF"', "-EOF", "E\\OF"]))
            tail = draw(st.sampled_from(["", " cat", " /dst", " <<TWO /x"]))
            lines.append(f"{cmd} <<{name}{tail}")
            body = draw(
                st.lists(st.sampled_from(["line $V", "\tTab", "EOFX", "", "TWO"]), max_size=3)
            )
            lines += body
            real = name.strip("'\"-").replace("\\", "")
            if draw(st.integers(0, 9)) > 0:
                lines.append(("\t" if name.startswith("-") else "") + real)
            if "TWO" in tail:
                lines += ["two body", "TWO"]
        else:
            lines.append(draw(_sp).strip(" ") + draw(_instruction()))
    eol = draw(st.sampled_from(["\n", "\n", "\r\n"]))
    return eol.join(lines) + draw(st.sampled_from(["", eol]))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_dockerfile())
def test_generated(text: str) -> None:
    compare(text)
