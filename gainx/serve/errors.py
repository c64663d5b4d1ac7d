"""The one error type every request-handling step raises: an HTTP status, a code and a message."""

from __future__ import annotations

import json


class ApiError(Exception):
    """A client-visible failure, rendered as ``{"error": {"status", "code", "message"}}``.

    ``code`` is a stable machine-readable identifier (``"image_truncated"``,
    ``"body_too_large"``, ...); ``message`` says what was wrong in words.
    """

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}  # extra response headers (``Retry-After``)

    def payload(self) -> dict[str, dict[str, object]]:
        return {"error": {"status": self.status, "code": self.code, "message": self.message}}

    def body(self) -> bytes:
        """:meth:`payload` as compact JSON bytes (the body of the error answer)."""
        return json.dumps(self.payload(), separators=(",", ":")).encode()


RETRY_AFTER_S = 1  # what a 503 for a momentary overload tells the client to wait


def busy(message: str, code: str = "server_busy") -> ApiError:
    """A 503 for a momentary overload, with ``Retry-After`` (``message`` says which limit was reached)."""
    return ApiError(503, code, f"{message}; try again shortly", {"Retry-After": str(RETRY_AFTER_S)})
