"""The instance's listening socket, bound by ``python -m neve.server`` before uvicorn starts."""

from __future__ import annotations

import socket


def bind_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (a free port for 0), not listening yet: uvicorn
    listens on it once the application has started (a worker has loaded the model).

    Created with ``proto=IPPROTO_TCP`` (uvicorn's own ``bind_socket`` passes 0): asyncio sets
    TCP_NODELAY only on accepted sockets whose ``proto`` says TCP, and without it every
    response written in two parts (headers, body) waits ~40 ms for the client's delayed ACK.
    No ``SO_REUSEPORT``: two servers started on one fixed port must fail, not share it.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock
