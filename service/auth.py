"""Who may call what: bearer tokens with a scope, checked in constant time.

- ``SERVICE_API_TOKENS``: full rights, as before scopes existed (the query API, the on-call
  page, and the onboarding calls that create companies and connections and unlink them), so
  an existing deployment keeps working unchanged.
- ``SERVICE_READ_TOKENS``: read only (the query API and the on-call page); an onboarding call
  with one is answered 403.

:meth:`TokenAuth.protect` wraps every API endpoint: 401 without a valid token, 403 without the
scope, then the edge checks (:mod:`service.edge`: 404/422 before any I/O), then the endpoint,
whose errors it maps (400 for a bad query, 503 while the database is unavailable, 422 for a
value the database refused to hold).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable
from enum import StrEnum

import asyncpg
from starlette.requests import Request
from starlette.responses import Response

from service.edge import EdgeRefusal, check_request
from service.errors import DatabaseUnavailable
from service.queries import BadQuery
from service.responses import error as _error

Endpoint = Callable[[Request], Awaitable[Response]]
ScopeSource = Callable[[Request], "Scope | None"]


class Scope(StrEnum):
    READ = "read"  # the query API and the on-call page
    WRITE = "write"  # also onboarding: create companies and connections, unlink

    def covers(self, needed: Scope) -> bool:
        return self is Scope.WRITE or needed is Scope.READ


def token_id(token: str) -> str:
    """A stable, non-secret name for a token (in session cookies, never the token itself)."""
    return hashlib.sha256(b"codat-hooks token id\x00" + token.encode()).hexdigest()[:16]


class TokenAuth:
    """Checks ``Authorization: Bearer <token>`` against the configured tokens."""

    def __init__(self, full: frozenset[str], read: frozenset[str] = frozenset()) -> None:
        self._tokens = tuple([(t.encode(), Scope.WRITE) for t in sorted(full)]
                             + [(t.encode(), Scope.READ) for t in sorted(read)])
        self._by_id = {token_id(t): t for t in full | read}

    @property
    def configured(self) -> bool:
        return bool(self._tokens)

    def scope_of(self, token: str) -> Scope | None:
        """The scope a presented token has; every known token is compared (constant time)."""
        presented = token.encode("utf-8", "surrogateescape")
        found: Scope | None = None
        for known, scope in self._tokens:
            if hmac.compare_digest(presented, known):
                found = scope
        return found

    def token_by_id(self, name: str) -> str | None:
        return self._by_id.get(name)

    def bearer_scope(self, request: Request) -> Scope | None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        return self.scope_of(token.strip())

    def allows(self, request: Request, scope: Scope = Scope.READ) -> bool:
        granted = self.bearer_scope(request)
        return granted is not None and granted.covers(scope)

    def protect(self, endpoint: Endpoint, scope: Scope = Scope.READ, *,
                also: ScopeSource | None = None) -> Endpoint:
        """``endpoint`` behind a bearer token with ``scope`` (or what ``also`` grants, e.g. an
        on-call session), the edge checks and the API's error mapping."""
        async def guarded(request: Request) -> Response:
            granted = self.bearer_scope(request)
            if granted is None and also is not None:
                granted = also(request)
            if granted is None:
                return _error(401, "a valid bearer token is required",
                              {"WWW-Authenticate": 'Bearer realm="codat-hooks"'})
            if not granted.covers(scope):
                return _error(403, f"this token may not do this (it is {granted.value}-only; "
                                   "onboarding needs a token from SERVICE_API_TOKENS)")
            try:
                check_request(request)
                return await endpoint(request)
            except EdgeRefusal as exc:
                return _error(exc.status, str(exc))
            except BadQuery as exc:
                return _error(400, str(exc))
            except DatabaseUnavailable:
                return _error(503, "database unavailable, retry later", {"Retry-After": "5"})
            except (asyncpg.DataError, UnicodeEncodeError):
                # A value the edge let through and the database cannot hold: the caller's.
                return _error(422, "a value in the request cannot be stored")
        return guarded
