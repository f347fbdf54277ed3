"""What the API checks at its edge, before any I/O: ids in the path, text PostgreSQL can hold.

Codat's company and connection ids are UUIDs: anything else in their place is answered 404 at
once, and nothing else reaches a query or a Codat URL. A svix message id is short printable
text. Text with NUL (which PostgreSQL's text type cannot hold) or a lone surrogate (which is no
UTF-8 at all) is refused: 404 in the path, 422 in a query parameter or a body.
"""

from __future__ import annotations

import re

from starlette.requests import Request

from service.untrusted import clip

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_SURROGATE = re.compile("[\ud800-\udfff]")
MAX_MESSAGE_ID = 255
_KINDS = {"company_id": "company", "connection_id": "connection", "message_id": "delivery"}


class EdgeRefusal(Exception):
    """A request refused at the edge; ``status`` is 404 or 422."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def is_codat_id(value: str) -> bool:
    return _UUID.fullmatch(value) is not None


def storable(text: str) -> bool:
    """Whether PostgreSQL can store ``text`` (no NUL, no lone surrogate)."""
    return "\x00" not in text and (text.isascii() or _SURROGATE.search(text) is None)


def _path_value_ok(name: str, value: str) -> bool:
    if name == "message_id":
        return 0 < len(value) <= MAX_MESSAGE_ID and value.isprintable() and storable(value)
    if name.endswith("_id"):
        return is_codat_id(value)
    return storable(value)


def check_request(request: Request) -> None:
    """Raise EdgeRefusal for a path id that cannot exist or a query value that cannot be stored.
    Pure: reads only the request line."""
    for name, value in request.path_params.items():
        if not isinstance(value, str) or not _path_value_ok(name, value):
            kind = _KINDS.get(name, name.removesuffix("_id"))
            detail = " (Codat ids are UUIDs)" if name in ("company_id", "connection_id") else ""
            raise EdgeRefusal(404, f"no {kind} {clip(value, 80)}{detail}")
    for name, value in request.query_params.multi_items():
        if not storable(name) or not storable(value):
            raise EdgeRefusal(422, f"query parameter {clip(name, 40)}: contains a character "
                                   "that cannot be stored (NUL or a lone surrogate)")
