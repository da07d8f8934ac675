""".dockerignore: moby's `ignorefile` reader and `patternmatcher` matcher, ported exactly.

Reading (`ignorefile.ReadAll`): a UTF-8 BOM is stripped from the first line; a line
that starts with `#` is a comment (checked *before* trimming, so `  #x` is a pattern);
whitespace is trimmed, blank lines skipped; a leading `!` marks an exception; the rest
is `filepath.Clean`ed and one leading `/` is dropped (`/a` means `a`).

Matching (`patternmatcher.New` + `MatchesUsingParentResults`, what BuildKit's fsutil
and moby's archive use while walking): each pattern is validated with Go's
`filepath.Match(p, ".")`, then compiled the way moby compiles it — `*` is `[^/]*`,
`?` is `[^/]`, `**` (optionally followed by `/`) is `(.*/)?` (any number of
directories, zero included), `**` at the end matches everything below, `[...]`
classes and `\\` escapes pass through to a Go regexp, which is translated here to
Python's `re` with Go's meaning. Patterns are applied in order and the last one that
matches decides (an exception un-ignores). A pattern that matches a directory also
matches everything below it, through the per-pattern "parent matched" results the
walker carries down the tree. Like Go's regexp, `[!a]` is not a negation (only `[^a]`).
"""

from __future__ import annotations

import re
from pathlib import Path

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    from collections.abc import Iterable

EXACT, PREFIX, SUFFIX, REGEXP = range(4)
_SHOULD_ESCAPE = frozenset(".+()|{}$")
# Go's unicode.IsSpace (strings.TrimSpace); str.strip() would also eat \x1c-\x1f.
_GO_SPACE = "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"  # noqa: E501
_CACHE_LIMIT = 65536


class DockerignoreError(ValueError):
    """A malformed .dockerignore pattern (or an unreadable .dockerignore file)."""


def go_clean(path: str) -> str:
    """Go's `path/filepath.Clean` for '/'-separated paths."""
    rooted = path.startswith("/")
    out: list[str] = []
    for part in path.split("/"):
        if part == ".." and out and out[-1] != "..":
            out.pop()
        elif part not in ("", ".") and not (part == ".." and rooted):
            out.append(part)
    joined = "/".join(out)
    return "/" + joined if rooted else joined or "."


def read_patterns(data: bytes | str | Iterable[str]) -> list[str]:
    """The patterns of an ignore file (`ignorefile.ReadAll`), `!` kept on exceptions."""
    if isinstance(data, bytes):
        data = data.decode("utf-8", "surrogateescape")
    lines = data.split("\n") if isinstance(data, str) else list(data)
    patterns: list[str] = []
    for number, raw in enumerate(lines):
        line = raw[:-1] if raw.endswith("\r") else raw  # bufio.ScanLines drops one \r
        if number == 0 and line.startswith("\ufeff"):
            line = line[1:]
        if line.startswith("#"):
            continue
        pattern = line.strip(_GO_SPACE)
        if not pattern:
            continue
        invert = pattern[0] == "!"
        if invert:
            pattern = pattern[1:].strip(_GO_SPACE)
        if pattern:
            pattern = go_clean(pattern)
            if len(pattern) > 1 and pattern[0] == "/":
                pattern = pattern[1:]
        patterns.append("!" + pattern if invert else pattern)
    return patterns


# --- Go's filepath.Match, used (as moby does) only to reject malformed patterns ---------


class _BadPattern(Exception):
    pass


def _scan_chunk(pattern: str) -> tuple[bool, str, str]:
    star = False
    while pattern.startswith("*"):
        pattern, star = pattern[1:], True
    inrange = False
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            if i + 1 < len(pattern):
                i += 1
        elif c == "[":
            inrange = True
        elif c == "]":
            inrange = False
        elif c == "*" and not inrange:
            break
        i += 1
    return star, pattern[:i], pattern[i:]


def _get_esc(chunk: str) -> tuple[str, str]:
    if not chunk or chunk[0] in "-]":
        raise _BadPattern
    if chunk[0] == "\\":
        chunk = chunk[1:]
        if not chunk:
            raise _BadPattern
    r, rest = chunk[0], chunk[1:]
    if "\udc80" <= r <= "\udcff" or not rest:  # invalid UTF-8 (surrogateescape), or no ']'
        raise _BadPattern
    return r, rest


def _match_chunk(chunk: str, s: str) -> tuple[str, bool]:
    failed = False
    while chunk:
        if not failed and not s:
            failed = True
        c = chunk[0]
        if c == "[":
            r = ""
            if not failed:
                r, s = s[0], s[1:]
            chunk = chunk[1:]
            negated = chunk.startswith("^")
            if negated:
                chunk = chunk[1:]
            match, nrange = False, 0
            while True:
                if chunk.startswith("]") and nrange > 0:
                    chunk = chunk[1:]
                    break
                lo, chunk = _get_esc(chunk)
                hi = lo
                if chunk[0] == "-":
                    hi, chunk = _get_esc(chunk[1:])
                if r and lo <= r <= hi:
                    match = True
                nrange += 1
            if match == negated:
                failed = True
        elif c == "?":
            if not failed:
                if s[0] == "/":
                    failed = True
                s = s[1:]
            chunk = chunk[1:]
        else:
            if c == "\\":
                chunk = chunk[1:]
                if not chunk:
                    raise _BadPattern
            if not failed:
                if chunk[0] != s[0]:
                    failed = True
                s = s[1:]
            chunk = chunk[1:]
    return ("", False) if failed else (s, True)


def go_filepath_match(pattern: str, name: str) -> bool:
    """Go's `path/filepath.Match` on Unix; DockerignoreError for a malformed pattern."""
    original = pattern
    try:
        while pattern:
            star, chunk, pattern = _scan_chunk(pattern)
            if star and not chunk:
                return "/" not in name
            t, ok = _match_chunk(chunk, name)
            if ok and (not t or pattern):
                name = t
                continue
            if star:
                found = False
                i = 0
                while i < len(name) and name[i] != "/":
                    t, ok = _match_chunk(chunk, name[i + 1 :])
                    if ok and not (not pattern and t):
                        name, found = t, True
                        break
                    i += 1
                if found:
                    continue
            while pattern:  # the rest must still be well formed
                _, chunk, pattern = _scan_chunk(pattern)
                _match_chunk(chunk, "")
            return False
        return not name
    except _BadPattern:
        raise DockerignoreError(f"syntax error in pattern {pattern_repr(original)}") from None


def pattern_repr(pattern: str) -> str:
    return '"' + pattern.encode("utf-8", "surrogateescape").decode("utf-8", "replace") + '"'


# --- Go regexp (RE2 syntax, as moby's generated strings use it) to Python re ------------

# Go's POSIX classes as lo/hi pairs: name=lohilohi…
_POSIX = dict(
    item.split("=", 1)
    for item in [
        "alnum=09AZaz",
        "alpha=AZaz",
        "ascii=\x00\x7f",
        "blank=\t\t  ",
        "cntrl=\x00\x1f\x7f\x7f",
        "digit=09",
        "graph=!~",
        "lower=az",
        "print= ~",
        "punct=!/:@[`{~",
        "space=\t\r  ",
        "upper=AZ",
        "word=09AZ__az",
        "xdigit=09AFaf",
    ]
)
_PERL = {"d": "09", "s": "\t\n\f\r  ", "w": "09AZ__az"}
_SIMPLE_ESC = {"a": "\a", "f": "\f", "t": "\t", "n": "\n", "r": "\r", "v": "\v"}
_MAX_RUNE = 0x10FFFF


def _pairs(spec: str) -> list[tuple[int, int]]:
    return [(ord(spec[i]), ord(spec[i + 1])) for i in range(0, len(spec), 2)]


def _negate(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out, nxt = [], 0
    for lo, hi in sorted(ranges):
        if lo > nxt:
            out.append((nxt, lo - 1))
        nxt = max(nxt, hi + 1)
    if nxt <= _MAX_RUNE:
        out.append((nxt, _MAX_RUNE))
    return out


def _class_text(ranges: list[tuple[int, int]], negated: bool = False) -> str:
    def one(c: int) -> str:
        ch = chr(c)
        return ch if ch.isascii() and ch.isalnum() else f"\\U{c:08x}"

    body = "".join(one(lo) if lo == hi else f"{one(lo)}-{one(hi)}" for lo, hi in ranges)
    if not body:  # an empty class matches nothing; its negation anything
        return "[\\s\\S]" if negated else "(?!)"
    return "[" + ("^" if negated else "") + body + "]"


def _escape(s: str, i: int) -> tuple[int, int]:
    """Go's parseEscape at s[i] == '\\': (code point, next index)."""
    if i + 1 >= len(s):
        raise _BadPattern
    c, i = s[i + 1], i + 2
    if "1" <= c <= "7" and not (i < len(s) and "0" <= s[i] <= "7"):
        raise _BadPattern  # a back-reference: unsupported
    if "0" <= c <= "7":
        value = ord(c) - 48
        for _ in range(2):
            if i < len(s) and "0" <= s[i] <= "7":
                value, i = value * 8 + ord(s[i]) - 48, i + 1
        return value, i
    if c == "x":  # `\x{…}` can't occur: moby escapes every `{`
        digits = s[i : i + 2]
        if len(digits) != 2 or any(d not in "0123456789abcdefABCDEF" for d in digits):
            raise _BadPattern
        return int(digits, 16), i + 2
    if c in _SIMPLE_ESC:
        return ord(_SIMPLE_ESC[c]), i
    if c.isascii() and not c.isalnum():
        return ord(c), i
    raise _BadPattern


def _perl_class(s: str, i: int) -> list[tuple[int, int]] | None:
    if s[i] != "\\" or i + 1 >= len(s):
        return None
    c = s[i + 1]
    if c.lower() in _PERL:
        ranges = _pairs(_PERL[c.lower()])
        return _negate(ranges) if c.isupper() else ranges
    if c in "pP":
        raise _BadPattern  # Unicode classes are not supported here
    return None


def _parse_class(s: str, i: int) -> tuple[str, int]:
    """Go's parseClass at s[i] == '['; the Python class and the index after ']'."""
    i += 1
    negated = s.startswith("^", i)
    if negated:
        i += 1
    ranges: list[tuple[int, int]] = []
    first = True
    while i >= len(s) or s[i] != "]" or first:
        if i >= len(s):
            raise _BadPattern  # missing closing ]
        first = False
        if s.startswith("[:", i):
            end = s.find(":]", i + 2)
            if end >= 0:
                name = s[i + 2 : end]
                neg = name.startswith("^")
                spec = _POSIX.get(name[1:] if neg else name)
                if spec is None:
                    raise _BadPattern
                group = _pairs(spec)
                ranges += _negate(group) if neg else group
                i = end + 2
                continue
        perl = _perl_class(s, i)
        if perl is not None:
            ranges += perl
            i += 2
            continue
        lo, i = _escape(s, i) if s[i] == "\\" else (ord(s[i]), i + 1)
        hi = lo
        if i + 1 < len(s) and s[i] == "-" and s[i + 1] != "]":
            hi, i = _escape(s, i + 1) if s[i + 1] == "\\" else (ord(s[i + 1]), i + 2)
            if hi < lo:
                raise _BadPattern
        ranges.append((lo, hi))
    return _class_text(ranges, negated), i + 1


def go_regexp_to_python(expr: str) -> re.Pattern[str]:
    """Compile a Go regexp (the subset moby's pattern compiler can emit) with Go's meaning."""
    out: list[str] = []
    i, n = 0, len(expr)
    while i < n:
        c = expr[i]
        if c == "[":
            text, i = _parse_class(expr, i)
            out.append(text)
            continue
        if c == "\\":
            nxt = expr[i + 1] if i + 1 < n else ""
            if nxt == "Q":
                end = expr.find("\\E", i + 2)
                literal = expr[i + 2 :] if end < 0 else expr[i + 2 : end]
                out.append(re.escape(literal))
                i = n if end < 0 else end + 2
                continue
            anchors = {"A": "\\A", "z": "\\Z", "b": "\\b", "B": "\\B"}
            if nxt in anchors:
                out.append(anchors[nxt])
                i += 2
                continue
            perl = _perl_class(expr, i)
            if perl is not None:
                out.append(_class_text(perl))
                i += 2
                continue
            code, i = _escape(expr, i)
            out.append(re.escape(chr(code)))
            continue
        if c == "$":
            out.append("\\Z")
        elif c in "^().*?|+":
            out.append(c)
        else:
            out.append(re.escape(c))
        i += 1
    try:
        return re.compile("".join(out), re.ASCII)
    except re.error:
        raise _BadPattern from None


# --- moby's Pattern and PatternMatcher -----------------------------------------------


class Pattern:
    """One cleaned pattern, compiled on first use exactly as moby's `Pattern.compile`."""

    __slots__ = ("cleaned", "exclusion", "kind", "regexp")

    def __init__(self, cleaned: str, exclusion: bool) -> None:
        self.cleaned = cleaned
        self.exclusion = exclusion
        self.kind = -1
        self.regexp: re.Pattern[str] | None = None

    def __repr__(self) -> str:
        return f"Pattern({'!' if self.exclusion else ''}{self.cleaned})"

    def _compile(self) -> None:
        pat, reg, kind, i = self.cleaned, ["^"], EXACT, 0
        first = True
        while i < len(pat):
            ch = pat[i]
            i += 1
            if ch == "*":
                if i < len(pat) and pat[i] == "*":
                    i += 1
                    if i < len(pat) and pat[i] == "/":
                        i += 1
                    if i >= len(pat):
                        if kind == EXACT:
                            kind = PREFIX
                        else:
                            reg.append(".*")
                            kind = REGEXP
                    else:
                        reg.append("(.*/)?")
                        kind = REGEXP
                    if first:
                        kind = SUFFIX
                else:
                    reg.append("[^/]*")
                    kind = REGEXP
            elif ch == "?":
                reg.append("[^/]")
                kind = REGEXP
            elif ch in _SHOULD_ESCAPE:
                reg.append("\\" + ch)
            elif ch == "\\":
                if i < len(pat):
                    reg.append("\\" + pat[i])
                    i += 1
                    kind = REGEXP
                else:
                    reg.append("\\")
            elif ch in "[]":
                reg.append(ch)
                kind = REGEXP
            else:
                reg.append(ch)
            first = False
        if kind == REGEXP:
            try:
                self.regexp = go_regexp_to_python("".join(reg) + "$")
            except _BadPattern:
                raise DockerignoreError(
                    f"syntax error in pattern {pattern_repr(self.cleaned)}"
                ) from None
        self.kind = kind

    def match(self, path: str) -> bool:
        if self.kind < 0:
            self._compile()
        kind = self.kind
        if kind == EXACT:
            return path == self.cleaned
        if kind == PREFIX:
            return path.startswith(self.cleaned[:-2])
        if kind == SUFFIX:
            suffix = self.cleaned[2:]
            return path.endswith(suffix) or (suffix[0] == "/" and path == suffix[1:])
        assert self.regexp is not None
        return self.regexp.search(path) is not None

    def literal_prefix(self) -> str:
        """The longest literal start of every path this pattern can match."""
        end = len(self.cleaned)
        for stop in "*?[]\\^":
            at = self.cleaned.find(stop)
            if 0 <= at < end:
                end = at
        return self.cleaned[:end]


class IgnoreMatcher:
    """An ordered list of .dockerignore patterns; the last matching pattern wins."""

    def __init__(self, patterns: Iterable[str] = ()) -> None:
        """Patterns as moby's `patternmatcher.New` takes them (see `read_patterns`)."""
        self.patterns: list[Pattern] = []
        for raw in patterns:
            p = go_clean(raw.strip(_GO_SPACE)) if raw.strip(_GO_SPACE) else ""
            if not p:
                continue
            exclusion = p[0] == "!"
            if exclusion:
                if len(p) == 1:
                    raise DockerignoreError('illegal exclusion pattern: "!"')
                p = p[1:]
            go_filepath_match(p, ".")
            self.patterns.append(Pattern(p, exclusion))
        self.exclusions = any(p.exclusion for p in self.patterns)
        self._exception_prefixes = [p.literal_prefix() for p in self.patterns if p.exclusion]
        self._dir_infos: dict[str, tuple[bool, tuple[bool, ...]]] = {}

    @classmethod
    def from_lines(cls, lines: Iterable[str] | str) -> IgnoreMatcher:
        """A matcher from the lines (or text) of a .dockerignore file."""
        return cls(read_patterns(lines))

    @classmethod
    def from_file(cls, path: str | Path) -> IgnoreMatcher:
        """A matcher from a .dockerignore file; DockerignoreError when it can't be read."""
        try:
            data = Path(path).read_bytes()
        except OSError as e:
            raise DockerignoreError(f"cannot read {path}: {e.strerror or e}") from None
        return cls(read_patterns(data))

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def match_info(
        self, path: str, parent: tuple[bool, ...] | None
    ) -> tuple[bool, tuple[bool, ...]]:
        """moby's `MatchesUsingParentResults`: (excluded?, per-pattern info for children).

        `parent` is the info of `path`'s directory, or None when unknown (then every
        parent directory is tried against each pattern, as moby does).
        """
        matched = False
        info = [False] * len(self.patterns)
        for i, pattern in enumerate(self.patterns):
            match = parent[i] if parent else False
            if not match:
                if pattern.exclusion != matched:
                    continue
                match = pattern.match(path)
                if not match and not parent:
                    slash = path.rfind("/")
                    if slash > 0:
                        dirs = path[:slash].split("/")
                        for k in range(len(dirs)):
                            if pattern.match("/".join(dirs[: k + 1])):
                                match = True
                                break
            info[i] = match
            if match:
                matched = not pattern.exclusion
        return matched, tuple(info)

    def _info(self, path: str) -> tuple[bool, tuple[bool, ...]]:
        """match_info of `path` with its ancestors' infos, computed top-down and cached."""
        cached = self._dir_infos.get(path)
        if cached is not None:
            return cached
        slash = path.rfind("/")
        parent = self._info(path[:slash])[1] if slash > 0 else None
        result = self.match_info(path, parent)
        if len(self._dir_infos) >= _CACHE_LIMIT:
            self._dir_infos.clear()
        self._dir_infos[path] = result
        return result

    def matches(self, relpath: str, is_dir: bool = False) -> bool:
        """Whether `relpath` (context-relative, '/'-separated) is ignored.

        `is_dir` does not change the answer (moby matches directories and files alike;
        a trailing '/' in a pattern is cleaned away); it is accepted for callers' clarity.
        """
        path = normalize_relpath(relpath)
        if path == "." or not self.patterns:
            return False
        return self._info(path)[0]

    def parent_info(self, relpath: str) -> tuple[bool, ...] | None:
        """The info to pass to match_info for the entries directly inside `relpath`."""
        path = normalize_relpath(relpath)
        if path == "." or not self.patterns:
            return None
        return self._info(path)[1]

    def could_include_below(self, dir_relpath: str) -> bool:
        """Whether an exception could re-include something below the excluded directory.

        False means the directory may be pruned from a walk without changing what is
        included; the answer errs on True (it compares each exception's literal start
        with the directory, as fsutil's prefix check does, and allows wildcards).
        """
        if not self.exclusions:
            return False
        below = normalize_relpath(dir_relpath).rstrip("/") + "/"
        if below == "./":
            return True
        return any(p.startswith(below) or below.startswith(p) for p in self._exception_prefixes)


def normalize_relpath(relpath: str) -> str:
    """A context-relative path as the matcher sees it: cleaned, no leading '/'."""
    path = go_clean(relpath)
    return path.lstrip("/") or "."


def find_ignore_file(context_dir: str | Path, dockerfile_path: str | Path | None) -> Path | None:
    """The ignore file in force: `<Dockerfile>.dockerignore` next to the Dockerfile first,
    then `.dockerignore` in the context root (BuildKit's order); None when neither exists.
    """
    if dockerfile_path is not None and str(dockerfile_path) not in ("", "-"):
        dockerfile = Path(dockerfile_path)
        specific = dockerfile.with_name(dockerfile.name + ".dockerignore")
        if specific.is_file():
            return specific
    common = Path(context_dir) / ".dockerignore"
    return common if common.is_file() else None


def load_matcher(context_dir: str | Path, dockerfile_path: str | Path | None) -> IgnoreMatcher:
    """The matcher for a build: from the ignore file in force, or one that ignores nothing."""
    path = find_ignore_file(context_dir, dockerfile_path)
    return IgnoreMatcher() if path is None else IgnoreMatcher.from_file(path)
