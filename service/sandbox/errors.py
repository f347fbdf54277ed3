"""Codat's ``ErrorMessage`` body, and the one exception every Codat endpoint raises.

Every error answer carries the same seven fields with a fresh ``correlationId``; the texts
follow the examples in Codat's OpenAPI files where there is one.
"""

from __future__ import annotations

import math
import uuid
from typing import Any

from starlette.responses import JSONResponse

_DEFAULT_TEXT = {
    400: "Error processing request - not valid.",
    401: "Unauthorized",
    404: "One or more of the resources you referenced could not be found.",
    409: "The data set has not been requested.",
    422: "The Idempotency-Key has already been used with a different request.",
    429: "You have made too many requests in a given amount of time; please retry later.",
    500: "An internal server error occurred. Please retry later.",
    503: "The service is temporarily unavailable for maintenance. Please retry later.",
}


class CodatError(Exception):
    """An answer with a Codat ``ErrorMessage`` body; ``errors`` become ``validation.errors``."""

    def __init__(self, status: int, error: str | None = None, *, service: str = "PublicApi",
                 errors: list[tuple[str, str]] | None = None,
                 retry_after: float | None = None) -> None:
        self.status = status
        self.error = error or _DEFAULT_TEXT.get(status, "Error")
        self.service = service
        self.errors = errors
        self.retry_after = retry_after
        super().__init__(f"{status} {self.error}")


def error_body(exc: CodatError) -> dict[str, Any]:
    """The ``ErrorMessage`` fields for ``exc``; ``validation`` is null unless it has errors."""
    validation = None
    if exc.errors:
        validation = {
            "errors": [{"itemId": item, "message": message, "validatorName": "SandboxValidator"}
                       for item, message in exc.errors],
            "warnings": [],
        }
    return {
        "statusCode": exc.status,
        "service": exc.service,
        "error": exc.error,
        "correlationId": uuid.uuid4().hex,
        "validation": validation,
        "canBeRetried": "Unknown",
        "detailedErrorCode": 0,
    }


def error_response(exc: CodatError) -> JSONResponse:
    """``exc`` as an HTTP answer; a 429 always says when to come back (``Retry-After``)."""
    headers = {}
    retry_after = exc.retry_after
    if retry_after is None and exc.status == 429:
        retry_after = 1
    if retry_after is not None:
        headers["Retry-After"] = str(max(0, math.ceil(retry_after)))
    return JSONResponse(error_body(exc), status_code=exc.status, headers=headers)


def company_not_found(company_id: str) -> CodatError:
    return CodatError(404, f"No company was found with ID {company_id}", service="ClientsApi")


def connection_not_found(connection_id: str) -> CodatError:
    return CodatError(404, f"Data connection {connection_id} not found")
