"""A lean asyncio HTTP/1.1 client for the proxies' hop to the instances (keep-alive pools).

An ingress proxy spends most of its CPU per request on HTTP machinery; between a proxy and an
instance (plain HTTP on the cluster network, answers with a Content-Length) a general client
is not needed: this one writes the request in one buffer and reads the answer with two stream
reads. Connections are kept per instance and reused. A reused connection that fails before
any byte of the answer (the instance closed it while idle) is retried once on a new one; other
failures raise ``InstanceFailed`` (nothing was answered: the router may try another instance).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from dataclasses import dataclass

Address = tuple[str, int]

#: Longest answer head accepted (status line and headers).
MAX_HEAD_BYTES = 64 * 1024
#: Idle connections kept per instance.
MAX_IDLE_PER_INSTANCE = 256


class InstanceFailed(Exception):
    """The instance did not answer (refused, reset, closed before the answer's head)."""


@dataclass
class Answer:
    status: int
    headers: list[tuple[bytes, bytes]]  # lower-case names
    body: bytes
    keep_alive: bool


class Http1Pool:
    """Per-event-loop; ``request`` may run concurrently from many tasks."""

    def __init__(self, *, connect_timeout_s: float = 5.0) -> None:
        self.connect_timeout_s = connect_timeout_s
        self._idle: dict[Address, list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]] = (
            defaultdict(list)
        )

    async def request(
        self,
        address: Address,
        method: str,
        target: str,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
    ) -> Answer:
        head = [f"{method} {target} HTTP/1.1\r\nhost: {address[0]}:{address[1]}\r\n".encode()]
        head += [k + b": " + v + b"\r\n" for k, v in headers]
        head.append(b"content-length: %d\r\n\r\n" % len(body))
        payload = b"".join(head) + body
        idle = self._idle[address]
        while idle:
            conn = idle.pop()
            if conn[1].is_closing():
                continue
            try:
                return await self._exchange(address, conn, payload)
            except InstanceFailed:
                continue  # closed while idle: a new connection says whether it is really down
        conn = await self._connect(address)
        return await self._exchange(address, conn, payload)

    async def _connect(self, address: Address) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            return await asyncio.wait_for(
                asyncio.open_connection(address[0], address[1], limit=MAX_HEAD_BYTES),
                self.connect_timeout_s,
            )
        except (OSError, TimeoutError) as exc:
            raise InstanceFailed(f"cannot connect: {exc or type(exc).__name__}") from None

    async def _exchange(
        self,
        address: Address,
        conn: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        payload: bytes,
    ) -> Answer:
        reader, writer = conn
        try:
            writer.write(payload)
            head = await reader.readuntil(b"\r\n\r\n")
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            writer.close()
            raise InstanceFailed(f"no answer: {exc or type(exc).__name__}") from None
        except BaseException:
            writer.close()  # cancelled or timed out mid-exchange: the connection is unusable
            raise
        try:
            answer = await self._read_rest(reader, head)
        except BaseException:
            writer.close()
            raise
        if answer.keep_alive and len(self._idle[address]) < MAX_IDLE_PER_INSTANCE:
            self._idle[address].append(conn)
        else:
            writer.close()
        return answer

    @staticmethod
    async def _read_rest(reader: asyncio.StreamReader, head: bytes) -> Answer:
        lines = head[:-4].split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        status = int(parts[1])
        headers: list[tuple[bytes, bytes]] = []
        length: int | None = None
        chunked = False
        keep_alive = parts[0] == b"HTTP/1.1"
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name, value = name.strip().lower(), value.strip()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"connection":
                keep_alive = value.lower() != b"close"
            headers.append((name, value))
        if chunked:
            pieces = []
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    await reader.readuntil(b"\r\n")
                    break
                pieces.append(await reader.readexactly(size))
                await reader.readexactly(2)
            body = b"".join(pieces)
        elif length is not None:
            body = await reader.readexactly(length) if length else b""
        else:  # no length: the body runs to the end of the connection
            body = await reader.read()
            keep_alive = False
        return Answer(status, headers, body, keep_alive)

    async def aclose(self) -> None:
        for conns in self._idle.values():
            for _, writer in conns:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
        self._idle.clear()
