"""The Dockerfile parser: BuildKit's ``frontend/dockerfile/parser`` in Python.

``parse(text)`` gives a list of :class:`~dockyard.build.instructions.Instruction`,
node for node what BuildKit's parser produces (same logical lines, flags,
argument lists, JSON detection, heredocs, line numbers), then applies
BuildKit's instruction checks. ``parse(text, validate=False)`` stops at the
parser, which accepts unknown instructions and bad flags just as BuildKit's
parser does.

Quirks kept on purpose because BuildKit has them: flags are read byte by byte
(non-ASCII in a flag comes out as Latin-1 mojibake), a line ending in an
escaped escape token (``foo \\\\``) still continues, comment lines inside a
continuation are dropped, heredoc names are lexed with ``\\`` even under
``# escape=`​```.
"""

from __future__ import annotations

import json as _json
import re

from .errors import DockerfileError
from .instructions import Heredoc, Instruction, validate
from .shell import GO_SPACES, ShellError, ShellLex

_WS = re.compile(r"[\t\v\f\r ]+")
_HEREDOC = re.compile(r"([0-9]*)<<(-?)[\t\n\f\r ]*([^<]*)", re.DOTALL)
_DIRECTIVE = re.compile(r"([a-zA-Z][a-zA-Z0-9]*)[\t\n\f\r ]*=[\t\n\f\r ]*(.+?)[\t\n\f\r ]*")
_DIRECTIVES = ("syntax", "escape", "check")
_GO_ASCII_SPACE = " \t\n\v\f\r"
_HEREDOC_CMDS = ("add", "copy", "run")


class _NotStringArray(Exception):
    pass


class _State:
    def __init__(self) -> None:
        self.escape = "\\"
        self.cont = self._cont_regex("\\")
        self.done = False
        self.seen: set[str] = set()
        self.directives: dict[str, str] = {}

    @staticmethod
    def _cont_regex(tok: str) -> re.Pattern[str]:
        e = re.escape(tok)
        return re.compile(rf"([^{e}]){e}[ \t]*\Z|^{e}[ \t]*\Z", re.DOTALL)

    def directive(self, line: str) -> bool:
        """possibleParserDirective: True when ``line`` is a parser directive."""
        if self.done:
            return False
        if not line.startswith("#"):
            self.done = True
            return False
        m = _DIRECTIVE.fullmatch(lstrip_go(line[1:]))
        if m is None or m.group(1).lower() not in _DIRECTIVES:
            self.done = True
            return False
        key, value = m.group(1).lower(), m.group(2)
        if key in self.seen:
            raise ValueError(f"only one {key} parser directive can be used")
        self.seen.add(key)
        self.directives[key] = value
        if key == "escape":
            if value not in ("`", "\\"):
                raise ValueError(f"invalid escape token '{value}' does not match ` or \\")
            self.escape = value
            self.cont = self._cont_regex(value)
        return True

    def trim_continuation(self, line: str) -> tuple[str, bool]:
        if self.cont.search(line):
            return self.cont.sub(r"\1", line), False
        return line, True


def lstrip_go(s: str) -> str:
    i = 0
    while i < len(s) and s[i] in GO_SPACES:
        i += 1
    return s[i:]


def strip_go(s: str) -> str:
    s = lstrip_go(s)
    j = len(s)
    while j > 0 and s[j - 1] in GO_SPACES:
        j -= 1
    return s[:j]


def _is_comment(line: str) -> bool:
    return lstrip_go(line).startswith("#")


def _trim_newline(s: str) -> str:
    return s.rstrip("\r\n")


# -- line parsers (line_parsers.go) ---------------------------------------------


def _parse_words(rest: str, esc: str) -> list[str]:
    words: list[str] = []
    buf: list[str] = []
    in_word, in_quote = False, False
    quote = ""
    blank_ok = False
    i, n = 0, len(rest)
    while i < n:
        ch = rest[i]
        if not in_word and not in_quote:
            if ch in GO_SPACES:
                i += 1
                continue
            in_word = True
        if in_word:
            if ch in GO_SPACES:
                in_word = False
                if blank_ok or buf:
                    words.append("".join(buf))
                buf, blank_ok = [], False
                i += 1
                continue
            if ch in ("'", '"'):
                quote, blank_ok, in_word, in_quote = ch, True, False, True
            if ch == esc and not in_quote:
                if i + 1 == n:
                    i += 1
                    continue
                buf.append(ch)
                i += 1
                ch = rest[i]
            buf.append(ch)
            i += 1
            continue
        # in quote
        if ch == quote:
            in_quote, in_word = False, True
        if ch == esc and quote != "'":
            if i + 1 == n:
                in_quote, in_word = False, True
                i += 1
                continue
            i += 1
            buf.append(ch)
            ch = rest[i]
        buf.append(ch)
        i += 1
    if (in_word or in_quote) and (blank_ok or buf):
        words.append("".join(buf))
    return words


def _parse_name_val(rest: str, key: str, esc: str) -> list[str]:
    words = _parse_words(rest, esc)
    if not words:
        return []
    if "=" not in words[0]:
        parts = _WS.split(rest, maxsplit=1)
        if len(parts) < 2:
            raise ValueError(f"{key} must have two arguments")
        return [parts[0], parts[1], ""]
    out: list[str] = []
    for w in words:
        if "=" not in w:
            raise ValueError(
                f"Syntax error - can't find = in {_go_q(w)}. Must be of the form: name=value"
            )
        k, _, v = w.partition("=")
        out += [k, v, "="]
    return out


def _go_q(s: str) -> str:
    from .shell import go_quote

    return go_quote(s)


def _reject_constant(name: str) -> object:
    raise ValueError(name)


def _go_number(text: str) -> object:
    if float(text) in (float("inf"), float("-inf")):
        raise ValueError(text)
    return 0


def _parse_json(rest: str) -> list[str] | None:
    """The array of strings, None when not JSON; _NotStringArray for other arrays."""
    rest = lstrip_go(rest)
    if not rest.startswith("["):
        return None
    try:
        val = _json.loads(
            rest, parse_constant=_reject_constant, parse_float=_go_number, parse_int=_go_number
        )
    except (ValueError, RecursionError):
        return None
    if not isinstance(val, list):
        return None
    if not all(isinstance(v, str) for v in val):
        raise _NotStringArray
    return [v.encode("utf-16", "surrogatepass").decode("utf-16", "replace") for v in val]


def _maybe_json(rest: str) -> tuple[list[str], bool]:
    if rest == "":
        return [], False
    got = _parse_json(rest)
    return ([rest], False) if got is None else (got, True)


def _maybe_json_list(rest: str) -> tuple[list[str], bool]:
    got = _parse_json(rest)
    if got is not None:
        return got, True
    return ([] if rest == "" else _WS.split(rest)), False


def _health(rest: str) -> tuple[list[str], bool]:
    b = rest.encode("utf-8", "surrogateescape")
    sep = 0
    while sep < len(b) and chr(b[sep]) not in GO_SPACES:
        sep += 1
    nxt = sep
    while nxt < len(b) and chr(b[nxt]) in GO_SPACES:
        nxt += 1
    if sep == 0:
        return [], False
    typ = b[:sep].decode("utf-8", "surrogateescape")
    args, js = _maybe_json(b[nxt:].decode("utf-8", "surrogateescape"))
    return [typ, *args], js


# -- split_command.go -------------------------------------------------------------


def _extract_flags(line: str, esc: str) -> tuple[str, list[str]]:
    """Leading ``--flag`` words; byte-wise like BuildKit's extractBuilderFlags."""
    b = line.encode("utf-8", "surrogateescape")
    n = len(b)
    words: list[str] = []
    word: list[str] = []
    phase = 0  # 0 spaces, 1 word, 2 quote
    quote = ""
    blank_ok = False
    escb = ord(esc)
    pos = 0
    while pos <= n:
        ch = chr(b[pos]) if pos < n else ""
        if phase == 0:
            if pos == n:
                break
            if ch in GO_SPACES:
                pos += 1
                continue
            if ch != "-" or pos + 1 == n or b[pos + 1] != ord("-"):
                return b[pos:].decode("utf-8", "surrogateescape"), words
            phase = 1
        if pos == n:
            w = "".join(word)
            if w != "--" and (blank_ok or w):
                words.append(w)
            break
        if phase == 1:
            if ch in GO_SPACES:
                w = "".join(word)
                phase = 0
                if w == "--":
                    return b[pos:].decode("utf-8", "surrogateescape"), words
                if blank_ok or w:
                    words.append(w)
                word, blank_ok = [], False
                pos += 1
                continue
            if ch in ("'", '"'):
                quote, blank_ok, phase = ch, True, 2
                pos += 1
                continue
        elif ch == quote:
            phase = 1
            pos += 1
            continue
        if b[pos] == escb:
            if pos + 1 == n:
                if phase == 2:
                    phase = 1
                pos += 1
                continue
            pos += 1
            ch = chr(b[pos])
        word.append(ch)
        pos += 1
    return "", words


def _new_node(line: str, st: _State) -> Instruction:
    parts = _WS.split(strip_go(line), maxsplit=1)
    keyword = parts[0]
    flags: list[str] = []
    rest = ""
    if len(parts) == 2:
        rest, flags = _extract_flags(parts[1], st.escape)
        rest = strip_go(rest)
    cmd = keyword.lower()
    sub = None
    js = False
    if cmd in ("add", "copy", "volume"):
        args, js = _maybe_json_list(rest)
    elif cmd in ("cmd", "entrypoint", "run", "shell"):
        args, js = _maybe_json(rest)
    elif cmd in ("env", "label"):
        args = _parse_name_val(rest, "ENV" if cmd == "env" else "LABEL", st.escape)
    elif cmd == "arg":
        args = _parse_words(rest, st.escape)
    elif cmd in ("expose", "from"):
        args = [] if rest == "" else _WS.split(rest)
    elif cmd in ("maintainer", "stopsignal", "user", "workdir"):
        args = [] if rest == "" else [rest]
    elif cmd == "healthcheck":
        args, js = _health(rest)
    elif cmd == "onbuild":
        args = []
        if rest != "":
            sub = _new_node(rest, st)
            sub.original = rest
    else:
        args = [""]
    return Instruction(keyword, args, flags=flags, json=js, original=line, sub=sub)


# -- heredocs ---------------------------------------------------------------------


def parse_heredoc_word(word: str) -> Heredoc | None:
    """ParseHeredoc: ``<<EOF``, ``<<-EOF``, ``3<<"EOF"`` → Heredoc (no content)."""
    m = _HEREDOC.fullmatch(word)
    if m is None or not m.group(3):
        return None
    fd = int(m.group(1)) if m.group(1) else 0
    rest = m.group(3)
    words = ShellLex("\\", skip_unset_env=True).process_words(rest)
    if len(words) != 1:
        return None
    raw = ShellLex("\\", skip_unset_env=True, raw_quotes=True).process_words(rest)
    if len(raw) != len(words):
        raise ShellError(f"internal lexing of heredoc produced inconsistent results: {rest}")
    name = words[0]
    quotes = name.count("'") + name.count('"')
    raw_quotes = raw[0].count("'") + raw[0].count('"')
    return Heredoc(name, "", expand=quotes == raw_quotes, chomp=m.group(2) == "-", fd=fd)


def _heredocs_from_line(line: str) -> list[Heredoc]:
    lex = ShellLex("\\", raw_quotes=True, raw_escapes=True, skip_unset_env=True)
    try:
        words = lex.process_words(line)
    except ShellError:
        words = []
    docs = []
    for w in words:
        h = parse_heredoc_word(w)
        if h is not None:
            docs.append(h)
    return docs


# -- the main loop (parser.go Parse) ---------------------------------------------------


def parse(
    text: str | bytes, *, filename: str = "Dockerfile", validate_instructions: bool = True
) -> list[Instruction]:
    """Parse a Dockerfile; raises DockerfileError like BuildKit would."""
    instrs, _ = parse_with_directives(text, filename=filename)
    if validate_instructions:
        validate(instrs, filename)
    return instrs


def parse_with_directives(
    text: str | bytes, *, filename: str = "Dockerfile"
) -> tuple[list[Instruction], dict[str, str]]:
    """Parser only (no instruction checks); also returns the parser directives."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "surrogateescape")
    lines = _split_lf(text)
    st = _State()
    out: list[Instruction] = []
    cur = 0
    i, n = 0, len(lines)

    def fail(
        msg: str, start: int, end: int | None = None, src: str | None = None
    ) -> DockerfileError:
        return DockerfileError(msg, max(start, 1), end, src, filename)

    while i < n:
        raw = lines[i]
        i += 1
        if cur == 0 and raw.startswith("\ufeff"):
            raw = raw[1:]
        tok = lstrip_go(_trim_newline(raw))
        try:
            st.directive(tok)
        except ValueError as e:
            raise fail(str(e), cur + 1, src=tok) from None
        if _is_comment(tok):
            tok = ""
        cur += 1
        start = cur
        tok, eol = st.trim_continuation(tok)
        if eol and tok == "":
            continue
        buf = [tok]
        while not eol and i < n:
            raw2 = lines[i]
            i += 1
            t2 = _trim_newline(raw2)
            try:
                st.directive(t2)
            except ValueError as e:
                raise fail(str(e), cur + 1, src=t2) from None
            cur += 1
            if _is_comment(raw2):
                continue
            if lstrip_go(t2) == "":
                continue
            t2, eol = st.trim_continuation(t2)
            buf.append(t2)
        line = "".join(buf)
        try:
            node = _new_node(line, st)
        except _NotStringArray:
            raise fail(
                "when using JSON array syntax, arrays must be comprised of strings only",
                start,
                cur,
                line,
            ) from None
        except ValueError as e:
            raise fail(str(e), start, cur, line) from None
        target = node.sub if node.cmd == "onbuild" and node.sub is not None else node
        if target.cmd in _HEREDOC_CMDS and not target.json and "<<" in line:
            try:
                docs = _heredocs_from_line(line)
            except ShellError as e:
                raise fail(str(e), start, cur, line) from None
            for h in docs:
                content: list[str] = []
                terminated = False
                while i < n:
                    body = lines[i]
                    i += 1
                    cur += 1
                    cand = _trim_newline(body)
                    if h.chomp:
                        cand = cand.lstrip("\t")
                    if cand == h.name:
                        terminated = True
                        break
                    content.append(body)
                if not terminated:
                    raise fail("unterminated heredoc", start, cur, line)
                h.content = "".join(content)
                node.heredocs.append(h)
        node.start_line, node.end_line = start, cur
        if node.sub is not None:
            node.sub.start_line, node.sub.end_line = start, cur
        out.append(node)
    if not out:
        raise DockerfileError("file with no instructions", None, None, None, filename)
    return out, st.directives


def _split_lf(text: str) -> list[str]:
    parts = text.split("\n")
    lines = [p + "\n" for p in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines
