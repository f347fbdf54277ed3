"""Each API operation as data: its route is built from it, its success is checked against its
model before it is served, and ``/openapi.json`` describes it (:mod:`service.openapi`).

The modules that serve the routes declare their operations beside them (``service.api``,
``service.onboarding``; the change feed's in ``service.feed_models``), so a route's path, method,
scope, parameters, success model and status are written once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from pydantic import BaseModel, TypeAdapter
from starlette.responses import Response
from starlette.routing import Route

from service.auth import Endpoint, Scope, TokenAuth


@dataclass(frozen=True, slots=True)
class Param:
    """A query or header parameter; ``type`` is what its value means (its JSON Schema is
    derived from it), which the endpoint checks itself (400 naming the parameter)."""

    name: str
    description: str
    type: Any = str
    where: Literal["query", "header"] = "query"
    default: Any = None

    def schema(self) -> dict[str, Any]:
        schema = TypeAdapter(self.type).json_schema()
        schema.pop("title", None)
        if self.default is not None:
            schema["default"] = self.default
        return schema


@dataclass(frozen=True, slots=True)
class Operation:
    """One method on one path. ``errors`` adds to, or words better, what every operation of its
    kind may answer (:meth:`error_statuses`)."""

    method: Literal["GET", "POST"]
    path: str  # Starlette's form: /v1/companies/{company_id}
    summary: str
    response: type[BaseModel]
    status: int = 200
    scope: Scope = Scope.READ
    params: tuple[Param, ...] = ()
    body: type[BaseModel] | None = None
    body_required: bool = True
    errors: Mapping[int, str] = field(default_factory=dict)

    def route(self, endpoint: Endpoint, auth: TokenAuth) -> Route:
        """The route: this path and method, behind a token with this scope."""
        return Route(self.path, auth.protect(endpoint, self.scope), methods=[self.method])

    def serialize(self, content: Any) -> bytes:
        """``content`` (the dict a query built) as JSON, once it validates against the response
        model in strict mode: a key the model does not declare, a missing one, or a value of
        another type (a number where a date-time belongs) raises, and is never served. What is
        served is the validated bytes themselves, so nothing is converted on the way out."""
        body = orjson.dumps(content)
        self.response.model_validate_json(body, strict=True)
        return body

    def answer(self, content: Any, headers: dict[str, str] | None = None) -> Response:
        """The success response: ``content`` checked by the model, with this operation's
        status."""
        return Response(self.serialize(content), self.status, headers,
                        media_type="application/json")

    def error_statuses(self) -> dict[int, str]:
        """Every error status this operation may answer, and what it means."""
        statuses = {
            401: "No bearer token, or not one of SERVICE_READ_TOKENS or SERVICE_API_TOKENS",
            422: "A query value that cannot be stored (NUL, a lone surrogate)",
            503: "The database is unavailable; retry after Retry-After",
        }
        if "{" in self.path:
            statuses[404] = "Not found (an id in the path that is not a Codat id, at once)"
        if any(p.where == "query" for p in self.params):
            statuses[400] = "A query parameter that cannot be used; the message names it"
        if self.scope is Scope.WRITE:
            statuses[403] = ("A read-only token (SERVICE_READ_TOKENS): onboarding needs one "
                             "from SERVICE_API_TOKENS")
        statuses.update(self.errors)
        return dict(sorted(statuses.items()))
