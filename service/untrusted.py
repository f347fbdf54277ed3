"""Text that came from outside (headers, bodies, API callers), made safe to show.

Control characters could rewrite an on-call engineer's terminal (ESC sequences retitle and clear
it, a carriage return overwrites what was printed) or forge log lines; an unbounded value makes
one request write a megabyte of log. :func:`escape_controls` spells every control character out
(``\\u001b``, ``\\u202e``) and :func:`clip` also caps the length.
"""

from __future__ import annotations

import re

# C0 and C1 controls, DEL, the Unicode format characters that reorder or hide text (bidi
# embeddings, overrides and isolates, zero-width characters, line and paragraph separators), and
# lone surrogates (which no UTF-8 log line or terminal can carry).
_SPECIAL = ("\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u2069\ud800-\udfff\ufeff"
            "\ufff9-\ufffb")
_CONTROL = re.compile(f"[\x00-\x1f\x7f-\x9f{_SPECIAL}]")
_KEEP_LAYOUT = re.compile(f"[\x00-\x08\x0b-\x1f\x7f-\x9f{_SPECIAL}]")  # all but \t and \n
LOG_FIELD_LIMIT = 200


def _spell(match: re.Match[str]) -> str:
    # JSON's own escape: inside a JSON string (the CLI's --json) it stays valid and decodes back.
    return f"\\u{ord(match[0]):04x}"


def escape_controls(text: str, *, keep_layout: bool = False) -> str:
    """``text`` with every control character written out as an escape (``\\u001b``).

    ``keep_layout`` leaves newlines and tabs alone (multi-line output); it still escapes a
    carriage return, which can overwrite what is already on the line.
    """
    if text.isprintable():  # every character escaped here is non-printable: the common case
        return text
    return (_KEEP_LAYOUT if keep_layout else _CONTROL).sub(_spell, text)


def clip(value: object, limit: int = LOG_FIELD_LIMIT) -> str | None:
    """``value`` as a one-line string of at most ``limit`` characters (plus a note of how much
    was cut), its control characters escaped; None stays None."""
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit and text.isprintable():
        return text
    cut = len(text) - limit
    escaped = escape_controls(text[:limit])
    if len(escaped) > limit:  # escapes take room: keep the whole thing within the limit
        escaped = escaped[:limit]
    return escaped + (f"...[{cut} more characters]" if cut > 0 else "")
