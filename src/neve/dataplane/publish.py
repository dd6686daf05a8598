"""The route table the control plane publishes to the data plane (its side of the long-poll).

The table names every service with what a proxy needs to route to it: its qualified name,
ingress host, status, ready instances and method names. ``epoch`` changes with every security
change (a revoked token or grant), so a proxy drops its cached security answers when it sees
a new one. ``version`` grows whenever the table changes; ``wait(version)`` blocks until it
differs (``GET /api/v1/routes?version=N``).

Changes are picked up by rebuilding the table from the catalog every ``interval_s`` (services
change state from several places: the supervisor, resumes, drops), and at once on a security
change, which is also pushed to every known proxy (``POST <admin>/_neve/invalidate``) before the
change's own request returns: a revocation applies at once in the proxies too.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import httpx
import orjson
from sqlalchemy import select

from neve.catalog import lookup
from neve.catalog import models as m
from neve.dataplane.proxies import SECRET_HEADER, proxy_records, proxy_secret
from neve.dataplane.targets import READY_INSTANCE_STATUSES, method_names, service_signatures

if TYPE_CHECKING:
    from pathlib import Path

    from neve.catalog import Catalog

log = logging.getLogger("neve.dataplane")

#: How often the table is rebuilt from the catalog.
DEFAULT_INTERVAL_S = 0.5
#: A proxy not heard from for this long is no longer told about security changes.
PROXY_FORGET_S = 120.0
INVALIDATE_PATH = "/_neve/invalidate"


class SecurityEvents(Protocol):
    """What the publisher asks of the security manager: a counter that grows with every
    security change, and a call on each change."""

    generation: int

    def add_listener(self, listener: Callable[[], None]) -> None: ...

    def remove_listener(self, listener: Callable[[], None]) -> None: ...


class RoutePublisher:
    """One per control plane; thread-safe. ``home``: the account's directory, where the
    proxies' records and their shared secret live."""

    def __init__(
        self,
        catalog: Catalog,
        security: SecurityEvents,
        *,
        home: Path,
        interval_s: float = DEFAULT_INTERVAL_S,
    ) -> None:
        self.catalog = catalog
        self.security = security
        self.home = home
        self.interval_s = interval_s
        self._cond = threading.Condition()
        self._version = 0
        self._digest = b""
        self._table: dict[str, Any] = {}
        self._nonce = secrets.token_hex(4)  # epochs of two control plane runs never collide
        self._proxies: dict[str, float] = {}
        # long-polls awaiting a change on an event loop: (loop, future), woken by any thread
        self._async_waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = set()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.refresh()
        security.add_listener(self._security_changed)
        # the proxies this control plane adopted may not have long-polled it yet
        for record in proxy_records(home):
            self.know_proxy(record.admin_url)

    # -- the table --------------------------------------------------------------------------------
    def _build(self) -> dict[str, Any]:
        services = []
        with self.catalog.transaction() as s:
            for svc in s.scalars(select(m.Service).order_by(m.Service.id)):
                instances = sorted(
                    (inst.instance_index, inst.host, int(inst.port))
                    for inst in svc.instances
                    if inst.status in READY_INSTANCE_STATUSES and inst.host and inst.port
                )
                services.append(
                    {
                        "id": svc.id,
                        "name": str(lookup.qualified(s, svc.schema_id, svc.name)),
                        "status": svc.status,
                        "status_reason": svc.status_reason,
                        "ingress_enabled": bool(svc.ingress_enabled),
                        "ingress_host": svc.ingress_host,
                        "instances": [[host, port] for _, host, port in instances],
                        "methods": method_names(service_signatures(s, svc)),
                        "max_batch_rows": (svc.spec or {}).get("max_batch_rows"),
                    }
                )
        epoch = f"{self._nonce}:{self.security.generation}"
        return {"epoch": epoch, "services": services}

    def refresh(self) -> bool:
        """Rebuild the table; True (and waiters woken) when it changed."""
        table = self._build()
        digest = hashlib.sha256(orjson.dumps(table)).digest()
        with self._cond:
            if digest == self._digest:
                return False
            self._digest = digest
            self._version += 1
            self._table = {"version": self._version, **table}
            self._cond.notify_all()
            self._wake_async_waiters()
        return True

    def _wake_async_waiters(self) -> None:
        """Under ``_cond``: resolve every awaiting long-poll on its own loop."""
        for loop, future in self._async_waiters:
            with contextlib.suppress(RuntimeError):  # its loop has closed
                loop.call_soon_threadsafe(_resolve, future)

    @property
    def version(self) -> int:
        return self._version

    def table(self) -> dict[str, Any]:
        with self._cond:
            return self._table

    def know_proxy(self, admin_url: str) -> None:
        """Tell ``admin_url`` about security changes (a proxy this daemon adopted)."""
        self._proxies[admin_url] = time.monotonic()

    def wait(self, version: int, timeout_s: float, *, admin_url: str | None = None) -> dict:
        """The table once its version differs from ``version`` (or after ``timeout_s``)."""
        if admin_url:
            self._proxies[admin_url] = time.monotonic()
        self._start()
        deadline = time.monotonic() + max(0.0, timeout_s)
        with self._cond:
            while self._version == version and not self._stop.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            return self._table

    async def wait_async(
        self, version: int, timeout_s: float, *, admin_url: str | None = None
    ) -> dict:
        """``wait`` for an event loop: the long-poll holds a future, not a thread."""
        if admin_url:
            self._proxies[admin_url] = time.monotonic()
        self._start()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._cond:
            if self._version != version or self._stop.is_set():
                return self._table
            self._async_waiters.add((loop, future))
        try:
            await asyncio.wait_for(future, max(0.0, timeout_s))
        except TimeoutError:
            pass
        finally:
            with self._cond:
                self._async_waiters.discard((loop, future))
        with self._cond:
            return self._table

    # -- keeping it current -----------------------------------------------------------------------
    def _start(self) -> None:
        with self._cond:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._loop, name="neve-routes", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.refresh()
            except Exception:  # the catalog may be briefly busy; the next pass retries
                log.exception("rebuilding the route table failed")

    def _security_changed(self) -> None:
        try:
            self.refresh()
        except Exception:
            log.exception("rebuilding the route table after a security change failed")
        self.push_invalidate()

    def push_invalidate(self, extra_admin_urls: tuple[str, ...] = ()) -> None:
        """Tell every known proxy to drop its cached security answers (now, synchronously)."""
        now = time.monotonic()
        for url, seen in list(self._proxies.items()):
            if now - seen > PROXY_FORGET_S:
                self._proxies.pop(url, None)
        urls = set(self._proxies) | set(extra_admin_urls)
        secret = proxy_secret(self.home) or ""
        for url in urls:
            try:
                httpx.post(
                    url + INVALIDATE_PATH,
                    headers={SECRET_HEADER: secret},
                    timeout=1.0,
                    trust_env=False,
                )
            except httpx.HTTPError as exc:  # a proxy that is gone; its long-poll also tells it
                log.info("proxy %s did not take the invalidation (%s)", url, type(exc).__name__)

    def close(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
            self._wake_async_waiters()
        self.security.remove_listener(self._security_changed)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
