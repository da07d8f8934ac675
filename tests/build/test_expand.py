"""Variable expansion: BuildKit's shell lexer rules, and which instructions expand."""

from __future__ import annotations

import pytest

from dockyard.build.errors import DockerfileError
from dockyard.build.expand import expand_instruction, expand_word, expand_words
from dockyard.build.parser import parse
from dockyard.build.shell import ShellError, ShellLex

ENV = {"PWD": "/home", "SHELL": "bash", "EMPTY": "", "V": "a b  c", "P": "dir/file.tar.gz"}

WORD_CASES = [
    ("hello", "hello"),
    ("he'll'o", "hello"),
    ("he\\'llo", "he'llo"),
    ('"he\\"llo"', 'he"llo'),
    ('"a\\b"', "a\\b"),
    ('"a\\\\b"', "a\\b"),
    ("'$PWD'", "$PWD"),
    ('"$PWD"', "/home"),
    ("$PWD", "/home"),
    ("${PWD}", "/home"),
    ("x${PWD}y", "x/homey"),
    ("\\$PWD", "$PWD"),
    ("$", "$"),
    ("$ ", "$ "),
    ("$1x", "x"),
    ("$UNSET", ""),
    ("${UNSET:-dflt}", "dflt"),
    ("${EMPTY:-dflt}", "dflt"),
    ("${EMPTY-dflt}", ""),
    ("${UNSET-dflt}", "dflt"),
    ("${PWD:-dflt}", "/home"),
    ("${PWD:+alt}", "alt"),
    ("${EMPTY:+alt}", ""),
    ("${EMPTY+alt}", "alt"),
    ("${UNSET+alt}", ""),
    ("${UNSET:-$PWD}", "/home"),
    ("${UNSET:-'a b'}", "a b"),
    ("${PWD?}", "/home"),
    ("${P#*/}", "file.tar.gz"),
    ("${P##*.}", "gz"),
    ("${P%.*}", "dir/file.tar"),
    ("${P%%.*}", "dir/file"),
    ("${P/file/FILE}", "dir/FILE.tar.gz"),
    ("${P//./_}", "dir/file_tar_gz"),
    ("${P/?/X}", "Xir/file.tar.gz"),
    ("${P/x/y/}", "dir/file.tar.gz"),
    ("${V}", "a b  c"),
    ("a\\ b", "a b"),
    ("한국어$PWD", "한국어/home"),
]


@pytest.mark.parametrize(("src", "want"), WORD_CASES)
def test_process_word(src: str, want: str) -> None:
    assert expand_word(src, ENV) == want


ERROR_CASES = [
    ("he'llo", "unexpected end of statement while looking for matching single-quote"),
    ('he"llo', "unexpected end of statement while looking for matching double-quote"),
    ("${", "syntax error: missing '}'"),
    ("${}", "syntax error: bad substitution"),
    ("${:x}", "syntax error: bad substitution"),
    ("${PWD", "unsupported modifier"),
    ("${PWD:-x", "syntax error: missing '}'"),
    ("${UNSET:?}", "UNSET: is not allowed to be unset"),
    ("${EMPTY:?}", "EMPTY: is not allowed to be empty"),
    ("${UNSET?must be set}", "UNSET: must be set"),
    ("${PWD:#x}", "unsupported modifier (:#) in substitution"),
    ("${PWD!}", "unsupported modifier (!) in substitution"),
    ("${PWD/x}", "syntax error: missing '/' in ${}"),
    ("${P#\\a}", "invalid escape '\\a'"),
]


@pytest.mark.parametrize(("src", "msg"), ERROR_CASES)
def test_process_word_errors(src: str, msg: str) -> None:
    with pytest.raises(ShellError) as ei:
        expand_word(src, ENV)
    assert msg in str(ei.value)
    assert str(ei.value).startswith("failed to process ")


WORDS_CASES = [
    ("hello world", ["hello", "world"]),
    ("  a   b  ", ["a", "b"]),
    ('"a b" c', ["a b", "c"]),
    ("$V", ["a", "b", "c"]),
    ('"$V"', ["a b  c"]),
    ("x$V", ["xa", "b", "c"]),
    ("''", []),
    ("a\\ b", ["a b"]),
]


@pytest.mark.parametrize(("src", "want"), WORDS_CASES)
def test_process_words(src: str, want: list[str]) -> None:
    assert expand_words(src, ENV) == want


def test_backtick_escape() -> None:
    assert expand_word("a`$PWD", ENV, escape="`") == "a$PWD"
    assert expand_word("C:\\x", ENV, escape="`") == "C:\\x"


def test_skip_unset_and_raw_modes() -> None:
    lex = ShellLex(raw_quotes=True, skip_unset_env=True)
    assert lex.process_word("'a'$X${Y:-z}", {}) == "'a'$X${Y:-z}"
    assert ShellLex(skip_process_quotes=True).process_word("'$PWD' \"x\"", ENV) == "'/home' \"x\""


def _one(text: str) -> object:
    return parse("FROM scratch\n" + text)[1]


def test_expand_env_label_arg() -> None:
    ins = parse("FROM a\nENV A=$PWD B=\"x $SHELL\" C='$PWD'\n")[1]
    new = expand_instruction(ins, ENV)
    assert new.pairs() == [("A", "/home"), ("B", "x bash"), ("C", "$PWD")]
    assert ins.pairs()[0] == ("A", "$PWD")  # original untouched
    arg = expand_instruction(parse("ARG X=${PWD}/x Y\n")[0], ENV)
    assert arg.args == ["X=/home/x", "Y"]
    lab = expand_instruction(parse('FROM a\nLABEL k="$SHELL"\n')[1], ENV)
    assert lab.pairs() == [("k", "bash")]


def test_expand_copy_and_flags() -> None:
    ins = parse("FROM a\nCOPY --chown=$SHELL:$SHELL --from=b ${PWD}/a $PWD/dst\n")[1]
    new = expand_instruction(ins, ENV)
    assert new.args == ["/home/a", "/home/dst"]
    assert new.flags == ["--chown=bash:bash", "--from=b"]
    assert new.flag_values["chown"] == "bash:bash"
    bad = parse("FROM a\nCOPY --from=$X a b\n")[1]
    with pytest.raises(DockerfileError, match="variable expansion is not supported for --from"):
        expand_instruction(bad, ENV)


def test_expand_heredoc_bodies() -> None:
    ins = parse("FROM a\nCOPY <<A <<'B' /dst/\n$PWD 'q'\nA\n$PWD\nB\n")[1]
    new = expand_instruction(ins, ENV)
    assert [h.content for h in new.heredocs] == ["/home 'q'\n", "$PWD\n"]
    assert new.args[:2] == ["<<A", "<<'B'"]


def test_not_expanded() -> None:
    for line in ("RUN echo $PWD", "CMD echo $PWD", 'ENTRYPOINT ["$PWD"]', "ONBUILD RUN $PWD",
                 "HEALTHCHECK CMD $PWD", 'SHELL ["$PWD"]', "MAINTAINER $PWD"):  # fmt: skip
        ins = parse("FROM a\n" + line + "\n")[1]
        assert expand_instruction(ins, ENV).args == ins.args


def test_expanded_single_words() -> None:
    doc = parse("FROM --platform=$SHELL $SHELL:1\nWORKDIR $PWD/w\nUSER ${SHELL}\n"
                "STOPSIGNAL $SHELL\nVOLUME $PWD /v\nEXPOSE $V 80\n"
                "RUN --mount=type=cache,target=$PWD/c true\n")  # fmt: skip
    got = [expand_instruction(i, ENV) for i in doc]
    assert got[0].args == ["bash:1"] and got[0].flags == ["--platform=bash"]
    assert got[1].args == ["/home/w"]
    assert got[2].args == ["bash"]
    assert got[3].args == ["bash"]
    assert got[4].args == ["/home", "/v"]
    assert got[5].args == ["a", "b", "c", "80"]
    assert got[6].flag_values["mount"] == ["type=cache,target=/home/c"]


def test_expansion_error_is_located() -> None:
    ins = parse("FROM a\n\nWORKDIR ${X:?need X}\n")[1]
    with pytest.raises(DockerfileError) as ei:
        expand_instruction(ins, {})
    assert ei.value.line == 3
    assert "X: need X" in str(ei.value)
