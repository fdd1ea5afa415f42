"""EventBridge event patterns: matching and validation with the semantics of the AWS service.

A pattern mirrors the event. An object nests into the event's object under the same key; a list is a leaf
whose alternatives the event value must match one of. An alternative is a literal (string, number, boolean,
null) or a one-key matcher: prefix, suffix, anything-but, exists, numeric, equals-ignore-case, wildcard.
Where the event holds an array, a leaf matches when any element does, and a nested object matches when one
element matches all of it. Objects are not leaf values: `exists` is false for them, as on AWS.

Patterns compile once into a predicate (`compile_pattern`); compiling is validating.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping
from typing import Any

from shared.errors import ConfigurationError

EventTest = Callable[[Mapping[str, Any]], bool]
_ValueTest = Callable[[Any], bool]  # over a value found in the event, or _MISSING

_MISSING = object()
_NUMERIC_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "=": operator.eq, "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}
_MATCHERS = ("prefix", "suffix", "anything-but", "exists", "numeric", "equals-ignore-case", "wildcard")


def matches(pattern: Mapping[str, Any], event: Mapping[str, Any]) -> bool:
    """True when `event` matches the EventBridge `pattern`; ConfigurationError when the pattern is malformed."""
    return compile_pattern(pattern)(event)


def validate_pattern(pattern: Mapping[str, Any]) -> None:
    """Raise ConfigurationError naming the path of the first unknown matcher or malformed leaf."""
    compile_pattern(pattern)


def compile_pattern(pattern: Mapping[str, Any]) -> EventTest:
    if not isinstance(pattern, Mapping) or not pattern:
        raise ConfigurationError(f"an event pattern must be a non-empty JSON object, got {pattern!r}")
    return _compile_object(pattern, "")


def _compile_object(pattern: Mapping[str, Any], path: str) -> _ValueTest:
    fields: list[tuple[str, _ValueTest]] = []
    for key, sub in pattern.items():
        where = f"{path}.{key}" if path else str(key)
        if not isinstance(key, str):
            raise ConfigurationError(f"{where}: pattern keys must be strings")
        if isinstance(sub, Mapping):
            if not sub:
                raise ConfigurationError(f"{where}: a nested pattern must not be empty")
            fields.append((key, _compile_object(sub, where)))
        elif isinstance(sub, list):
            fields.append((key, _compile_leaf(sub, where)))
        else:
            raise ConfigurationError(f"{where}: expected a list of alternatives or a nested object, got {sub!r}")

    def test_object(obj: Any) -> bool:
        return all(test(obj.get(key, _MISSING)) for key, test in fields)

    def test(value: Any) -> bool:
        if isinstance(value, list):  # one element must match the whole sub-pattern
            objects = [item for item in value if isinstance(item, Mapping)]
            return any(test_object(obj) for obj in objects) if objects else test_object({})
        return test_object(value if isinstance(value, Mapping) else {})

    return test


def _compile_leaf(alternatives: list[Any], where: str) -> _ValueTest:
    if not alternatives:
        raise ConfigurationError(f"{where}: a leaf needs at least one alternative")
    wanted_presence: list[bool] = []  # `exists` looks at presence, the other matchers at each value
    tests: list[_ValueTest] = []
    for i, alternative in enumerate(alternatives):
        at = f"{where}[{i}]"
        if isinstance(alternative, Mapping):
            name, operand = _single(alternative, at)
            if name == "exists":
                if not isinstance(operand, bool):
                    raise ConfigurationError(f"{at}: exists takes true or false, got {operand!r}")
                wanted_presence.append(operand)
            else:
                tests.append(_matcher(name, operand, at))
        elif _is_literal(alternative):
            tests.append(_literal(alternative))
        else:
            raise ConfigurationError(f"{at}: expected a literal or a matcher object, got {alternative!r}")

    def test(value: Any) -> bool:
        values = _leaf_values(value)
        return (any(present == bool(values) for present in wanted_presence)
                or any(t(v) for v in values for t in tests))

    return test


def _matcher(name: str, operand: Any, at: str) -> _ValueTest:
    if name in ("prefix", "suffix"):
        return _affix(name, operand, at)
    if name == "anything-but":
        return _anything_but(operand, at)
    if name == "numeric":
        return _numeric(operand, at)
    if name == "equals-ignore-case":
        return _ignore_case(operand, at)
    if name == "wildcard":
        return _wildcard(operand, at)
    raise ConfigurationError(f"{at}: unknown matcher {name!r}; known: {', '.join(_MATCHERS)}")


def _affix(name: str, operand: Any, at: str) -> _ValueTest:
    fold = False
    if isinstance(operand, Mapping):  # {"prefix": {"equals-ignore-case": "raw/"}}
        inner, operand = _single(operand, at)
        if inner != "equals-ignore-case":
            raise ConfigurationError(f"{at}: {name} takes a string or {{'equals-ignore-case': string}}")
        fold = True
    if not isinstance(operand, str):
        raise ConfigurationError(f"{at}: {name} takes a string, got {operand!r}")
    wanted = operand.casefold() if fold else operand

    def test(value: Any) -> bool:
        if not isinstance(value, str):
            return False
        text = value.casefold() if fold else value
        return text.startswith(wanted) if name == "prefix" else text.endswith(wanted)

    return test


def _anything_but(operand: Any, at: str) -> _ValueTest:
    excluded: list[_ValueTest]
    if isinstance(operand, Mapping):  # {"anything-but": {"prefix": "init"}}
        name, inner = _single(operand, at)
        if name not in ("prefix", "suffix", "equals-ignore-case", "wildcard"):
            raise ConfigurationError(f"{at}: anything-but cannot hold {name!r}")
        excluded = [_matcher(name, x, at) for x in (inner if isinstance(inner, list) else [inner])]
    else:
        values = operand if isinstance(operand, list) else [operand]
        if not values or not all(isinstance(v, str) or _is_number(v) for v in values):
            raise ConfigurationError(f"{at}: anything-but takes strings or numbers, got {operand!r}")
        excluded = [_literal(v) for v in values]
    return lambda value: not any(t(value) for t in excluded)


def _numeric(operand: Any, at: str) -> _ValueTest:
    if not isinstance(operand, list) or not operand or len(operand) % 2:
        raise ConfigurationError(f"{at}: numeric takes [op, number, ...], got {operand!r}")
    checks = []
    for op, bound in zip(operand[::2], operand[1::2], strict=True):
        if op not in _NUMERIC_OPS or not _is_number(bound):
            raise ConfigurationError(f"{at}: bad numeric comparison {op!r} {bound!r}")
        checks.append((_NUMERIC_OPS[op], bound))
    return lambda value: _is_number(value) and all(compare(value, bound) for compare, bound in checks)


def _ignore_case(operand: Any, at: str) -> _ValueTest:
    if not isinstance(operand, str):
        raise ConfigurationError(f"{at}: equals-ignore-case takes a string, got {operand!r}")
    wanted = operand.casefold()
    return lambda value: isinstance(value, str) and value.casefold() == wanted


def _wildcard(operand: Any, at: str) -> _ValueTest:
    if not isinstance(operand, str):
        raise ConfigurationError(f"{at}: wildcard takes a string, got {operand!r}")
    parts: list[str] = []
    chars = iter(operand)
    for char in chars:
        if char == "\\":  # \* is a literal star, \\ a backslash
            parts.append(re.escape(next(chars, "\\")))
        else:
            parts.append(".*" if char == "*" else re.escape(char))
    regex = re.compile("".join(parts), re.DOTALL)
    return lambda value: isinstance(value, str) and regex.fullmatch(value) is not None


def _literal(expected: Any) -> _ValueTest:
    # 5 matches 5.0 as on AWS, but true never matches 1
    return lambda value: isinstance(value, bool) == isinstance(expected, bool) and value == expected


def _single(matcher: Mapping[str, Any], at: str) -> tuple[str, Any]:
    if len(matcher) != 1:
        raise ConfigurationError(f"{at}: a matcher object has exactly one key, got {dict(matcher)!r}")
    ((name, operand),) = matcher.items()
    if name not in _MATCHERS:
        raise ConfigurationError(f"{at}: unknown matcher {name!r}; known: {', '.join(_MATCHERS)}")
    return name, operand


def _leaf_values(value: Any) -> list[Any]:
    """The scalar values at a leaf: none when missing or an object, every scalar element of an array."""
    if value is _MISSING or isinstance(value, Mapping):
        return []
    if isinstance(value, list):
        return [scalar for item in value for scalar in _leaf_values(item)]
    return [value]


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_literal(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)
