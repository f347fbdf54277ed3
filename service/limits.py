"""Request body limits: refuse a body over the limit before it is read whole."""

from __future__ import annotations

from starlette.requests import ClientDisconnect, Request

from service.errors import ClientGone, PayloadTooLarge


def check_declared_length(request: Request, limit: int) -> None:
    """413 at once when Content-Length already says the body is too large."""
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"body is larger than {limit} bytes")


async def read_body(request: Request, limit: int) -> bytes:
    """The body, read chunk by chunk; stops at the limit whatever Content-Length said."""
    check_declared_length(request, limit)
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"body is larger than {limit} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        raise ClientGone("the client went away before its body arrived") from None
    return b"".join(chunks)
