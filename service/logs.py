"""Structured logs: JSON lines on stdout, or a readable line when stdout is a terminal.

Pass fields with ``log.info("message", extra={"fields": {...}})``. Secrets never reach a log
line: nothing logs headers, bodies (only at debug level) or settings, and :func:`scrub` drops
any field whose name says it holds one.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

import orjson

_HANDLER = "codat-hooks"
_SECRET_WORDS = ("secret", "signature", "token", "authorization", "api_key", "apikey", "password")


def scrub(fields: dict[str, Any]) -> dict[str, Any]:
    return {k: ("[redacted]" if any(w in k.lower() for w in _SECRET_WORDS) else v)
            for k, v in fields.items()}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(scrub(getattr(record, "fields", {})))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class ConsoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = scrub(getattr(record, "fields", {}))
        extras = " ".join(f"{k}={v}" for k, v in fields.items() if v is not None)
        stamp = datetime.fromtimestamp(record.created).strftime("%H:%M:%S")
        line = f"{stamp} {record.levelname:<7} {record.getMessage()}  {extras}".rstrip()
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def configure_logging(level: str = "INFO", *, json: bool | None = None,
                      stream: TextIO | None = None) -> None:
    """Send the service's logs to ``stream`` (stdout), as JSON unless it is a terminal."""
    stream = stream or sys.stdout
    use_json = (not stream.isatty()) if json is None else json
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if use_json else ConsoleFormatter())
    handler.set_name(_HANDLER)
    root = logging.getLogger("codat_hooks")
    # Replace only our own handler: one a host process (or a test) added stays.
    root.handlers[:] = [h for h in root.handlers if h.get_name() != _HANDLER] + [handler]
    root.setLevel(level.upper())
    root.propagate = False


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(f"codat_hooks.{name}")
