"""uvicorn HTTP/1.1 protocol with a deadline for request headers (slowloris protection).

uvicorn's h11 protocol only times out idle keep-alive connections *after* a response; a client
that connects and then trickles header bytes (or sends nothing) holds the connection forever.
``GuardedH11Protocol`` arms a timer whenever the connection is waiting for request headers and
answers ``408`` and closes when the headers are not complete in time. Headers larger than
``h11_max_incomplete_event_size`` are answered ``431`` (uvicorn says 400).

Use ``uvicorn_options(settings)`` to get every uvicorn keyword the daemon should pass.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

DEFAULT_HEADER_TIMEOUT_SECS = 10.0


class GuardedH11Protocol(H11Protocol):
    header_timeout_secs: float = DEFAULT_HEADER_TIMEOUT_SECS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None
        self._max_header_bytes = self.conn._max_incomplete_event_size  # noqa: SLF001

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        _set_nodelay(transport)
        self._arm_header_timer()  # the first request line must arrive in time too

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._update_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._update_timer()

    def _waiting_for_headers(self) -> bool:
        # part of a request line/headers is buffered: the client must finish it in time
        return self.conn.their_state is h11.IDLE and bool(self.conn.trailing_data[0])

    def _draining(self) -> bool:
        # answered early (413, 401...) while the client still sends its body: uvicorn reads
        # and discards the rest so the client can read the answer; bound how long that lasts
        return (
            self.conn.their_state is h11.SEND_BODY
            and self.cycle is not None
            and self.cycle.response_complete
        )

    def _update_timer(self) -> None:
        if self.transport.is_closing():
            self._disarm_header_timer()
        elif self._waiting_for_headers() or self._draining():
            if self._header_timer is None:
                self._arm_header_timer()
        else:
            self._disarm_header_timer()

    def _arm_header_timer(self) -> None:
        self._disarm_header_timer()
        self._header_timer = self.loop.call_later(
            self.header_timeout_secs, self._header_timeout_expired
        )

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout_expired(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        if self._draining():
            self.logger.warning("closing connection from %s: body not finished", self.client)
            self.transport.close()
            return
        if self.conn.their_state is not h11.IDLE:
            return  # a request is being read or answered: the app's deadlines apply
        self.logger.warning(
            "closing connection from %s: request headers not received within %.0f s",
            self.client,
            self.header_timeout_secs,
        )
        self._close_with(408, b"Request Timeout", b"request headers not received in time")

    def send_400_response(self, msg: str) -> None:
        if len(self.conn.trailing_data[0]) > self._max_header_bytes:
            self._close_with(
                431, b"Request Header Fields Too Large", b"request header fields too large"
            )
            return
        super().send_400_response(msg)

    def _close_with(self, status: int, reason: bytes, body: bytes) -> None:
        # Written by hand: h11's state machine may already be in ERROR for this connection.
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\n"
            b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (status, reason, len(body), body)
        )
        self.transport.close()


def _set_nodelay(transport: asyncio.Transport) -> None:
    """Disable Nagle's algorithm on TCP connections.

    asyncio does this only for sockets whose ``proto`` is IPPROTO_TCP; a listening socket made
    with ``socket.socket(AF_INET, SOCK_STREAM)`` (proto 0) and handed to uvicorn (``sockets=``,
    ``fd=``) yields connections where a response written in two parts waits ~40 ms for the
    client's delayed ACK.
    """
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # pragma: no cover - not a TCP socket after all
            pass


def guarded_protocol(header_timeout_secs: float) -> type[GuardedH11Protocol]:
    """A ``GuardedH11Protocol`` subclass with its own header deadline."""
    return type(
        "GuardedH11Protocol",
        (GuardedH11Protocol,),
        {"header_timeout_secs": float(header_timeout_secs)},
    )
