"""Connection limits below the application: deadlines, a cap on open connections, a budget of unsent bytes.

uvicorn's HTTP/1.1 protocol (h11) holds a connection for as long as the
client keeps it open: a socket that sends nothing, or half a header, is never
closed; a client that pipelines requests and never reads their answers leaves
uvicorn waiting in ``drain()`` forever with the connection busy; and
``transport.close()`` waits for unsent bytes to be flushed, which for such a
client never happens. :func:`guarded_protocol` returns a subclass of uvicorn's
``H11Protocol`` that adds

* a head size limit: a request head longer than :data:`MAX_HEAD_BYTES` (from the
  request line to the blank line that ends the head) gets a 431 and the
  connection is closed. h11 enforces its own limit of the same size only on a
  head that is still incomplete, so one that arrives whole in a single read (up
  to the transport's read size, 256 KiB) would pass it;
* a header deadline: a connection must deliver a complete request head within
  ``header_timeout`` seconds of opening, or of the first byte of its next
  request on a kept-alive connection (the unread rest of a body the
  application refused early counts as such bytes); otherwise it is closed;
* a send deadline (nginx's ``send_timeout``): a connection holding answer
  bytes the client has not taken for ``send_timeout`` seconds (no byte of them
  moved into the kernel) is aborted; checked every ``send_timeout / 4``
  seconds, so it goes between ``send_timeout`` and 1.25 x ``send_timeout``
  after its last progress;
* a connection cap: when a new connection would make more than
  ``max_connections``, the connection that has been idle (no request being
  handled, or a request head still arriving) the longest is closed; if none is
  idle, the writer that has waited longest on its client (answer bytes
  buffered, none moved since) is aborted; if there is no such writer either,
  the connection whose request body has waited longest for its next byte from
  the client is closed; if there is none of these, the new one is closed. Clients
  that open many idle sockets, pipeline requests and never read, or drip their
  request bodies, therefore cannot lock others (or ``/healthz``) out;
* a budget of unsent answer bytes: the bytes waiting in the connections'
  write buffers, summed over all connections, may not exceed
  ``max_buffered_bytes``; past it, the writers that have waited longest on
  their clients are aborted until the sum fits again.

A connection is closed politely only when nothing it was sent is still
buffered; otherwise it is aborted (``transport.abort()`` with a zero linger
time: a TCP reset, the bytes buffered in the process and in the kernel
dropped), since a polite close would wait for a flush that a
non-reading client never allows. The same holds for uvicorn's keep-alive
timeout (``keep_alive``): an idle connection with unsent bytes is aborted. A
request body that arrives too slowly is cut by the application
(:mod:`gainx.serve.body`).
"""

from __future__ import annotations

import asyncio
import itertools
import re
import socket
import struct
from collections.abc import Callable
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from gainx.serve.config import ServeConfig
from gainx.serve.errors import ApiError

MAX_HEAD_BYTES = 16 * 1024  # request line and header fields, as h11's own limit on an incomplete head
_HEAD_END = re.compile(rb"\n\r?\n")  # the blank line that ends a request head, as h11 finds it

_LINGER_OFF = struct.pack("ii", 1, 0)  # struct linger {l_onoff = 1, l_linger = 0}: close() sends a reset


def _reset(transport: asyncio.Transport) -> None:
    """Abort ``transport`` with a TCP reset, dropping what the kernel still holds for the client too.

    ``transport.abort()`` drops the process's buffer, but closing a socket whose kernel send buffer is
    not empty still queues a FIN behind those bytes: the kernel would keep the connection (and up to
    a few MB) until the client reads them. A zero linger time makes the close a reset instead.
    """
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_OFF)
        except OSError:  # already closed by the peer
            pass
    transport.abort()


def head_too_large(buffered: bytes) -> bool:
    """Whether the request head that ``buffered`` starts with is (or, still unfinished, will be) over
    :data:`MAX_HEAD_BYTES`."""
    return len(buffered) > MAX_HEAD_BYTES and _HEAD_END.search(buffered, 0, MAX_HEAD_BYTES) is None


def _head_refusal() -> bytes:
    """The 431 answer (and ``Connection: close``) to a request head over :data:`MAX_HEAD_BYTES`."""
    error = ApiError(431, "head_too_large", f"the request head is over the limit of {MAX_HEAD_BYTES} bytes")
    body = error.body()
    head = (
        "HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


class _CountingTransport:
    """The connection's transport, counting the bytes written to it (so that ``written - buffered`` is sent).

    uvicorn writes every answer through ``transport.write``; asyncio tells a
    protocol when its buffer crosses a watermark but not when bytes leave it.
    """

    def __init__(self, transport: asyncio.Transport, on_write: Callable[[], None]) -> None:
        self._transport = transport
        self._on_write = on_write
        self.written = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._transport.write(data)
        self.written += len(data)
        self._on_write()

    def sent(self) -> int:
        """Bytes written that have left the write buffer (into the kernel)."""
        return self.written - self._transport.get_write_buffer_size()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class _Connections:
    """What the connections of one server share: idle ones and waiting writers in order, and unsent bytes."""

    def __init__(self) -> None:
        self.idle: dict[H11Protocol, None] = {}  # oldest idle first (dicts keep insertion order)
        self.waiting: dict[H11Protocol, None] = {}  # writers with unsent bytes, longest without progress first
        self.reading: dict[H11Protocol, None] = {}  # request bodies still arriving, longest without a byte first
        self.buffered: dict[H11Protocol, int] = {}  # unsent bytes per connection, as last seen
        self.total_buffered = 0

    def set_idle(self, conn: H11Protocol) -> None:
        self.idle.pop(conn, None)
        self.idle[conn] = None

    def progressed(self, conn: H11Protocol) -> None:
        """``conn`` has unsent bytes and moved some just now (or just got some): last in the waiting order."""
        self.waiting.pop(conn, None)
        self.waiting[conn] = None

    def received(self, conn: H11Protocol, body_pending: bool) -> None:
        """``conn`` got bytes just now: last in the reading order while its request body is still arriving."""
        self.reading.pop(conn, None)
        if body_pending:
            self.reading[conn] = None

    def victim(self, newcomer: H11Protocol) -> H11Protocol | None:
        """The connection to close for ``newcomer`` past the cap: idle the longest, else the writer waiting
        longest on its client, else the reader whose body waited longest for a byte (one that uvicorn stopped
        reading is not waiting on its client); None when there is none of these."""
        closable = itertools.chain(
            (conn for conn in itertools.chain(self.idle, self.waiting) if conn is not newcomer),
            (conn for conn in self.reading if not conn.flow.read_paused),
        )
        return next(closable, None)

    def set_buffered(self, conn: H11Protocol, size: int) -> None:
        self.total_buffered += size - self.buffered.pop(conn, 0)
        if size:
            self.buffered[conn] = size
        else:
            self.waiting.pop(conn, None)

    def forget(self, conn: H11Protocol) -> None:
        self.idle.pop(conn, None)
        self.waiting.pop(conn, None)
        self.reading.pop(conn, None)
        self.set_buffered(conn, 0)


def guarded_protocol(config: ServeConfig) -> type[H11Protocol]:
    """An ``H11Protocol`` subclass enforcing the connection limits of ``config`` (see the module doc); one per server.

    ``header_timeout``, ``send_timeout``, ``keep_alive``, ``max_connections`` and ``max_buffered_bytes`` above
    are ``config``'s ``header_timeout_s``, ``send_timeout_s``, ``keep_alive_s``, ``max_connections`` and
    ``max_buffered_bytes``.
    """
    shared = _Connections()
    tick = config.send_timeout_s / 4

    class GuardedH11Protocol(H11Protocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._header_timer: asyncio.TimerHandle | None = None
            self._send_timer: asyncio.TimerHandle | None = None
            self._last_sent = 0
            self._last_progress = 0.0

        # -- state -------------------------------------------------------------------
        def _handling_request(self) -> bool:
            return self.cycle is not None and not self.cycle.response_complete

        def _unsent(self) -> int:
            return self.transport.get_write_buffer_size()

        # -- closing -----------------------------------------------------------------
        def _close(self) -> None:
            """Close politely when nothing is left to send, else abort (a close would wait for the client)."""
            shared.forget(self)
            if self._unsent():
                _reset(self.transport)
            elif not self.transport.is_closing():
                try:
                    self.conn.send(h11.ConnectionClosed())
                except h11.LocalProtocolError:  # mid-request-head: h11 cannot say goodbye politely
                    pass
                self.transport.close()

        def timeout_keep_alive_handler(self) -> None:
            self._close()

        # -- header deadline -----------------------------------------------------------
        def _arm_header_timer(self) -> None:
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(config.header_timeout_s, self._header_deadline_passed)

        def _disarm_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _header_deadline_passed(self) -> None:
            self._header_timer = None
            if not self._handling_request():
                self._close()

        # -- send deadline and unsent-bytes budget ---------------------------------------
        def _after_write(self) -> None:
            unsent = self._unsent()
            shared.set_buffered(self, unsent)
            if not unsent:
                return
            if self not in shared.waiting:  # waiting on the client starts now
                shared.progressed(self)
            if self._send_timer is None:
                self._last_sent, self._last_progress = self.transport.sent(), self.loop.time()
                self._send_timer = self.loop.call_later(tick, self._send_check)
            if shared.total_buffered > config.max_buffered_bytes:
                _enforce_budget()

        def _send_check(self) -> None:
            self._send_timer = None
            unsent = self._unsent()
            shared.set_buffered(self, unsent)
            if not unsent:
                return
            sent, now = self.transport.sent(), self.loop.time()
            if sent > self._last_sent:
                self._last_sent, self._last_progress = sent, now
                shared.progressed(self)
            elif now - self._last_progress >= config.send_timeout_s:
                self._close()
                return
            self._send_timer = self.loop.call_later(tick, self._send_check)

        # -- uvicorn's protocol ----------------------------------------------------------
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(_CountingTransport(transport, self._after_write))  # type: ignore[arg-type]
            shared.set_idle(self)
            self._arm_header_timer()
            if len(self.connections) > config.max_connections:
                (shared.victim(self) or self)._close()

        def handle_events(self) -> None:  # on new bytes, and on a pipelined request once the one before is answered
            if self.conn.their_state is h11.IDLE and head_too_large(self.conn.trailing_data[0]):
                self.transport.write(_head_refusal())
                self.transport.close()
                return
            super().handle_events()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)  # cancels uvicorn's keep-alive timer
            shared.received(self, self.conn.their_state is h11.SEND_BODY and not self.transport.is_closing())
            if self._handling_request():
                shared.idle.pop(self, None)
                self._disarm_header_timer()
            elif self.transport.is_closing():
                pass
            elif self.conn.their_state is h11.IDLE and not self.conn.trailing_data[0]:
                # between requests with nothing buffered (the unread rest of a refused body has just ended):
                # idle, so uvicorn's keep-alive timeout applies, not the header deadline
                self._disarm_header_timer()
                if self.timeout_keep_alive_task is None:
                    self.timeout_keep_alive_task = self.loop.call_later(
                        self.timeout_keep_alive, self.timeout_keep_alive_handler
                    )
            else:  # a request head in progress, or the unread rest of a refused body: one deadline, never extended
                self._arm_header_timer()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self._handling_request() and not self.transport.is_closing():  # not into a pipelined request
                shared.set_idle(self)

        def connection_lost(self, exc: Exception | None) -> None:
            shared.forget(self)
            self._disarm_header_timer()
            if self._send_timer is not None:
                self._send_timer.cancel()
                self._send_timer = None
            super().connection_lost(exc)

    def _enforce_budget() -> None:
        """Abort the writers waiting longest on their clients until the unsent bytes fit the budget.

        The sizes recorded may be stale (buffers drain between checks): they are
        re-read before anyone is aborted.
        """
        for conn in list(shared.buffered):
            shared.set_buffered(conn, conn.transport.get_write_buffer_size())
        for conn in list(shared.waiting):
            if shared.total_buffered <= config.max_buffered_bytes:
                return
            conn._close()

    return GuardedH11Protocol
