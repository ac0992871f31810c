"""RapidPro's flow templates ("Excellent", goflow's expression language), the small part the relay
flow uses: read, compared and, for the playground's stand-in, evaluated.

A template is text with `@name.path` identifiers and `@(expression)` blocks; `@@` is a literal
`@`. An identifier counts only when its first name is one of the run context's top levels
(`a@b.com` stays text) — goflow `excellent/scanner.go` (`scanIdentifier`, `scanBody`,
`scanExpression`) and `flows/run.go` (`RunContextTopLevels`). Expressions here are function
calls, dotted names, text literals in double quotes (with `\\"` escapes) and numbers; anything
else (operators, indexing) is refused as `TemplateError`, which callers report as "not the
expected template". Pure: no I/O.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

# goflow flows/run.go RunContextTopLevels
TOP_LEVELS = frozenset({"child", "contact", "fields", "globals", "input", "legacy_extra", "node", "parent",
                        "locals", "results", "resume", "run", "ticket", "trigger", "urns", "webhook"})


class TemplateError(ValueError):
    """The text is not a template (or an expression) of the supported kind."""


@dataclass(frozen=True)
class Path:
    names: tuple[str, ...]

    def __str__(self) -> str:
        return ".".join(self.names)


@dataclass(frozen=True)
class Text:
    value: str

    def __str__(self) -> str:
        return json.dumps(self.value, ensure_ascii=False)


@dataclass(frozen=True)
class Number:
    value: str

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Call:
    name: str
    args: tuple[Expr, ...]

    def __str__(self) -> str:
        return f"{self.name}({', '.join(str(a) for a in self.args)})"


Expr = Path | Text | Number | Call
Part = str | Expr  # a template: literal text and expressions, in order


def _name_char(ch: str) -> bool:
    return ch.isalnum() or ch == "_"


def parse_template(template: str) -> tuple[Part, ...]:
    """The parts of `template`; adjacent literal text is merged."""
    parts: list[Part] = []
    text: list[str] = []
    i, n = 0, len(template)

    def flush() -> None:
        if text:
            parts.append("".join(text))
            text.clear()

    while i < n:
        ch = template[i]
        nxt = template[i + 1] if i + 1 < n else ""
        if ch != "@":
            text.append(ch)
            i += 1
        elif nxt == "@":
            text.append("@")
            i += 2
        elif nxt == "(":
            end = _closing_paren(template, i + 2)
            if end is None:  # unbalanced: goflow leaves it as text
                text.append(template[i:])
                break
            flush()
            parts.append(parse_expression(template[i + 2:end]))
            i = end + 1
        elif nxt and _name_char(nxt):
            j = i + 1
            while j < n and (_name_char(template[j]) or
                             (template[j] == "." and j + 1 < n and _name_char(template[j + 1]))):
                j += 1
            names = tuple(template[i + 1:j].split("."))
            if names[0].lower() in TOP_LEVELS:
                flush()
                parts.append(Path(names))
            else:
                text.append(template[i:j])
            i = j
        else:
            text.append("@")
            i += 1
    flush()
    return tuple(parts)


def _closing_paren(text: str, start: int) -> int | None:
    depth, i = 1, start
    while i < len(text):
        ch = text[i]
        if ch == '"':
            i = _end_of_text(text, i) + 1
            continue
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None


def _end_of_text(text: str, start: int) -> int:
    """Index of the quote closing the literal opened at `start` (the end if unterminated)."""
    i = start + 1
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text[i] == '"':
            return i
        i += 1
    return len(text)


_TOKEN = re.compile(r'\s*(?:(?P<text>"(?:[^"\\]|\\.)*")|(?P<number>-?\d+(?:\.\d+)?)'
                    r"|(?P<name>[^\W\d]\w*(?:\.\w+)*)|(?P<punct>[(),]))", re.UNICODE)


def parse_expression(source: str) -> Expr:
    """One expression (the inside of `@(...)`)."""
    tokens: list[tuple[str, str]] = []
    pos = 0
    while pos < len(source):
        if not source[pos:].strip():
            break
        match = _TOKEN.match(source, pos)
        if match is None:
            raise TemplateError(f"unsupported expression near {source[pos:pos + 20]!r}")
        kind = match.lastgroup or ""
        tokens.append((kind, match.group(kind)))
        pos = match.end()
    expr, rest = _parse(tokens, 0)
    if rest != len(tokens):
        raise TemplateError("unexpected text after the expression")
    return expr


def _parse(tokens: list[tuple[str, str]], at: int) -> tuple[Expr, int]:
    if at >= len(tokens):
        raise TemplateError("the expression ends too early")
    kind, value = tokens[at]
    if kind == "text":
        return Text(json.loads(value)), at + 1
    if kind == "number":
        return Number(value), at + 1
    if kind != "name":
        raise TemplateError(f"unexpected {value!r}")
    if at + 1 < len(tokens) and tokens[at + 1] == ("punct", "("):
        args: list[Expr] = []
        at += 2
        if at < len(tokens) and tokens[at] == ("punct", ")"):
            return Call(value.lower(), ()), at + 1
        while True:
            arg, at = _parse(tokens, at)
            args.append(arg)
            if at < len(tokens) and tokens[at] == ("punct", ","):
                at += 1
                continue
            if at < len(tokens) and tokens[at] == ("punct", ")"):
                return Call(value.lower(), tuple(args)), at + 1
            raise TemplateError(f"{value}(...) is not closed")
    return Path(tuple(value.split("."))), at + 1


def render_template(parts: tuple[Part, ...]) -> str:
    """A template as RapidPro's editor would show it (for messages; literal text verbatim)."""
    out = []
    for part in parts:
        if isinstance(part, str):
            out.append(part.replace("@", "@@"))
        elif isinstance(part, Path):
            out.append(f"@{part}")
        else:
            out.append(f"@({part})")
    return "".join(out)


# ---------------------------------------------------------------------------- evaluation


def _replace(text: Any, needle: Any, replacement: Any) -> str:
    return _as_text(text).replace(_as_text(needle), _as_text(replacement))


def _object(*pairs: Any) -> dict[str, Any]:
    if len(pairs) % 2:
        raise TemplateError("object() takes pairs of arguments")
    return {_as_text(pairs[i]): pairs[i + 1] for i in range(0, len(pairs), 2)}


def _json(value: Any) -> str:
    # goflow: an object marshals with its keys sorted, compact (excellent/types/object.go)
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


FUNCTIONS: dict[str, Callable[..., Any]] = {"replace": _replace, "object": _object, "json": _json}


def _as_text(value: Any) -> str:
    if value is None:
        return ""  # goflow ToXText(nil) is empty text
    if isinstance(value, str):
        return value
    return _json(value)


def evaluate(expr: Expr, context: Mapping[str, Any]) -> Any:
    if isinstance(expr, Text):
        return expr.value
    if isinstance(expr, Number):
        return float(expr.value) if "." in expr.value else int(expr.value)
    if isinstance(expr, Path):
        value: Any = context
        for name in expr.names:
            value = value.get(name.lower()) if isinstance(value, Mapping) else None
        return value
    function = FUNCTIONS.get(expr.name)
    if function is None:
        raise TemplateError(f"the function {expr.name}() is not supported here")
    return function(*(evaluate(arg, context) for arg in expr.args))


def evaluate_template(template: str, context: Mapping[str, Any]) -> str:
    """The text a template gives in `context` (nested mappings: `{"input": {"text": ...}}`)."""
    return "".join(part if isinstance(part, str) else _as_text(evaluate(part, context))
                   for part in parse_template(template))
