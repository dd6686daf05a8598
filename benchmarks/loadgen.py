"""A small closed-loop HTTP/1.1 load generator for loopback benchmarks (asyncio, stdlib only).

``C`` connections each send one request, wait for the answer, and send the next, for a fixed
time or a fixed number of requests (whichever comes first). Request bodies are encoded once
before the clock starts, so the generator spends its CPU on sockets, not on JSON, and the same
client measures every server the same way. Only 127.0.0.1 / localhost targets are accepted.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@dataclass
class LoadResult:
    concurrency: int
    rows_per_request: int
    seconds: float
    ok: int = 0
    errors: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)

    @property
    def requests_per_s(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    @property
    def rows_per_s(self) -> float:
        return self.requests_per_s * self.rows_per_request

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def build_request(
    host: str, port: int, path: str, body: bytes, headers: dict[str, str] | None = None
) -> bytes:
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"{extra}Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("ascii") + body


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length = None
    chunked = False
    close = False
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value.strip())
        elif name == "transfer-encoding" and "chunked" in value.lower():
            chunked = True
        elif name == "connection" and value.strip().lower() == "close":
            close = True
    if chunked:
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
        return status, b"".join(parts), close
    body = await reader.readexactly(length) if length else b""
    return status, body, close


async def _client(
    host: str,
    port: int,
    requests: list[bytes],
    offset: int,
    stop_at: float,
    budget: list[int],
    result: LoadResult,
    record: bool,
) -> None:
    reader = writer = None
    i = offset
    try:
        while time.perf_counter() < stop_at and budget[0] > 0:
            budget[0] -= 1
            if writer is None:
                reader, writer = await asyncio.open_connection(host, port)
            payload = requests[i % len(requests)]
            i += 1
            started = time.perf_counter()
            try:
                writer.write(payload)
                status, _, close = await _read_response(reader)  # type: ignore[arg-type]
            except (ConnectionError, asyncio.IncompleteReadError, OSError):
                result.errors += 1
                writer.close()
                reader = writer = None
                continue
            elapsed = time.perf_counter() - started
            if record:
                result.statuses[status] = result.statuses.get(status, 0) + 1
                if status == 200:
                    result.ok += 1
                    result.latencies.append(elapsed)
                else:
                    result.errors += 1
            if close:
                writer.close()
                reader = writer = None
    finally:
        if writer is not None:
            writer.close()


async def run_load(
    host: str,
    port: int,
    path: str,
    bodies: list[bytes],
    *,
    concurrency: int,
    rows_per_request: int,
    duration_s: float,
    max_requests: int = 200_000,
    warmup_s: float = 0.5,
    headers: dict[str, str] | None = None,
) -> LoadResult:
    """Closed-loop load on ``host:port`` (loopback only); returns what was measured."""
    if host not in LOOPBACK:
        raise ValueError(f"load generator targets loopback only, not {host!r}")
    requests = [build_request(host, port, path, b, headers) for b in bodies]
    if warmup_s > 0:
        warm = LoadResult(concurrency, rows_per_request, warmup_s)
        stop = time.perf_counter() + warmup_s
        budget = [max_requests]
        await asyncio.gather(
            *(
                _client(host, port, requests, k, stop, budget, warm, False)
                for k in range(concurrency)
            )
        )
    result = LoadResult(concurrency, rows_per_request, duration_s)
    budget = [max_requests]
    started = time.perf_counter()
    stop = started + duration_s
    await asyncio.gather(
        *(_client(host, port, requests, k, stop, budget, result, True) for k in range(concurrency))
    )
    result.seconds = time.perf_counter() - started
    return result


def load(host: str, port: int, path: str, bodies: list[bytes], **kwargs: object) -> LoadResult:
    return asyncio.run(run_load(host, port, path, bodies, **kwargs))  # type: ignore[arg-type]


@dataclass
class OpenLoopResult:
    """Requests sent at a fixed rate whatever the answers: what came back, and when."""

    rate_per_s: float
    seconds: float
    statuses: dict[int, int] = field(default_factory=dict)
    transport_errors: int = 0
    refusals: int = 0  # 429 and 503 answers
    refusals_with_retry_after: int = 0
    served_latencies: list[float] = field(default_factory=list)

    def percentile(self, q: float) -> float:
        if not self.served_latencies:
            return float("nan")
        ordered = sorted(self.served_latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _open_loop_one(
    host: str, port: int, payload: bytes, result: OpenLoopResult, idle: list
) -> None:
    started = time.perf_counter()  # the scheduled send time: a wait for a socket counts too
    conn = idle.pop() if idle else None
    try:
        if conn is None:
            conn = await asyncio.open_connection(host, port)
        reader, writer = conn
        writer.write(payload)
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        names = {ln.partition(":")[0].strip().lower(): ln.partition(":")[2] for ln in lines[1:]}
        length = int(names.get("content-length", "0").strip() or 0)
        if length:
            await reader.readexactly(length)
    except (ConnectionError, asyncio.IncompleteReadError, OSError, ValueError):
        result.transport_errors += 1
        if conn is not None:
            conn[1].close()
        return
    result.statuses[status] = result.statuses.get(status, 0) + 1
    if status == 200:
        result.served_latencies.append(time.perf_counter() - started)
    elif status in (429, 503):
        result.refusals += 1
        if "retry-after" in names:
            result.refusals_with_retry_after += 1
    if names.get("connection", "").strip().lower() == "close":
        writer.close()
    else:
        idle.append(conn)


async def run_open_loop(
    host: str,
    port: int,
    path: str,
    bodies: list[bytes],
    *,
    rate_per_s: float,
    duration_s: float,
    headers: dict[str, str] | None = None,
) -> OpenLoopResult:
    """Send ``rate_per_s`` requests a second for ``duration_s`` (loopback only), each on an idle
    connection or a new one, and wait for every answer."""
    if host not in LOOPBACK:
        raise ValueError(f"load generator targets loopback only, not {host!r}")
    requests = [build_request(host, port, path, b, headers) for b in bodies]
    result = OpenLoopResult(rate_per_s, duration_s)
    idle: list = []
    tasks = []
    interval = 1.0 / rate_per_s
    started = time.perf_counter()
    n = 0
    while (now := time.perf_counter()) < started + duration_s:
        due = started + n * interval
        if due > now:
            await asyncio.sleep(due - now)
        tasks.append(
            asyncio.create_task(
                _open_loop_one(host, port, requests[n % len(requests)], result, idle)
            )
        )
        n += 1
    await asyncio.gather(*tasks)
    for _, writer in idle:
        writer.close()
    return result


def open_loop(
    host: str, port: int, path: str, bodies: list[bytes], **kwargs: object
) -> OpenLoopResult:
    return asyncio.run(run_open_loop(host, port, path, bodies, **kwargs))  # type: ignore[arg-type]
