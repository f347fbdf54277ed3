"""Injected faults: the next N matching Codat requests answer slowly, or with an error."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any


class FaultRuleError(ValueError):
    """A fault rule posted to ``/_sandbox/faults`` is malformed."""


@dataclass
class FaultRule:
    """Match ``method`` (None = any) and ``path`` (a regex searched in the request path).

    ``delay`` alone makes a slow but normal answer; with ``status`` the error comes after the
    delay. ``count`` is how many more requests the rule will hit.
    """

    method: str | None
    path: re.Pattern[str]
    status: int | None
    retry_after: float | None
    delay: float | None
    count: int

    def matches(self, method: str, path: str) -> bool:
        return (self.count > 0 and (self.method is None or self.method == method)
                and self.path.search(path) is not None)

    def describe(self) -> dict[str, Any]:
        return {"method": self.method, "path": self.path.pattern, "status": self.status,
                "retryAfter": self.retry_after, "delay": self.delay, "remaining": self.count}


def _number(raw: dict[str, Any], name: str) -> float | None:
    value = raw.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise FaultRuleError(f"{name} must be a number of seconds >= 0 or null")
    return float(value)


def parse_rule(raw: Any) -> FaultRule:
    """A rule from its JSON form ``{method, path, status, retryAfter, delay, count}``."""
    if not isinstance(raw, dict):
        raise FaultRuleError("a fault rule is a JSON object")
    method = raw.get("method")
    if method is not None and not isinstance(method, str):
        raise FaultRuleError("method must be a string or null")
    try:
        path = re.compile(str(raw.get("path", "")))
    except re.error as exc:
        raise FaultRuleError(f"path is not a valid regex: {exc}") from exc
    status = raw.get("status")
    if status is not None and (not isinstance(status, int) or not 400 <= status <= 599):
        raise FaultRuleError("status must be an HTTP error status (400-599) or null")
    count = raw.get("count", 1)
    if not isinstance(count, int) or count < 1:
        raise FaultRuleError("count must be an integer >= 1")
    delay = _number(raw, "delay")
    if status is None and delay is None:
        raise FaultRuleError("a fault needs a status, a delay, or both")
    method = None if method in (None, "*") else method.upper()
    return FaultRule(method, path, status, _number(raw, "retryAfter"), delay, count)


class FaultBook:
    """The active rules, tried in the order they were added."""

    def __init__(self) -> None:
        self.rules: list[FaultRule] = []

    def add(self, rule: FaultRule) -> None:
        self.rules.append(rule)

    def take(self, method: str, path: str) -> FaultRule | None:
        """The first rule matching this request, with one use spent; None if none match."""
        for rule in self.rules:
            if rule.matches(method, path):
                rule.count -= 1
                return rule
        return None

    def clear(self) -> int:
        cleared = len(self.rules)
        self.rules.clear()
        return cleared
