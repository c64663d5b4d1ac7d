"""Multipart bodies parsed in-process by gainx.serve.body.read_files: what is refused, and why."""

from __future__ import annotations

import asyncio

import pytest
from starlette.requests import Request

from gainx.serve.body import read_files
from gainx.serve.budget import Budget
from gainx.serve.errors import ApiError

PART = b'--xx\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\nPNGDATA'


def _read(body: bytes, content_type: str) -> list[tuple[str, str, bytes]]:
    """``read_files`` on a request with ``body`` (declared by its ``Content-Length``) and ``content_type``."""

    async def main() -> list[tuple[str, str, bytes]]:
        chunks = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive() -> dict:
            return chunks.pop(0) if chunks else {"type": "http.disconnect"}

        headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]
        request = Request({"type": "http", "method": "POST", "headers": headers}, receive)
        with Budget(1 << 20).hold() as held:
            return await read_files(request, 1 << 20, 5.0, 10.0, 4, held)

    return asyncio.run(main())


def test_well_formed_body_gives_its_file() -> None:
    assert _read(PART + b"\r\n--xx--\r\n", "multipart/form-data; boundary=xx") == [("file", "a.png", b"PNGDATA")]


@pytest.mark.parametrize(
    ("body", "content_type", "message"),
    [
        (PART, "multipart/form-data; boundary=xx", "ends before its closing boundary '--xx--'"),
        (PART + b"\r\n--xx", "multipart/form-data; boundary=xx", "ends before its closing boundary '--xx--'"),
        (PART.replace(b"--xx", b"--"), "multipart/form-data; boundary=", "empty boundary"),
        (PART.replace(b"--xx", b"--"), 'multipart/form-data; boundary=""', "empty boundary"),
    ],
    ids=["unterminated", "cut in the closing boundary", "empty boundary", "empty quoted boundary"],
)
def test_malformed_body_is_a_bad_multipart(body: bytes, content_type: str, message: str) -> None:
    with pytest.raises(ApiError) as info:
        _read(body, content_type)
    assert (info.value.status, info.value.code) == (400, "bad_multipart")
    assert message in info.value.message


def test_more_files_than_the_limit_are_too_many_files() -> None:
    body = b"\r\n".join([PART] * 5) + b"\r\n--xx--\r\n"  # the limit _read passes is 4
    with pytest.raises(ApiError) as info:
        _read(body, "multipart/form-data; boundary=xx")
    assert (info.value.status, info.value.code) == (400, "too_many_files")
    assert "more than 4 files" in info.value.message
