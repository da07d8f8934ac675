"""A small evaluator for the Go text/template subset Docker's `--format`/`-f` use.

Pure: `render(text, data)` over plain JSON-like data (dicts, lists, str, int,
float, bool, None), printing values as Go prints what docker's templates see:
the Engine API's typed fields, or JSON decoded with UseNumber. So integers print
as integers (67108864), floats as Go's %v of a float64 (0.5, 1e+06), maps as
`map[k:v]`, lists as `[a b]`, null as `<nil>`.

Supported: plain text; `{{.A.B}}`, `{{.}}`, `{{- … -}}` trimming; pipelines with
`|`; literals ("…", `…`, numbers, true/false/nil); parentheses; functions json,
index, len, print, println, printf (%s %d %v %q %f), join, split, upper, lower,
title, not, and, or, eq, ne, lt, le, gt, ge; `if`/`else if`/`else`/`end`,
`range`/`else`/`end`, `with`/`else`/`end`.

A missing map key is an error, worded as Go's with missingkey=error:
`template: :1:2: executing "" at <.Nope>: map has no entry for key "Nope"`.
"""

from __future__ import annotations

import re

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any


class TemplateError(ValueError):
    """A template that can't be parsed or executed; the message is Go's."""


_TOKEN = re.compile(
    r"""\s*(?:
      (?P<str>"(?:[^"\\]|\\.)*")
    | (?P<raw>`[^`]*`)
    | (?P<field>(?:\.[A-Za-z_][A-Za-z0-9_]*)+|\.)
    | (?P<num>-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)
    | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
    | (?P<punct>[|()])
    )""",
    re.VERBOSE,
)


class _Node:
    pos = 0


class _Text(_Node):
    def __init__(self, text: str) -> None:
        self.text = text


class _Action(_Node):
    """A pipeline: commands separated by `|`; each command a list of args."""

    def __init__(self, commands: list[list[Any]], pos: int) -> None:
        self.commands = commands
        self.pos = pos


class _Block(_Node):
    def __init__(self, kind: str, pipe: _Action) -> None:
        self.kind = kind  # if, range, with
        self.pipe = pipe
        self.body: list[_Node] = []
        self.alternative: list[_Node] = []


class _Field:
    def __init__(self, path: list[str], pos: int) -> None:
        self.path = path
        self.pos = pos


class _Ident:
    def __init__(self, name: str, pos: int) -> None:
        self.name = name
        self.pos = pos


class _Chain(_Node):
    """A parenthesized pipeline followed by fields: `(index .M "k").Name`."""

    def __init__(self, group: _Action, path: list[str], pos: int) -> None:
        self.group = group
        self.path = path
        self.pos = pos


def _error(source: str, pos: int, message: str) -> TemplateError:
    line = source.count("\n", 0, pos) + 1
    start = source.rfind("\n", 0, pos)
    col = pos if start < 0 else pos - start - 1
    return TemplateError(f"template: :{line}:{col}: {message}")


def _parse_pipeline(source: str, start: int, end: int) -> _Action:
    tokens: list[tuple[str, str, int]] = []
    pos = start
    while pos < end:
        if not source[pos:end].strip():
            break
        m = _TOKEN.match(source, pos, end)
        if not m or m.end() == pos:
            bad = source[pos:end].strip()[:1]
            raise TemplateError(f"template: :1: unexpected {bad!r} in command")
        kind = m.lastgroup or ""
        tokens.append((kind, m.group(kind), m.start(kind)))
        pos = m.end()
    items, rest = _commands(tokens, 0, source)
    if rest != len(tokens):
        raise TemplateError('template: :1: unexpected ")" in operand')
    return _Action(items, start)


def _commands(tokens: list[tuple[str, str, int]], i: int, source: str) -> tuple[list[Any], int]:
    commands: list[list[Any]] = [[]]
    while i < len(tokens):
        kind, text, pos = tokens[i]
        if kind == "punct" and text == ")":
            break
        if kind == "punct" and text == "|":
            commands.append([])
        elif kind == "punct" and text == "(":
            inner, i = _commands(tokens, i + 1, source)
            if i >= len(tokens) or tokens[i][1] != ")":
                raise TemplateError("template: :1: unclosed left paren")
            group: Any = _Action(inner, pos)
            after = tokens[i + 1] if i + 1 < len(tokens) else None
            if after is not None and after[0] == "field" and after[2] == tokens[i][2] + 1:
                # `(index .Networks "x").IPAddress`: fields of the group's value
                group = _Chain(group, [p for p in after[1].split(".") if p], after[2])
                i += 1
            commands[-1].append(group)
        elif kind == "field":
            commands[-1].append(_Field([p for p in text.split(".") if p], pos))
        elif kind == "str":
            commands[-1].append(_unquote(text))
        elif kind == "raw":
            commands[-1].append(text[1:-1])
        elif kind == "num":
            commands[-1].append(float(text) if any(c in text for c in ".eE") else int(text))
        elif text in ("true", "false"):
            commands[-1].append(text == "true")
        elif text == "nil":
            commands[-1].append(None)
        else:
            commands[-1].append(_Ident(text, pos))
        i += 1
    if any(not c for c in commands):
        raise TemplateError("template: :1: missing value for command")
    return commands, i


def _unquote(text: str) -> str:
    import json

    try:
        return str(json.loads(text))
    except ValueError:
        raise TemplateError(f"template: :1: invalid syntax {text}") from None


def parse(source: str) -> list[_Node]:
    root: list[_Node] = []
    stack: list[tuple[_Block, bool]] = []  # (block, in its else part)

    def target() -> list[_Node]:
        if not stack:
            return root
        block, in_else = stack[-1]
        return block.alternative if in_else else block.body

    pos = 0
    while True:
        open_at = source.find("{{", pos)
        text = source[pos:] if open_at < 0 else source[pos:open_at]
        inner_start = open_at + 2
        trim_before = source[inner_start : inner_start + 1] == "-"
        if open_at >= 0 and trim_before and source[inner_start + 1 : inner_start + 2].isspace():
            text = text.rstrip()
            inner_start += 1
        if text:
            target().append(_Text(text))
        if open_at < 0:
            break
        close = source.find("}}", inner_start)
        if close < 0:
            raise TemplateError("template: :1: unclosed action")
        inner_end = close
        pos = close + 2
        trim_after = source[close - 1 : close] == "-" and source[close - 2 : close - 1].isspace()
        if trim_after:
            inner_end -= 1
        body = source[inner_start:inner_end]
        word = body.split(None, 1)[0] if body.strip() else ""
        word_at = inner_start + len(body) - len(body.lstrip())
        after_word = word_at + len(word)
        if word in ("if", "range", "with"):
            block = _Block(word, _parse_pipeline(source, after_word, inner_end))
            target().append(block)
            stack.append((block, False))
        elif word == "else":
            if not stack or stack[-1][1]:
                raise _error(source, word_at, "unexpected {{else}}")
            block, _ = stack.pop()
            stack.append((block, True))
            rest = source[after_word:inner_end].split(None, 1)
            if rest and rest[0] == "if":  # else if: a nested if closed by the same end
                nested_at = source.index("if", after_word)
                nested = _Block("if", _parse_pipeline(source, nested_at + 2, inner_end))
                nested.kind = "elseif"
                block.alternative.append(nested)
                stack.append((nested, False))
        elif word == "end":
            if not stack:
                raise _error(source, word_at, "unexpected {{end}}")
            while stack and stack.pop()[0].kind == "elseif":
                pass
        elif word.startswith("/*") or not body.strip():
            pass
        else:
            target().append(_parse_pipeline(source, inner_start, inner_end))
        if trim_after:
            pos = len(source) - len(source[pos:].lstrip())
    if stack:
        raise TemplateError("template: :1: unexpected EOF")
    return root


# ------------------------------------------------------------------ printing


def go_float(value: float) -> str:
    """Go's %v of a float64 (strconv 'g', shortest, exponent threshold 21 → 6)."""
    from decimal import Decimal

    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    if value == 0:
        return "0"
    sign, digits, exp = Decimal(repr(float(value))).normalize().as_tuple()
    assert isinstance(exp, int)
    ds = "".join(map(str, digits))
    e = len(ds) + exp - 1
    neg = "-" if sign else ""
    if e < -4 or e >= 6:  # shortest precision: Go decides at 6 digits
        mant = ds[0] + ("." + ds[1:] if len(ds) > 1 else "")
        return f"{neg}{mant}e{'-' if e < 0 else '+'}{abs(e):02d}"
    if exp >= 0:
        return neg + ds + "0" * exp
    point = len(ds) + exp
    if point > 0:
        return f"{neg}{ds[:point]}.{ds[point:]}"
    return f"{neg}0.{'0' * -point}{ds}"


def go_print(value: Any) -> str:
    """Go's fmt %v of a JSON-decoded value."""
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return go_float(value)
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return "map[" + " ".join(f"{k}:{go_print(value[k])}" for k in sorted(value)) + "]"
    if isinstance(value, list | tuple):
        return "[" + " ".join(go_print(v) for v in value) + "]"
    return str(value)


def to_json(value: Any) -> str:
    import json

    return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)


def _truth(value: Any) -> bool:
    return bool(value) if value is not None else False


def _index(item: Any, *keys: Any) -> Any:
    for key in keys:
        if isinstance(item, dict):
            item = item.get(key if isinstance(key, str) else str(key))
        elif isinstance(item, list | str):
            if not isinstance(key, int | float) or not 0 <= int(key) < len(item):
                raise TemplateError(f"error calling index: index out of range: {key}")
            item = item[int(key)]
        elif item is None:
            raise TemplateError("error calling index: index of untyped nil")
        else:
            raise TemplateError(f"error calling index: can't index item of type {type(item)}")
    return item


def _printf(fmt: str, *args: Any) -> str:
    values = iter(args)

    def one(m: re.Match[str]) -> str:
        verb = m.group(1)
        if verb == "%":
            return "%"
        value = next(values, None)
        if verb == "q":
            return to_json(go_print(value))
        if verb == "d" and isinstance(value, int | float):
            return str(int(value))
        if verb == "f" and isinstance(value, int | float):
            return f"{float(value):f}"
        return go_print(value)

    return re.sub(r"%([sdvqf%])", one, fmt)


def _compare(op: Callable[[Any, Any], bool]) -> Callable[..., bool]:
    def check(a: Any, *others: Any) -> bool:
        return any(op(a, b) for b in others) if op is _eq else all(op(a, b) for b in others)

    return check


def _eq(a: Any, b: Any) -> bool:
    return bool(a == b)


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "json": to_json,
    "index": _index,
    "len": lambda v: len(v) if v is not None else 0,
    "print": lambda *a: "".join(go_print(v) for v in a),
    "println": lambda *a: " ".join(go_print(v) for v in a) + "\n",
    "printf": _printf,
    "join": lambda items, sep: sep.join(go_print(v) for v in items or []),
    "split": lambda s, sep: s.split(sep),
    "upper": lambda s: go_print(s).upper(),
    "lower": lambda s: go_print(s).lower(),
    "title": lambda s: go_print(s).title(),
    "not": lambda v: not _truth(v),
    "and": lambda *a: next((v for v in a if not _truth(v)), a[-1]),
    "or": lambda *a: next((v for v in a if _truth(v)), a[-1]),
    "eq": _compare(_eq),
    "ne": _compare(lambda a, b: a != b),
    "lt": _compare(lambda a, b: a < b),
    "le": _compare(lambda a, b: a <= b),
    "gt": _compare(lambda a, b: a > b),
    "ge": _compare(lambda a, b: a >= b),
}


# ------------------------------------------------------------------ executing


_GO_TYPES = {"list": "[]interface {}", "str": "string", "int": "float64", "float": "float64"}
_GO_TYPES["bool"] = "bool"


class _Exec:
    def __init__(self, source: str) -> None:
        self.source = source

    def field(self, dot: Any, node: _Field) -> Any:
        value = dot
        shown = "." + ".".join(node.path)
        for name in node.path:
            if isinstance(value, dict):
                if name not in value:
                    raise _error(
                        self.source,
                        node.pos,
                        f'executing "" at <{shown}>: map has no entry for key "{name}"',
                    )
                value = value[name]
            elif value is None:
                raise _error(
                    self.source,
                    node.pos,
                    f'executing "" at <{shown}>: nil pointer evaluating interface {{}}.{name}',
                )
            else:
                kind = _GO_TYPES.get(type(value).__name__, "interface {}")
                raise _error(
                    self.source,
                    node.pos,
                    f'executing "" at <{shown}>: can\'t evaluate field {name} in type {kind}',
                )
        return value

    def arg(self, dot: Any, item: Any) -> Any:
        if isinstance(item, _Field):
            return self.field(dot, item) if item.path else dot
        if isinstance(item, _Chain):
            return self.field(self.pipeline(dot, item.group), _Field(item.path, item.pos))
        if isinstance(item, _Action):
            return self.pipeline(dot, item)
        if isinstance(item, _Ident):
            return self.call(dot, item, [], None, False)
        return item

    def call(self, dot: Any, ident: _Ident, args: list[Any], piped: Any, has_piped: bool) -> Any:
        func = FUNCTIONS.get(ident.name)
        if func is None:
            raise _error(self.source, ident.pos, f'function "{ident.name}" not defined')
        values = [self.arg(dot, a) for a in args]
        if has_piped:
            values.append(piped)
        try:
            return func(*values)
        except TemplateError as err:
            raise _error(self.source, ident.pos, f'executing "" at <{ident.name}>: {err}') from None
        except (TypeError, ValueError, AttributeError) as err:
            raise _error(
                self.source,
                ident.pos,
                f'executing "" at <{ident.name}>: error calling {ident.name}: {err}',
            ) from None

    def pipeline(self, dot: Any, action: _Action) -> Any:
        value: Any = None
        for i, command in enumerate(action.commands):
            head, args = command[0], command[1:]
            if isinstance(head, _Ident):
                value = self.call(dot, head, args, value, i > 0)
            elif args:
                raise TemplateError(
                    f"template: :1: can't give argument to non-function {self.arg(dot, head)!r}"
                )
            else:
                value = self.arg(dot, head)
        return value

    def run(self, nodes: list[_Node], dot: Any, out: list[str]) -> None:
        for node in nodes:
            if isinstance(node, _Text):
                out.append(node.text)
            elif isinstance(node, _Block):
                value = self.pipeline(dot, node.pipe)
                if node.kind == "range":
                    items = [value[k] for k in sorted(value)] if isinstance(value, dict) else value
                    if items:
                        for item in items:
                            self.run(node.body, item, out)
                    else:
                        self.run(node.alternative, dot, out)
                elif _truth(value):
                    self.run(node.body, value if node.kind == "with" else dot, out)
                else:
                    self.run(node.alternative, dot, out)
            elif isinstance(node, _Action):
                value = self.pipeline(dot, node)
                out.append(go_print(value))


def render(source: str, data: Any) -> str:
    """Execute the template `source` with `data` as dot."""
    out: list[str] = []
    _Exec(source).run(parse(source), data, out)
    return "".join(out)
