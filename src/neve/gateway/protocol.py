"""uvicorn's httptools HTTP/1.1 protocol with a deadline and a size limit for request headers.

uvicorn only times out idle keep-alive connections *after* a response; a client that connects
and then trickles header bytes (or sends nothing) would hold the connection forever, and its
httptools protocol buffers request headers of any size. ``GuardedHttpToolsProtocol`` arms a
timer whenever the connection waits for request headers (and while an early answer drains the
rest of a body) and answers ``408`` and closes when it fires; a request head that grows past
``max_header_bytes`` before it is complete is answered ``431`` (a head that arrives whole is
measured by the gateway, which answers a JSON 431). httptools (llhttp, in C) rather than h11 (pure
Python): the ingress proxy spends less CPU per request on parsing.

Use ``uvicorn_options(settings)`` (``neve.gateway.limits``) for every uvicorn keyword the
ingress should pass, or ``guarded_protocol(...)`` for this class with its limits.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

DEFAULT_HEADER_TIMEOUT_SECS = 10.0
DEFAULT_MAX_HEADER_BYTES = 16384


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    header_timeout_secs: float = DEFAULT_HEADER_TIMEOUT_SECS
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None
        self._reading_head = True  # the next bytes that arrive start a request
        self._head_bytes = 0  # bytes received since this request's head began

    # ---------------------------------------------------------------- protocol and parser hooks

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        _set_nodelay(transport)
        self._arm_header_timer()  # the first request line must arrive in time too

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._reading_head:
            self._head_bytes += len(data)
        super().data_received(data)
        too_large = self._reading_head and self._head_bytes > self.max_header_bytes
        if too_large and not self.transport.is_closing():
            self._close_with(  # llhttp would keep buffering a head that never ends
                431, b"Request Header Fields Too Large", b"request header fields too large"
            )
        else:
            self._update_timer()

    def on_headers_complete(self) -> None:
        self._reading_head = False
        self._head_bytes = 0
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._reading_head = True

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._update_timer()

    # ------------------------------------------------------------------------------ the deadline

    def _awaiting_headers(self) -> bool:
        # a part of the next request's head arrived, or the first request has not come yet
        return self._reading_head and (self._head_bytes > 0 or self.cycle is None)

    def _draining(self) -> bool:
        # answered early (413, 401...) while the client still sends its body: uvicorn reads and
        # discards the rest so that the client can read the answer; bound how long that lasts
        return self.cycle is not None and self.cycle.response_complete and self.cycle.more_body

    def _update_timer(self) -> None:
        if self.transport.is_closing():
            self._disarm_header_timer()
        elif self._awaiting_headers() or self._draining():
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
        if not self._awaiting_headers():
            return  # a request is being read or answered: the app's deadlines apply
        self.logger.warning(
            "closing connection from %s: request headers not received within %.0f s",
            self.client,
            self.header_timeout_secs,
        )
        self._close_with(408, b"Request Timeout", b"request headers not received in time")

    def _close_with(self, status: int, reason: bytes, body: bytes) -> None:
        # Written by hand: the parser may be in the middle of a request or in error.
        self._disarm_header_timer()
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


def guarded_protocol(
    header_timeout_secs: float, max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
) -> type[GuardedHttpToolsProtocol]:
    """A ``GuardedHttpToolsProtocol`` subclass with its own limits, for ``uvicorn.Config(http=)``."""
    return type(
        "GuardedHttpToolsProtocol",
        (GuardedHttpToolsProtocol,),
        {
            "header_timeout_secs": float(header_timeout_secs),
            "max_header_bytes": int(max_header_bytes),
        },
    )
