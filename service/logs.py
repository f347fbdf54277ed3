"""Structured logs: JSON lines on stdout, or a readable line when stdout is a terminal.

Pass fields with ``log.info("message", extra={"fields": {...}})``. Secrets never reach a log
line: nothing logs headers, bodies (only at debug level) or settings, and :func:`scrub` drops
any field whose name says it holds one.
"""

from __future__ import annotations

import functools
import logging
import sys
import time
from datetime import datetime
from typing import Any, TextIO

import orjson

_HANDLER = "codat-hooks"
_SECRET_WORDS = ("secret", "signature", "token", "authorization", "api_key", "apikey", "password")


@functools.lru_cache(maxsize=4096)
def _secret(name: str) -> bool:
    # Field names come from our code, a few dozen of them: each is judged once.
    return any(w in name.lower() for w in _SECRET_WORDS)


def scrub(fields: dict[str, Any]) -> dict[str, Any]:
    return {k: ("[redacted]" if _secret(k) else v) for k, v in fields.items()}


class _Stamp:
    """``2026-11-29T14:15:56.123+00:00`` for a time, the part up to the second formatted once
    per second (a log line per delivery makes this a hot path)."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self, created: float) -> str:
        second = int(created)
        if second != self._second:
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        return f"{self._prefix}.{int((created - second) * 1000):03d}+00:00"


_LEVEL_NAMES = {logging.DEBUG: "debug", logging.INFO: "info", logging.WARNING: "warning",
                logging.ERROR: "error", logging.CRITICAL: "critical"}


class JsonFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__()
        self._stamp = _Stamp()

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": self._stamp(record.created),
            "level": _LEVEL_NAMES.get(record.levelno) or record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name, value in getattr(record, "fields", {}).items():  # scrub(), in place
            entry[name] = "[redacted]" if _secret(name) else value
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
    # Our lines name no source file, thread or process: skip gathering them for every record
    # (the logging module's documented optimizations; a line per delivery makes this hot).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(f"codat_hooks.{name}")
