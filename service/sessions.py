"""On-call sessions: what the ``/oncall`` cookie carries instead of a token.

A browser cannot send a bearer header, so the page has a login form (a POST: the token never
lands in an address, a history or an access log). A valid token buys a session cookie:

    v1.<expires, unix seconds>.<token id>.<HMAC-SHA256>

signed with a key derived from that token, expiring after :data:`SESSION_SECONDS`. The cookie
holds neither the token nor anything it can be recovered from; it only grants reading (the page
is read-only, whatever the token could do). No new secret to keep: the key comes from the token,
so a session ends when its token is removed from the settings (rotation), or when it expires.
The cookie is HttpOnly, SameSite=Strict, scoped to the page's path, and ``Secure`` when the
deployment says clients reach it over https (SERVICE_BEHIND_TLS) or the request itself is https.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import Response

from service.auth import Scope, TokenAuth, token_id
from service.errors import ReceiverError
from service.limits import read_body

COOKIE = "codat_hooks_oncall"
SESSION_SECONDS = 12 * 3600  # one night on call
MAX_FORM_BYTES = 4096
_VERSION = "v1"


def _key(token: str) -> bytes:
    return hmac.new(token.encode(), b"codat-hooks on-call session key", hashlib.sha256).digest()


def _mac(token: str, payload: str) -> str:
    return hmac.new(_key(token), payload.encode(), hashlib.sha256).hexdigest()


class Sessions:
    """Issues and checks on-call session cookies for the tokens ``auth`` knows."""

    def __init__(self, auth: TokenAuth, *, path: str, behind_tls: bool,
                 clock: Callable[[], float] = time.time) -> None:
        self._auth = auth
        self.path = path
        self._behind_tls = behind_tls
        self._clock = clock

    def issue(self, token: str) -> str | None:
        """A cookie value for ``token``, or None when it is not a valid token."""
        if self._auth.scope_of(token) is None:
            return None
        payload = f"{_VERSION}.{int(self._clock()) + SESSION_SECONDS}.{token_id(token)}"
        return f"{payload}.{_mac(token, payload)}"

    def scope_of(self, request: Request) -> Scope | None:
        """READ for a request with a valid, unexpired session cookie; else None."""
        value = request.cookies.get(COOKIE)
        if not value:
            return None
        version, _, rest = value.partition(".")
        expires, _, rest = rest.partition(".")
        name, _, mac = rest.partition(".")
        if version != _VERSION or not expires.isdigit() or int(expires) <= self._clock():
            return None
        token = self._auth.token_by_id(name)
        if token is None:  # removed from the settings since: its sessions end with it
            return None
        expected = _mac(token, f"{version}.{expires}.{name}")
        return Scope.READ if hmac.compare_digest(mac.encode(), expected.encode()) else None

    def secure(self, request: Request) -> bool:
        return self._behind_tls or request.url.scheme == "https"

    def set_cookie(self, response: Response, request: Request, value: str) -> None:
        response.set_cookie(COOKIE, value, max_age=SESSION_SECONDS, path=self.path,
                            secure=self.secure(request), httponly=True, samesite="strict")

    def clear_cookie(self, response: Response, request: Request) -> None:
        response.delete_cookie(COOKIE, path=self.path, secure=self.secure(request),
                               httponly=True, samesite="strict")


async def form_token(request: Request) -> str | None:
    """The ``token`` field of a urlencoded login form (None when absent or malformed)."""
    try:
        body = await read_body(request, MAX_FORM_BYTES)
    except ReceiverError:
        return None
    try:
        fields = parse_qs(body.decode("utf-8"), max_num_fields=10)
    except (UnicodeDecodeError, ValueError):
        return None
    values = fields.get("token") or []
    token = values[0].strip() if len(values) == 1 else ""
    return token if token and token.isprintable() else None
