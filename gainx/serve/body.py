"""Read request bodies under a byte limit and a time limit, never whole when too big.

A declared ``Content-Length`` over the limit is refused before a single body
byte is read; a body without one (chunked) is counted as it streams and
refused as soon as it crosses the limit. A client that stalls mid-body gets a
408 after ``timeout`` seconds instead of holding a worker forever, and one that
sends its body in a slow drip (each byte inside ``timeout``) gets a 408 once
the whole body has taken ``deadline`` seconds. Every byte read is also taken
from the server-wide budget of body bytes in flight (a :class:`Hold` on it):
past that budget the request gets a 503 with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from python_multipart.multipart import parse_options_header
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect, Request

from gainx.serve.budget import Hold
from gainx.serve.errors import ApiError, busy


def check_declared_length(request: Request, limit: int) -> None:
    """Refuse a body whose ``Content-Length`` header is malformed or over ``limit``."""
    declared = request.headers.get("content-length")
    if declared is None:
        return
    if not (declared.isascii() and declared.isdigit()):  # str.isdigit alone accepts "²", which int() refuses
        raise ApiError(400, "bad_content_length", f"Content-Length {declared!r} is not a non-negative integer")
    if int(declared) > limit:
        raise ApiError(413, "body_too_large", f"request body of {declared} bytes is over the limit of {limit} bytes")


async def limited_stream(
    request: Request, limit: int, timeout: float, deadline: float, held: Hold
) -> AsyncIterator[bytes]:
    """Yield the body's chunks; 413 past ``limit`` bytes, 408 after ``timeout`` s idle or ``deadline`` s in all,
    503 when the chunk does not fit the budget of ``held``."""
    check_declared_length(request, limit)
    seen = 0
    chunks = request.stream().__aiter__()
    end = time.monotonic() + deadline
    while True:
        left = end - time.monotonic()
        try:
            chunk = await asyncio.wait_for(chunks.__anext__(), min(timeout, max(left, 0.0)))
        except StopAsyncIteration:
            return
        except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
            if left <= timeout:
                raise ApiError(408, "body_deadline", f"the request body took over {deadline:g} s; giving up") from None
            raise ApiError(408, "body_timeout", f"no request body bytes for {timeout:g} s; giving up") from None
        except ClientDisconnect:
            raise ApiError(400, "client_disconnected", "the client went away before sending the whole body") from None
        seen += len(chunk)
        if seen > limit:
            raise ApiError(413, "body_too_large", f"request body is over the limit of {limit} bytes")
        if not held.try_add(len(chunk)):
            budget = held.budget
            raise busy(f"the request bodies in progress hold {budget.held} bytes (limit {budget.limit} in all)")
        yield chunk


async def read_body(request: Request, limit: int, timeout: float, deadline: float, held: Hold) -> bytes:
    """The whole body as bytes, under the limits of :func:`limited_stream`."""
    return b"".join([chunk async for chunk in limited_stream(request, limit, timeout, deadline, held)])


class _FormParser(MultiPartParser):
    """Starlette's multipart parser, noting whether the body reached its closing boundary
    (python-multipart ends a body that stops short without an error)."""

    ended = False

    def on_end(self) -> None:
        self.ended = True


async def read_files(
    request: Request, limit: int, timeout: float, deadline: float, max_files: int, held: Hold
) -> list[tuple[str, str, bytes]]:
    """Parse a ``multipart/form-data`` body into ``(field, filename, bytes)`` for each file part.

    Non-file fields are not accepted (they have no meaning here) and give a 400
    naming them. An empty boundary (``boundary=``) and a body that ends before
    its closing boundary (``--BOUNDARY--``) give a 400 ``bad_multipart``
    saying so.
    """
    boundary = parse_options_header(request.headers.get("content-type", ""))[1].get(b"boundary")
    if boundary == b"":
        raise ApiError(400, "bad_multipart", "the multipart Content-Type has an empty boundary ('boundary=')")
    parser = _FormParser(
        request.headers,
        limited_stream(request, limit, timeout, deadline, held),
        max_files=max_files,
        max_fields=16,
        max_part_size=limit,
    )
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        if exc.message.startswith("Too many files"):
            raise ApiError(400, "too_many_files", f"more than {max_files} files in one request") from None
        raise ApiError(400, "bad_multipart", f"cannot parse the multipart body: {exc.message}") from None
    files: list[tuple[str, str, bytes]] = []
    try:
        if not parser.ended:
            closing = f"--{boundary.decode('latin-1')}--"
            raise ApiError(
                400, "bad_multipart", f"the multipart body ends before its closing boundary {closing!r} (cut short?)"
            )
        for name, value in form.multi_items():
            if not isinstance(value, UploadFile):
                raise ApiError(400, "unexpected_field", f"multipart field {name!r} is not a file upload")
            files.append((name, value.filename or "", await value.read()))
    finally:
        await form.close()
    return files
