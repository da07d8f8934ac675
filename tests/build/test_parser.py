"""Parser behaviour and every error message."""

from __future__ import annotations

import pytest

from dockyard.build import DockerfileError, Heredoc, parse
from dockyard.build.parser import parse_heredoc_word, parse_with_directives


def test_directives_and_escape() -> None:
    got, d = parse_with_directives("# syntax=x/y:1\n# escape=`\nFROM a\nRUN a `\n b\n")
    assert d == {"syntax": "x/y:1", "escape": "`"}
    assert got[1].args == ["a  b"] and (got[1].start_line, got[1].end_line) == (4, 5)


def test_directive_only_at_top() -> None:
    got, d = parse_with_directives("\n# escape=`\nFROM a\nRUN a `\n")
    assert d == {} and got[1].args == ["a `"]


def test_heredoc_forms() -> None:
    ins = parse('FROM a\nRUN <<A <<-"B" cat\nx\nA\n\ty\n\tB\n')[1]
    assert ins.heredocs == [Heredoc("A", "x\n", True, False), Heredoc("B", "\ty\n", False, True)]
    assert tuple(ins.heredocs[0]) == ("A", "x\n", True, False)
    assert (ins.start_line, ins.end_line) == (2, 6)
    assert parse_heredoc_word("<<EOF") is not None
    assert parse_heredoc_word("<<") is None
    h = parse_heredoc_word("3<<'E'")
    assert h is not None and (h.fd, h.expand, h.name) == (3, False, "E")


def test_heredoc_only_on_run_copy_add() -> None:
    got = parse('FROM a\nCMD <<EOF\nRUN ["<<EOF"]\n')
    assert got[1].heredocs == [] and got[2].heredocs == [] and got[2].json


def test_heredoc_with_space_after_operator() -> None:
    # current BuildKit accepts `<< EOF` (v0.12.5 did not)
    ins = parse("FROM a\nRUN << EOF\nhi\nEOF\n")[1]
    assert ins.heredocs == [Heredoc("EOF", "hi\n")]


def test_json_rules() -> None:
    got = parse('FROM a\nCMD ["a", "b"]\nCMD [a]\nCMD ["a"] x\nENTRYPOINT []\n')
    assert got[1].json and got[1].args == ["a", "b"]
    assert not got[2].json and got[2].args == ["[a]"]
    assert not got[3].json and got[3].args == ['["a"] x']
    assert got[4].json and got[4].args == []


def test_env_forms_and_flags() -> None:
    got = parse('FROM a\nENV a b c\nENV x=1 y="2 3"\nCOPY --link --exclude=a --exclude=b s d\n')
    assert got[1].pairs() == [("a", "b c")]
    assert got[2].pairs() == [("x", "1"), ("y", '"2 3"')]
    assert got[3].flag_values == {"link": True, "exclude": ["a", "b"]}


def test_onbuild_sub() -> None:
    ins = parse("FROM a\nONBUILD RUN --mount=type=ssh make\n")[1]
    assert ins.sub is not None and ins.sub.cmd == "run" and ins.sub.flags == ["--mount=type=ssh"]


def _err(text: str) -> DockerfileError:
    with pytest.raises(DockerfileError) as ei:
        parse(text)
    return ei.value


ERRORS = [
    ("FROM a\nFOO bar\n", 2, "unknown instruction: FOO"),
    ("FROM a\nCOPY --bogus a b\n", 2, "unknown flag: --bogus"),
    ("FROM a\nCOPY --from=a --from=b a b\n", 2, "duplicate flag specified: --from"),
    ("FROM a\nCOPY --from a b\n", 2, "missing a value on flag: --from"),
    ("FROM a\nCOPY --link=maybe a b\n", 2, "expecting boolean value for flag --link, not: maybe"),
    ("FROM a\nRUN <<EOF\nno end\n", 2, "unterminated heredoc"),
    ('FROM a\nCMD ["a", 1]\n', 2, "when using JSON array syntax, arrays must be comprised of"),
    ("FROM a\nENV a=b c\n", 2, 'Syntax error - can\'t find = in "c". Must be of the form'),
    ("FROM a\nENV a\n", 2, "ENV must have two arguments"),
    ("FROM a\nLABEL a\n", 2, "LABEL must have two arguments"),
    ("FROM a\nENV =x\n", 2, "ENV names can not be blank"),
    ("FROM a\nCOPY a\n", 2, "COPY requires at least two arguments, but only one was provided"),
    ("FROM a\nADD a <<EOF\nx\nEOF\n", 2, "ADD cannot accept a heredoc as a destination"),
    ("FROM a b\n", 1, "FROM requires either one or three arguments"),
    ("FROM a AS 1x\n", 1, 'invalid name for build stage: "1x"'),
    ("FROM a\nUSER\n", 2, "USER requires exactly one argument"),
    ("FROM a\nRUN \\\n", 2, None),
    ("FROM a\nEXPOSE\n", 2, "EXPOSE requires at least one argument"),
    ("FROM a\nONBUILD ONBUILD RUN x\n", 2, "Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed"),
    ("FROM a\nONBUILD FROM b\n", 2, "FROM isn't allowed as an ONBUILD trigger"),
    ("FROM a\nONBUILD\n", 2, "ONBUILD requires at least one argument"),
    ("FROM a\nHEALTHCHECK NONE x\n", 2, "HEALTHCHECK NONE takes no arguments"),
    ("FROM a\nHEALTHCHECK CMD\n", 2, "Missing command after HEALTHCHECK CMD"),
    ("FROM a\nHEALTHCHECK FOO x\n", 2, 'Unknown type "FOO" in HEALTHCHECK (try CMD)'),
    ("FROM a\nHEALTHCHECK --nope=1 CMD x\n", 2, "unknown flag: --nope"),
    ("FROM a\nSHELL sh -c\n", 2, "SHELL requires the arguments to be in JSON form"),
    ('FROM a\nVOLUME [""]\n', 2, "VOLUME specified can not be an empty string"),
    ("FROM a\nARG =x\n", 2, "ARG names can not be blank"),
    ("FROM a\nWORKDIR --x=1 /a\n", 2, "unknown flag: --x"),
    ("# escape=x\nFROM a\n", 1, "invalid escape token 'x' does not match ` or \\"),
    ("# escape=`\n# escape=\\\nFROM a\n", 2, "only one escape parser directive can be used"),
    ("# only comments\n\n", None, "file with no instructions"),
]


@pytest.mark.parametrize(("text", "line", "msg"), ERRORS)
def test_errors(text: str, line: int | None, msg: str | None) -> None:
    if msg is None:  # `RUN \` at EOF: an empty RUN, which BuildKit's parser accepts
        assert parse(text)[1].args == []
        return
    e = _err(text)
    assert msg in e.message
    assert e.line == line
    where = f"Dockerfile:{line}: " if line else "Dockerfile: "
    assert str(e).startswith(where + e.message)
    assert "\n" not in str(e)


def test_error_quotes_the_line() -> None:
    e = _err("FROM a\nCOPY --bogus a \\\n  b\n")
    assert (e.line, e.end_line) == (2, 3)
    assert "COPY --bogus a   b" in str(e)
