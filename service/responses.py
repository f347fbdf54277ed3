"""The API's JSON responses. Errors are built through :class:`service.api_models.Error`, so
every error body is what ``/openapi.json`` says; a success is checked against its operation's model
(:meth:`service.operations.Operation.answer`)."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

from service.api_models import Error


def json_response(content: Any, status: int = 200, headers: dict[str, str] | None = None,
                  ) -> Response:
    """``content`` as JSON, unchecked: for what no model describes (the document itself)."""
    return Response(orjson.dumps(content), status, headers, media_type="application/json")


def _error_response(body: Error, headers: dict[str, str] | None) -> Response:
    return Response(body.model_dump_json(by_alias=True, exclude_unset=True), body.status_code,
                    headers, media_type="application/json")


def error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """``{"statusCode": status, "error": message}``."""
    return _error_response(Error(status_code=status, error=message), headers)


def codat_error(status: int, message: str, correlation_id: str | None,
                headers: dict[str, str] | None = None) -> Response:
    """An onboarding error: also ``correlationId``, Codat's (null when there is none)."""
    return _error_response(Error(status_code=status, error=message,
                                 correlation_id=correlation_id), headers)
