"""Connection limits below the application: a header deadline and a cap on open connections.

uvicorn's HTTP/1.1 protocol (h11) holds a connection for as long as the
client keeps it open while it has not sent a whole request head: a socket
that sends nothing, or half a header, is never closed, and with the usual
limit of 1,024 open files about a thousand of them stop the server from
accepting anyone else. :func:`guarded_protocol` returns a subclass of
uvicorn's ``H11Protocol`` that adds

* a header deadline: a connection must deliver a complete request head within
  ``header_timeout`` seconds of opening, or of the first byte of its next
  request on a kept-alive connection (the unread rest of a body the
  application refused early counts as such bytes); otherwise it is closed;
* a connection cap: when a new connection would make more than
  ``max_connections``, the connection that has been idle (no request being
  handled) the longest is closed; if every other connection is handling a
  request, the new one is closed instead. A client that opens many idle
  sockets therefore cannot lock others (or ``/healthz``) out.

Idle kept-alive connections are closed by uvicorn after ``timeout_keep_alive``
seconds; a request body that arrives too slowly is cut by the application
(:mod:`gainx.serve.body`).
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


class _Idle:
    """Connections not handling a request, oldest idle first (dicts keep insertion order)."""

    def __init__(self) -> None:
        self.connections: dict[H11Protocol, None] = {}

    def add(self, conn: H11Protocol) -> None:
        self.connections.pop(conn, None)
        self.connections[conn] = None

    def discard(self, conn: H11Protocol) -> None:
        self.connections.pop(conn, None)

    def oldest_except(self, conn: H11Protocol) -> H11Protocol | None:
        return next((other for other in self.connections if other is not conn), None)


def guarded_protocol(header_timeout: float, max_connections: int) -> type[H11Protocol]:
    """An ``H11Protocol`` subclass enforcing ``header_timeout`` and ``max_connections`` (see the module doc)."""
    if header_timeout <= 0 or max_connections < 1:
        raise ValueError(f"need header_timeout > 0 and max_connections >= 1, got {header_timeout}, {max_connections}")
    idle = _Idle()

    class GuardedH11Protocol(H11Protocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._header_timer: asyncio.TimerHandle | None = None

        def _handling_request(self) -> bool:
            return self.cycle is not None and not self.cycle.response_complete

        def _arm_header_timer(self) -> None:
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(header_timeout, self._header_deadline_passed)

        def _disarm_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _header_deadline_passed(self) -> None:
            self._header_timer = None
            if not self._handling_request():
                self._close()

        def _close(self) -> None:
            if not self.transport.is_closing():
                try:
                    self.conn.send(h11.ConnectionClosed())
                except h11.LocalProtocolError:  # mid-request-head: h11 cannot say goodbye politely
                    pass
                self.transport.close()

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            idle.add(self)
            self._arm_header_timer()
            if len(self.connections) > max_connections:
                victim = idle.oldest_except(self)
                (victim or self)._close()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)  # cancels uvicorn's keep-alive timer
            if self._handling_request():
                idle.discard(self)
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
            if not self._handling_request():  # not straight into a pipelined request
                idle.add(self)

        def connection_lost(self, exc: Exception | None) -> None:
            idle.discard(self)
            self._disarm_header_timer()
            super().connection_lost(exc)

    return GuardedH11Protocol
