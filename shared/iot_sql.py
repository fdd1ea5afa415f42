"""The subset of AWS IoT rule SQL that Nacelle's rules use, parsed and evaluated locally (pure).

    SELECT *, topic(2) AS thing_name, timestamp() AS received_at, clientid() AS client_id
    FROM 'turbines/+/anomalies' WHERE kind = 'open' AND NOT (contributions.rpm < 0.5 OR seq <> 1)

SELECT: `*` (every payload field), field paths (`a.b`), literals and the functions `topic()`, `topic(n)`
(1-based), `timestamp()` (epoch ms) and `clientid()`, each with an optional `AS name`. FROM: one quoted
topic filter with `+` and `#`. WHERE: comparisons (= <> != < <= > >=) of those operands, AND, OR, NOT and
parentheses. As on AWS, a comparison involving an undefined field (or unlike types) is not true.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from shared.errors import ConfigurationError, DataError

_TOKEN = re.compile(r"""\s*(?:
    (?P<string>'(?:[^']|'')*')
  | (?P<number>-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)
  | (?P<op><=|>=|<>|!=|=|<|>)
  | (?P<punct>[(),*])
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
)""", re.VERBOSE)
_KEYWORDS = frozenset({"SELECT", "FROM", "WHERE", "AS", "AND", "OR", "NOT", "TRUE", "FALSE", "NULL"})
_UNDEFINED = object()


@dataclass(frozen=True)
class Context:
    topic: str
    payload: dict[str, Any]
    client_id: str
    now_ms: int


Expr = Callable[[Context], Any]


@dataclass(frozen=True)
class Token:
    kind: str  # string | number | op | punct | name | keyword | end
    text: str
    value: Any = None


def _tokens(sql: str) -> list[Token]:
    out, pos = [], 0
    while pos < len(sql):
        if sql[pos:].strip() == "":
            break
        m = _TOKEN.match(sql, pos)
        if m is None or m.end() == pos:
            raise ConfigurationError(f"IoT SQL: unexpected character at {pos}: {sql[pos:pos + 20]!r}")
        kind = m.lastgroup or ""
        text = m.group(kind)
        if kind == "string":
            out.append(Token(kind, text, text[1:-1].replace("''", "'")))
        elif kind == "number":
            out.append(Token(kind, text, float(text) if any(c in text for c in ".eE") else int(text)))
        elif kind == "name" and text.upper() in _KEYWORDS:
            out.append(Token("keyword", text.upper()))
        else:
            out.append(Token(kind, text))
        pos = m.end()
    out.append(Token("end", ""))
    return out


def topic_matches(topic_filter: str, topic: str) -> bool:
    """MQTT filter semantics: `+` is one level, a trailing `#` is any number of levels (zero included)."""
    want, have = topic_filter.split("/"), topic.split("/")
    for i, part in enumerate(want):
        if part == "#":
            return True
        if i >= len(have) or (part != "+" and part != have[i]):
            return False
    return len(want) == len(have)


def _field(path: str) -> Expr:
    parts = path.split(".")

    def get(ctx: Context) -> Any:
        value: Any = ctx.payload
        for part in parts:
            if not isinstance(value, dict) or part not in value:
                return _UNDEFINED
            value = value[part]
        return value

    return get


def _topic(n: int | None) -> Expr:
    def get(ctx: Context) -> Any:
        if n is None:
            return ctx.topic
        levels = ctx.topic.split("/")
        return levels[n - 1] if 1 <= n <= len(levels) else _UNDEFINED

    return get


def _compare(op: str, left: Expr, right: Expr) -> Expr:
    def test(ctx: Context) -> bool:
        a, b = left(ctx), right(ctx)
        if a is _UNDEFINED or b is _UNDEFINED:
            return False
        numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (a, b))
        if op in ("=", "<>", "!="):
            same = a == b if numeric or type(a) is type(b) else False
            return same if op == "=" else not same
        if not numeric and not (isinstance(a, str) and isinstance(b, str)):
            return False
        return {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op]

    return test


class _Parser:
    def __init__(self, sql: str) -> None:
        self.sql = sql
        self.tokens = _tokens(sql)
        self.i = 0

    def peek(self) -> Token:
        return self.tokens[self.i]

    def take(self) -> Token:
        token = self.tokens[self.i]
        self.i += 1
        return token

    def accept(self, kind: str, text: str | None = None) -> Token | None:
        token = self.peek()
        if token.kind == kind and (text is None or token.text == text):
            return self.take()
        return None

    def expect(self, kind: str, text: str | None = None) -> Token:
        token = self.accept(kind, text)
        if token is None:
            got = self.peek().text or "the end"
            raise ConfigurationError(f"IoT SQL {self.sql!r}: expected {text or kind}, got {got!r}")
        return token

    # operands: literal | field path | function call
    def operand(self) -> tuple[Expr, str]:
        token = self.take()
        if token.kind in ("string", "number"):
            value = token.value
            return (lambda ctx: value), token.text
        if token.kind == "keyword" and token.text in ("TRUE", "FALSE", "NULL"):
            literal = {"TRUE": True, "FALSE": False, "NULL": None}[token.text]
            return (lambda ctx: literal), token.text.lower()
        if token.kind != "name":
            raise ConfigurationError(f"IoT SQL {self.sql!r}: unexpected {token.text or 'end'!r}")
        if not self.accept("punct", "("):
            return _field(token.text), token.text.rsplit(".", 1)[-1]
        name = token.text.lower()
        arg = None if self.accept("punct", ")") else self.expect("number").value
        if arg is not None:
            self.expect("punct", ")")
        if name == "topic" and (arg is None or isinstance(arg, int)):
            return _topic(arg), "topic"
        if name == "timestamp" and arg is None:
            return (lambda ctx: ctx.now_ms), "timestamp"
        if name == "clientid" and arg is None:
            return (lambda ctx: ctx.client_id), "clientid"
        raise ConfigurationError(f"IoT SQL {self.sql!r}: unsupported function {token.text}({arg or ''})")

    def select(self) -> list[tuple[str | None, Expr]]:
        items: list[tuple[str | None, Expr]] = []
        while True:
            if self.accept("punct", "*"):
                items.append((None, lambda ctx: ctx.payload))
            else:
                expr, default = self.operand()
                alias = self.expect("name").text if self.accept("keyword", "AS") else default
                items.append((alias, expr))
            if not self.accept("punct", ","):
                return items

    def condition(self) -> Expr:
        left = self.conjunction()
        while self.accept("keyword", "OR"):
            right, first = self.conjunction(), left
            left = (lambda a, b: lambda ctx: a(ctx) or b(ctx))(first, right)
        return left

    def conjunction(self) -> Expr:
        left = self.negation()
        while self.accept("keyword", "AND"):
            right, first = self.negation(), left
            left = (lambda a, b: lambda ctx: a(ctx) and b(ctx))(first, right)
        return left

    def negation(self) -> Expr:
        if self.accept("keyword", "NOT"):
            inner = self.negation()
            return lambda ctx: not inner(ctx)
        if self.accept("punct", "("):
            inner = self.condition()
            self.expect("punct", ")")
            return inner
        left, _ = self.operand()
        op = self.accept("op")
        if op is None:  # a bare operand: true when it is the boolean true
            return lambda ctx: left(ctx) is True
        right, _ = self.operand()
        return _compare(op.text, left, right)


@dataclass(frozen=True)
class IotRule:
    sql: str
    topic_filter: str
    select: tuple[tuple[str | None, Expr], ...]
    where: Expr | None

    def evaluate(self, topic: str, payload: bytes, client_id: str, now_ms: int) -> dict[str, Any] | None:
        """The selected row, or None when the topic or the WHERE clause does not match.

        A payload that is not a JSON object raises DataError (AWS sends such a message to the error action).
        """
        if not topic_matches(self.topic_filter, topic):
            return None
        try:
            document = json.loads(payload, parse_constant=_not_json)  # NaN / Infinity are not JSON
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise DataError(f"{topic}: payload is not JSON ({exc})") from exc
        if not isinstance(document, dict):
            raise DataError(f"{topic}: payload is a JSON {type(document).__name__}, not an object")
        ctx = Context(topic, document, client_id, now_ms)
        if self.where is not None and not self.where(ctx):
            return None
        row: dict[str, Any] = {}
        for alias, expr in self.select:
            value = expr(ctx)
            if alias is None:
                row.update(value)
            elif value is not _UNDEFINED:  # AWS leaves an undefined value out of the row
                row[alias] = value
        return row


def parse(sql: str) -> IotRule:
    """Parse a rule's SQL; ConfigurationError names what is wrong."""
    p = _Parser(sql)
    p.expect("keyword", "SELECT")
    select = p.select()
    p.expect("keyword", "FROM")
    topic_filter = p.expect("string").value
    levels = topic_filter.split("/")
    if not topic_filter or "#" in levels[:-1] or any(("+" in x or "#" in x) and len(x) > 1 for x in levels):
        raise ConfigurationError(f"IoT SQL {sql!r}: invalid topic filter {topic_filter!r}")
    where = p.condition() if p.accept("keyword", "WHERE") else None
    p.expect("end")
    return IotRule(sql, topic_filter, tuple(select), where)


def _not_json(token: str) -> Any:
    raise ValueError(f"{token} is not a JSON number")
