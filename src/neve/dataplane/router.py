"""The one router: which instance gets a request, what happens when it fails or is full.

Every path that sends rows to a service uses it: the ingress proxies (async, the instance's
answer streamed back), ``ServiceManager.invoke`` / ``invoke_arrow`` behind SQL service functions
(sync, from many threads) and the client's ``mv.run(..., service_name=)`` (sync, to a proxy).

Policy, the same everywhere:

- **balancing**: the ready instance with the fewest outstanding requests from this process
  (``LeastOutstanding``); ties round-robin;
- **retry on another instance**: inference is a pure function of its input, so a request whose
  instance failed before answering (refused, reset, closed, the process was killed) is sent to
  another one; the failed instance sits out a cool-down. When every known instance failed, the
  endpoints are asked again with ``refresh=True`` (which may resume the service and wait);
- **Retry-After**: a 429/503 from admission control is either handed back to the caller with
  its ``Retry-After`` (``retry_overloaded=False``: the proxy, whose callers decide) or retried
  after that pause, capped at ``MAX_RETRY_AFTER_S`` and the deadline (the in-process callers);
- **queue budget**: with ``queue_deadline`` set, each attempt tells the instance how much of the
  caller's queue budget is left (``X-Neve-Timeout``), so the whole wait (proxy + instance queue)
  stays within it;
- **shedding before the body** (async API): an instance that answered 429 (its queue is full)
  counts as full until it answers anything else, for at most ``FULL_HOLD_S``; while every
  instance of a service is full, ``shed_retry_after`` tells the proxy to refuse a new request
  before reading its body, instead of moving it to an instance that refuses it unread.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

import httpx
from prometheus_client import Counter

from neve.dataplane.balancer import Address, LeastOutstanding
from neve.dataplane.http1 import Answer, Http1Pool, InstanceFailed
from neve.errors import ServiceUnavailableError
from neve.server.config import TIMEOUT_HEADER

log = logging.getLogger("neve.dataplane")

#: Longest pause asked by a 429/503 that a retrying caller honours before trying again.
MAX_RETRY_AFTER_S = 2.0
#: Pause before asking again when every instance just failed (the supervisor restarts them).
ALL_FAILED_PAUSE_S = 0.2
#: ``Retry-After`` put on a 429/503 that came without one.
DEFAULT_RETRY_AFTER_S = 1
#: Longest time an instance that answered 429 counts as full with no news from it (any other
#: answer clears it at once: its queue moved).
FULL_HOLD_S = 1.0
OVERLOADED = frozenset({429, 503})

RETRIES = Counter("neve_router_retries_total", "Attempts sent again", ["service", "reason"])

#: ``endpoints(refresh, remaining_s)``: the ready instances; ``refresh=True`` after failures.
SyncEndpoints = Callable[[bool, float], Sequence[Address]]
AsyncEndpoints = Callable[[bool, float], Awaitable[Sequence[Address]]]


@dataclass
class RouterStats:
    """Counters of a router (for tests and metrics)."""

    requests: int = 0
    retries: int = 0
    failed_attempts: int = 0


@dataclass
class Routed:
    """An instance's whole answer (async API)."""

    address: Address
    status: int
    headers: list[tuple[bytes, bytes]]  # lower-case names
    body: bytes


def retry_after(value: str | None) -> float:
    """Seconds a ``Retry-After`` asks for, capped (a missing or odd value: a short pause)."""
    try:
        return max(0.01, min(float(value), MAX_RETRY_AFTER_S)) if value else 0.05
    except ValueError:
        return 0.05


class Router:
    """Thread-safe (sync API) and task-safe (async API); one per process and purpose."""

    def __init__(
        self,
        *,
        max_connections: int = 1000,
        connect_timeout_s: float = 5.0,
        request_timeout_s: float = 300.0,
        cooldown_s: float = 2.0,
        scheme: str = "http",
    ) -> None:
        self.balancer = LeastOutstanding(cooldown_s=cooldown_s)
        self.scheme = scheme
        self.stats = RouterStats()
        self._limits = httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        )
        self._timeout = httpx.Timeout(request_timeout_s, connect=connect_timeout_s)
        self._connect_timeout_s = connect_timeout_s
        self._sync: httpx.Client | None = None
        self._pool: Http1Pool | None = None
        self._request_timeout_s = request_timeout_s
        self._lock = threading.Lock()
        # address -> (loop time until which it counts as full, the Retry-After it gave)
        self._full: dict[Address, tuple[float, int]] = {}

    # -- clients ----------------------------------------------------------------------------------
    @property
    def sync_client(self) -> httpx.Client:
        with self._lock:
            if self._sync is None:
                self._sync = httpx.Client(
                    limits=self._limits,
                    timeout=self._timeout,
                    trust_env=False,  # loopback instances: never through an HTTP proxy
                    follow_redirects=False,
                )
            return self._sync

    def close(self) -> None:
        with self._lock:
            if self._sync is not None:
                self._sync.close()
                self._sync = None

    async def aclose(self) -> None:
        if self._pool is not None:
            await self._pool.aclose()
            self._pool = None
        self.close()

    def url(self, address: Address, route: str, query: str = "") -> str:
        return f"{self.scheme}://{address[0]}:{address[1]}{route}" + (f"?{query}" if query else "")

    # -- sync: whole answers, overload retried --------------------------------------------------
    def send(
        self,
        route: str,
        *,
        label: str,
        endpoints: SyncEndpoints,
        deadline: float,
        content: bytes,
        headers: Mapping[str, str] | None = None,
        method: str = "POST",
        retry_overloaded: bool = True,
        max_failures: int | None = None,
        query: str = "",
    ) -> httpx.Response:
        """The first answer that is not a failure to answer (``deadline``: ``time.monotonic``).

        Returns any HTTP answer but an admission refusal (with ``retry_overloaded``), which is
        retried after its ``Retry-After`` until the deadline; raises ``ServiceUnavailableError``
        when no instance answered in time, or after ``max_failures`` + 1 attempts that failed
        to reach one (SQL's ``MAX_BATCH_RETRIES``; None: until the deadline).
        """
        excluded: set[Address] = set()
        refresh = False
        last_error: str | None = None
        failures = 0
        while True:
            if max_failures is not None and failures > max_failures:
                raise ServiceUnavailableError(
                    f"service {label} could not be reached after {failures} attempts"
                    + (f" (last error: {last_error})" if last_error else "")
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ServiceUnavailableError(
                    f"service {label} did not answer in time"
                    + (f" (last error: {last_error})" if last_error else "")
                )
            address = self.balancer.choose(list(endpoints(refresh, remaining)), excluded)
            refresh = False
            if address is None:
                # Every known instance failed this request: ask again after a short pause.
                excluded.clear()
                refresh = True
                time.sleep(min(ALL_FAILED_PAUSE_S, max(0.0, deadline - time.monotonic())))
                continue
            self._count(requests=1)
            try:
                with self.balancer.track(address):
                    resp = self.sync_client.request(
                        method,
                        self.url(address, route, query),
                        content=content,
                        headers=headers,
                        timeout=httpx.Timeout(
                            max(0.05, remaining), connect=min(self._connect_timeout_s, remaining)
                        ),
                    )
            except httpx.TimeoutException as exc:
                if time.monotonic() >= deadline:
                    raise ServiceUnavailableError(
                        f"service {label}: no answer from instance {address[0]}:{address[1]} "
                        f"before the deadline ({type(exc).__name__})"
                    ) from None
                last_error = f"{type(exc).__name__} from {address[0]}:{address[1]}"
                self._failed(label, address, excluded)
                failures += 1
                continue
            except httpx.TransportError as exc:
                last_error = f"{type(exc).__name__} from {address[0]}:{address[1]}: {exc}"
                log.info("service %s: instance %s:%s failed (%s); retrying", label, *address, exc)
                self._failed(label, address, excluded)
                failures += 1
                refresh = True
                continue
            if retry_overloaded and resp.status_code in OVERLOADED:
                last_error = f"HTTP {resp.status_code} from {address[0]}:{address[1]}"
                self._count(retries=1)
                RETRIES.labels(label, "overloaded").inc()
                pause = retry_after(resp.headers.get("retry-after"))
                time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
                continue
            return resp

    # -- async: whole answers, overload handed back ---------------------------------------------
    async def open(
        self,
        route: str,
        *,
        label: str,
        endpoints: AsyncEndpoints,
        instances: Sequence[Address],
        content: bytes,
        headers: list[tuple[bytes, bytes]],
        method: str = "POST",
        query: str = "",
        queue_deadline: float | None = None,
    ) -> Routed:
        """Send to the best of ``instances``; its answer, whatever the status.

        Instances that fail before answering are skipped; once all have, ``endpoints`` is asked
        once more with ``refresh=True``. ``queue_deadline`` (``loop.time()``) is passed on as
        the queue budget left. Raises ``ServiceUnavailableError`` when none answers, and
        ``TimeoutError`` when the chosen one does not answer within the request timeout.
        """
        loop = asyncio.get_running_loop()
        tried: set[Address] = set()
        refreshed = False
        last_error: Exception | None = None
        current = list(instances)
        while True:
            address = self.balancer.choose(current, tried)
            if address is None:
                if refreshed:
                    break
                refreshed = True  # the set may have changed (restart, scale): ask once more
                remaining = (queue_deadline - loop.time()) if queue_deadline else 60.0
                current = list(await endpoints(True, max(0.0, remaining)))
                address = self.balancer.choose(current, tried)
                if address is None:
                    break
            tried.add(address)
            sent = list(headers)
            if queue_deadline is not None:
                left = queue_deadline - loop.time()
                if left <= 0:
                    raise _queue_budget_spent(label)
                sent.append((TIMEOUT_HEADER.encode(), f"{left:.3f}".encode()))
            if self._pool is None:
                self._pool = Http1Pool(connect_timeout_s=self._connect_timeout_s)
            self.balancer.acquire(address)
            self._count(requests=1)
            try:
                answer = await asyncio.wait_for(
                    self._pool.request(
                        address, method, route + (f"?{query}" if query else ""), sent, content
                    ),
                    self._request_timeout_s,
                )
            except InstanceFailed as exc:
                self._failed(label, address, tried)
                log.warning(
                    "service %s: instance %s:%s failed before answering (%s); retrying",
                    label,
                    *address,
                    type(exc).__name__,
                )
                last_error = exc
                continue
            finally:
                self.balancer.release(address)
            if answer.status == 429:
                self._full[address] = (loop.time() + FULL_HOLD_S, _retry_after_header(answer))
            elif self._full:
                self._full.pop(address, None)
            return Routed(address, answer.status, answer.headers, answer.body)
        raise ServiceUnavailableError(
            f"no instance of service {label} could be reached"
            + (f" ({type(last_error).__name__})" if last_error else "")
        )

    def shed_retry_after(self, instances: Sequence[Address], now: float) -> int | None:
        """The ``Retry-After`` to refuse a request with at once, when every one of ``instances``
        refused the last request sent to it for a full queue (within ``FULL_HOLD_S``, with no
        other answer since); None when one may have room. ``now``: the event loop's time."""
        if not self._full or not instances:
            return None
        seconds = None
        for address in instances:
            mark = self._full.get(address)
            if mark is None or mark[0] <= now:
                return None
            seconds = mark[1] if seconds is None else min(seconds, mark[1])
        return seconds

    # -- bookkeeping ------------------------------------------------------------------------------
    def _failed(self, label: str, address: Address, excluded: set[Address]) -> None:
        excluded.add(address)
        self.balancer.failed(address)
        RETRIES.labels(label, "instance_failed").inc()
        self._count(retries=1, failed_attempts=1)

    def _count(self, *, requests: int = 0, retries: int = 0, failed_attempts: int = 0) -> None:
        with self._lock:
            self.stats.requests += requests
            self.stats.retries += retries
            self.stats.failed_attempts += failed_attempts


def _retry_after_header(answer: Answer) -> int:
    for name, value in answer.headers:
        if name == b"retry-after":
            try:
                return max(1, int(value))
            except ValueError:
                break
    return DEFAULT_RETRY_AFTER_S


def _queue_budget_spent(label: str) -> ServiceUnavailableError:
    err = ServiceUnavailableError(
        f"service {label}: the request waited its whole queue budget before reaching an "
        "instance; retry later",
        code="QUEUE_TIMEOUT",
    )
    err.retry_after_s = DEFAULT_RETRY_AFTER_S  # type: ignore[attr-defined]
    return err
