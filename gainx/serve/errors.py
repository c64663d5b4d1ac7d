"""The one error type every request-handling step raises: an HTTP status, a code and a message."""

from __future__ import annotations


class ApiError(Exception):
    """A client-visible failure, rendered as ``{"error": {"status", "code", "message"}}``.

    ``code`` is a stable machine-readable identifier (``"image_truncated"``,
    ``"body_too_large"``, ...); ``message`` says what was wrong in words.
    """

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def payload(self) -> dict[str, dict[str, object]]:
        return {"error": {"status": self.status, "code": self.code, "message": self.message}}
