"""Codat's page-number paging: ``page`` (1-based) and ``pageSize`` in, the HAL envelope out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from starlette.datastructures import QueryParams

from service.sandbox.errors import CodatError

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 5000


@dataclass(frozen=True, slots=True)
class Page:
    number: int
    size: int


def _integer(params: QueryParams, name: str, default: int, maximum: int | None) -> int:
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise CodatError(400, f"{name} must be an integer", errors=[(name, "not an integer")]) \
            from None
    if value < 1 or (maximum is not None and value > maximum):
        bounds = f"between 1 and {maximum}" if maximum else "at least 1"
        raise CodatError(400, f"{name} must be {bounds}", errors=[(name, f"must be {bounds}")])
    return value


def page_from(params: QueryParams) -> Page:
    """The requested page; a malformed or out-of-range value is a Codat 400."""
    return Page(_integer(params, "page", 1, None),
                _integer(params, "pageSize", DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE))


def _href(path: str, number: int, size: int) -> dict[str, str]:
    return {"href": f"{path}?page={number}&pageSize={size}"}


def paged(items: list[dict[str, Any]], page: Page, path: str) -> dict[str, Any]:
    """``{results, pageNumber, pageSize, totalResults, _links}`` for one page of ``items``."""
    start = (page.number - 1) * page.size
    links: dict[str, Any] = {"self": {"href": path},
                             "current": _href(path, page.number, page.size)}
    if start + page.size < len(items):
        links["next"] = _href(path, page.number + 1, page.size)
    if page.number > 1:
        links["previous"] = _href(path, page.number - 1, page.size)
    return {"results": items[start:start + page.size], "pageNumber": page.number,
            "pageSize": page.size, "totalResults": len(items), "_links": links}
