"""The on-call CLI's output: every control character escaped on its way to the terminal.

Webhook bodies, Codat's error texts and API callers' unlink reasons all end up in what the CLI
prints; an escape sequence among them could retitle, clear or rewrite the on-call engineer's
terminal. :func:`guard_output` puts an escaping layer in front of stdout and stderr once, for
the whole command, so nothing printed (tables, ``--json``, errors, log lines) can carry one.
Newlines and tabs pass; everything else is spelled ``\\u001b`` (a JSON escape, so ``--json``
output stays valid JSON and decodes to the same text).
"""

from __future__ import annotations

import io
import sys
from typing import TextIO

from service.untrusted import escape_controls


class EscapingStream(io.TextIOBase):
    """A text stream that escapes control characters, then writes to ``raw``."""

    def __init__(self, raw: TextIO) -> None:
        super().__init__()
        self.raw = raw

    def write(self, text: str) -> int:
        self.raw.write(escape_controls(text, keep_layout=True))
        return len(text)

    def flush(self) -> None:
        self.raw.flush()

    def isatty(self) -> bool:
        return self.raw.isatty()

    def fileno(self) -> int:
        return self.raw.fileno()

    def writable(self) -> bool:
        return True

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.raw, "encoding", None) or "utf-8"

    @property
    def errors(self) -> str | None:  # type: ignore[override]
        return getattr(self.raw, "errors", None)


def guard_output() -> None:
    """Escape control characters in everything this process prints from now on."""
    if not isinstance(sys.stdout, EscapingStream):
        sys.stdout = EscapingStream(sys.stdout)
    if not isinstance(sys.stderr, EscapingStream):
        sys.stderr = EscapingStream(sys.stderr)


def unguarded(stream: TextIO) -> TextIO:
    """The stream beneath the guard, for our own terminal control (a progress bar's ``\\r``)."""
    return stream.raw if isinstance(stream, EscapingStream) else stream
