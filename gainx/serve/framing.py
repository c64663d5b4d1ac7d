"""Refuse requests whose body length is ambiguous: ``Content-Length`` and ``Transfer-Encoding`` together.

RFC 9112 (section 6.1) lets a server reject such a request and requires it to
close the connection after answering: a proxy in front may have framed the
body by the other header, and whatever it took for the next request would
then be read as part of this one (request smuggling). h11 frames it by
``Transfer-Encoding`` alone and accepts it; this middleware answers 400
``ambiguous_length`` with ``Connection: close`` before the application reads
any of the body, and the connection is closed once the answer is sent.
"""

from __future__ import annotations

from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from gainx.serve.errors import ApiError


def ambiguous_length(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether ``headers`` (lower-case names, as ASGI gives them) carry both framing headers."""
    names = {name for name, _ in headers}
    return b"content-length" in names and b"transfer-encoding" in names


class RefuseAmbiguousLength:
    """ASGI middleware: 400 and close for a request carrying both ``Content-Length`` and ``Transfer-Encoding``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and ambiguous_length(scope["headers"]):
            error = ApiError(
                400,
                "ambiguous_length",
                "the request has both Content-Length and Transfer-Encoding: send one of them",
            )
            response = Response(error.body(), 400, headers={"Connection": "close"}, media_type="application/json")
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
