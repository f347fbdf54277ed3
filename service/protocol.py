"""uvicorn's httptools protocol, with the limits a server facing the internet needs.

uvicorn enforces header limits only with h11 and starts its keep-alive timer only after a
response, so over httptools one request could grow the process by the size of a header, and a
connection that trickles its head or body, or sends nothing, stayed open for good. This thin
subclass adds, per connection:

- the head: the request line at most 8 KiB (400), a header at most 8 KiB, at most 100 headers,
  the whole head at most 64 KiB (431): gunicorn's defaults. Its bytes are counted as they
  arrive (past 64 KiB it is refused at once, so memory stays flat whatever is sent) and the
  rest is checked when it is complete, before the app sees it;
- deadlines: the whole head within ``head_timeout`` of its first byte, the body within
  ``body_timeout`` of the head (408); a connection with no request under way is closed after
  ``idle_timeout``, from the moment it is accepted;
- a cap on connections: beyond ``max_connections`` a request is answered 503 and the connection
  closed, except the probes (``/healthz``, ``/readyz``), which are answered as usual; beyond
  ``hard_cap`` a new connection is closed at once, so the process never runs out of file
  descriptors (see :mod:`service.serving`).

A refused request is answered, then the connection is half-closed and what the client still
sends is read and dropped for a moment (so it sees the answer rather than a reset), then closed.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import httptools
from uvicorn._types import ASGIReceiveCallable, ASGISendCallable, Scope
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

MAX_REQUEST_LINE = 8 * 1024
MAX_HEADER = 8 * 1024
MAX_HEADERS = 100
MAX_HEAD = 64 * 1024
OVER_CAP_GRACE = 1.0  # a connection over the cap has this long to send its request head
LINGER = 2.0  # after a refusal, how long what the client still sends is read and dropped
PROBES = frozenset({b"/healthz", b"/readyz"})


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """What one server process allows each connection (settings HTTP_*)."""

    head_timeout: float = 10.0
    body_timeout: float = 30.0
    idle_timeout: float = 5.0
    max_connections: int = 1000
    hard_cap: int = 1100


class RefusalSink(Protocol):
    def connection_refused(self, reason: str, status: int | None,
                           client: tuple[str, int] | None) -> None: ...


class _Refused(Exception):
    """Raised inside a parser callback to stop parsing; the protocol answers ``status``."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


async def _over_capacity(scope: Scope, receive: ASGIReceiveCallable,
                         send: ASGISendCallable) -> None:
    body = b'{"error":"too many connections, retry later"}'
    await send({"type": "http.response.start", "status": 503, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"retry-after", b"1"), (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """See the module docstring. Built with :func:`limited_protocol`, which binds the limits."""

    limits: ClassVar[ConnectionLimits] = ConnectionLimits()
    refusals: ClassVar[RefusalSink | None] = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._timer: asyncio.TimerHandle | None = None
        self._in_head = True  # the bytes arriving belong to a request head
        self._head_begun = False  # a head has begun and is not complete
        self._head_bytes = 0  # bytes received since the last request ended (raw)
        self._body_pending = False  # a body is under way (its deadline applies)
        self._over_cap = False
        self._refusing = False  # answered a refusal: dropping what still arrives, then closing

    # --- connection --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        count = len(self.connections)
        if count > self.limits.hard_cap:
            self._report("connection limit", None)
            transport.abort()
            return
        self._over_cap = count > self.limits.max_connections
        # Idle from the start: uvicorn arms this only after a first response.
        self.timeout_keep_alive_task = self.loop.call_later(
            OVER_CAP_GRACE if self._over_cap else self.limits.idle_timeout,
            self.timeout_keep_alive_handler)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refusing:
            return  # answered already: read and drop until the linger ends
        self._unset_keepalive_if_required()
        if self._in_head:
            self._head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            return  # no WebSocket here: the request was already handed to the app as is
        except httptools.HttpParserError as exc:
            refused = exc.__context__
            if isinstance(refused, _Refused):
                self._refuse(refused.status, refused.reason)
            else:
                self._refuse(400, "malformed request")
            return
        # Deadlines are armed only for what is still incomplete after this chunk: a request
        # that arrives whole (the usual case) costs no timer. The clock starts at its first
        # byte all the same: this chunk carried it.
        if self._in_head:
            if self._head_bytes > MAX_HEAD:  # memory stays flat: checked as bytes arrive
                self._refuse(431, "request head too large")
            elif self._head_begun and self._timer is None:
                deadline = self.limits.head_timeout
                self._arm(min(deadline, OVER_CAP_GRACE) if self._over_cap else deadline,
                          self._head_timed_out)
        elif self._body_pending and self._timer is None:
            self._arm(self.limits.body_timeout, self._body_timed_out)

    # --- parser callbacks --------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_begun = True

    def on_headers_complete(self) -> None:
        self._cancel_timer()
        self._check_head()
        self._in_head = self._head_begun = False
        if self._over_cap and httptools.parse_url(self.url).path not in PROBES:
            self._report("over connection cap", 503)
            self.app = _over_capacity
        super().on_headers_complete()
        if self._over_cap:
            self.cycle.keep_alive = False  # one answer, then the connection goes
        self._body_pending = not self.pipeline  # a queued request is timed when it starts

    def _check_head(self) -> None:
        """The head's limits (its size in memory is bounded meanwhile by MAX_HEAD bytes)."""
        if len(self.url) > MAX_REQUEST_LINE:
            raise _Refused(400, "request line too long")
        if len(self.headers) > MAX_HEADERS:
            raise _Refused(431, "too many headers")
        size = len(self.url)
        for name, value in self.headers:
            field = len(name) + len(value)
            if field + 2 > MAX_HEADER:
                raise _Refused(431, "header too large")
            size += field + 4
        if size > MAX_HEAD:
            raise _Refused(431, "request head too large")

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._cancel_timer()
        self._in_head = True
        self._body_pending = False
        self._head_bytes = 0

    def on_response_complete(self) -> None:
        queued = len(self.pipeline)
        super().on_response_complete()
        if len(self.pipeline) < queued and self.cycle.more_body and self._timer is None:
            self._arm(self.limits.body_timeout, self._body_timed_out)  # it starts now

    # --- deadlines and refusals --------------------------------------------------------------

    def _arm(self, delay: float, callback: Any) -> None:
        self._cancel_timer()
        self._timer = self.loop.call_later(delay, callback)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _head_timed_out(self) -> None:
        self._timer = None
        if self.cycle is not None and not self.cycle.response_complete:
            # A request before this one (pipelined) is still being answered: no room for a 408.
            self._close_without_answer("head timeout")
            return
        self._refuse(408, "head timeout")

    def _body_timed_out(self) -> None:
        self._timer = None
        if self.cycle is None or self.cycle.response_started:
            self._close_without_answer("body timeout")  # answered already: no room for a 408
            return
        self._refuse(408, "body timeout")

    def _close_without_answer(self, reason: str) -> None:
        self._report(reason, None)
        self._disconnect_cycle()
        self.transport.close()

    def _disconnect_cycle(self) -> None:
        """The app's request is over: its next receive() says so, its send() does nothing."""
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.disconnected = True
            self.cycle.message_event.set()

    def _refuse(self, status: int, reason: str) -> None:
        if self._refusing or self.transport.is_closing():
            return
        if self.cycle is not None and self.cycle.response_started \
                and not self.cycle.response_complete:
            self._close_without_answer(reason)  # an answer is being written: no room for ours
            return
        self._refusing = True
        self._cancel_timer()
        self._unset_keepalive_if_required()
        self._report(reason, status)
        self._disconnect_cycle()
        body = reason.encode()
        self.transport.write(b"".join([
            STATUS_LINE[status], b"content-type: text/plain; charset=utf-8\r\n",
            b"content-length: ", str(len(body)).encode(), b"\r\n", b"connection: close\r\n\r\n",
            body]))
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.flow.resume_reading()
        self._timer = self.loop.call_later(LINGER, self.transport.close)

    def _report(self, reason: str, status: int | None) -> None:
        if self.refusals is not None:
            self.refusals.connection_refused(reason, status, self.client)


def limited_protocol(limits: ConnectionLimits,
                     refusals: RefusalSink | None = None) -> type[LimitedHttpToolsProtocol]:
    """The protocol class for one server, with its limits bound (uvicorn builds one instance
    per connection from the class it is given as ``http``)."""
    return type("LimitedHttpToolsProtocol", (LimitedHttpToolsProtocol,),
                {"limits": limits, "refusals": refusals})
