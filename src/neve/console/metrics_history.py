"""A short memory of a service's metrics for the console's plots.

The inference servers expose counters and histograms (``neve.server.metrics``), which a plot
cannot show directly: it needs rates and quantiles over time. While someone watches a service's
metrics page, a background thread scrapes the service every ``interval_s`` seconds (the services
manager's ``service_metrics``: every instance in one page, labelled ``instance``), turns each pair
of consecutive scrapes into per-instance points (requests/s, rows/s, p50/p99 latency, 429/503
answers per second, queue depth) and keeps the last ``window_s`` seconds in a ring buffer. A
service nobody looked at for ``idle_s`` seconds is no longer sampled every ``interval_s``.

So that a page opened later still shows the last hour, ``start_background`` also samples every
running service every ``background_interval_s`` seconds (``running``: the services and the
context to scrape them with; the control plane passes a system context, and each page checks
its viewer's MONITOR privilege before showing points).
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prometheus_client.parser import text_string_to_metric_families

from neve.context import RequestContext

if TYPE_CHECKING:
    from neve.control.account import Account

# The inference server's metric names (neve.server.metrics; a test checks they still match).
REQUESTS = "neve_server_requests"
ROWS = "neve_server_rows"
LATENCY = "neve_server_request_latency_seconds"
QUEUE_ROWS = "neve_server_queue_rows"

#: The plotted series, in page order: key -> (title, unit).
SERIES: dict[str, tuple[str, str]] = {
    "rps": ("Requests per second", "req/s"),
    "rows_s": ("Rows per second", "rows/s"),
    "p50_ms": ("Latency p50", "ms"),
    "p99_ms": ("Latency p99", "ms"),
    "r429_s": ("429 answers per second (overloaded)", "1/s"),
    "r503_s": ("503 answers per second (unavailable)", "1/s"),
    "queue": ("Queue depth", "rows"),
}


@dataclass
class Raw:
    """One instance's counters at one scrape."""

    requests: float = 0.0
    rows: float = 0.0
    by_status: dict[str, float] = field(default_factory=dict)
    buckets: dict[float, float] = field(default_factory=dict)  # le -> cumulative count
    queue: float = 0.0


def parse(page: str) -> dict[str, Raw]:
    """Per-instance counters from a service's merged Prometheus page."""
    out: dict[str, Raw] = {}
    for family in text_string_to_metric_families(page):
        for sample in family.samples:  # by sample name: pages with or without # TYPE lines
            instance = sample.labels.get("instance")
            if instance is None:
                continue
            raw = out.setdefault(instance, Raw())
            if sample.name == f"{REQUESTS}_total":
                raw.requests += sample.value
                status = sample.labels.get("status", "")
                raw.by_status[status] = raw.by_status.get(status, 0.0) + sample.value
            elif sample.name == f"{ROWS}_total":
                raw.rows += sample.value
            elif sample.name == f"{LATENCY}_bucket":
                le = float(sample.labels.get("le", "+Inf"))
                raw.buckets[le] = raw.buckets.get(le, 0.0) + sample.value
            elif sample.name == QUEUE_ROWS:
                raw.queue += sample.value
    return out


def quantile(q: float, buckets: dict[float, float]) -> float | None:
    """The ``q`` quantile of a cumulative histogram (Prometheus' histogram_quantile), or None
    when it holds no observation."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank = q * buckets[bounds[-1]]
    previous_bound, previous_count = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return previous_bound
            if count == previous_count:
                return bound
            return previous_bound + (bound - previous_bound) * (rank - previous_count) / (
                count - previous_count
            )
        previous_bound, previous_count = bound, count
    return previous_bound


def _delta(now: float, before: float) -> float:
    return now - before if now >= before else now  # a restarted instance starts from zero


def point(now: Raw, before: Raw | None, dt: float) -> dict[str, float | None]:
    """The plotted values of one instance between two scrapes ``dt`` seconds apart."""
    if before is None or dt <= 0:
        return {"queue": now.queue}
    buckets = {le: _delta(c, before.buckets.get(le, 0.0)) for le, c in now.buckets.items()}
    p50, p99 = quantile(0.5, buckets), quantile(0.99, buckets)
    status = {k: _delta(v, before.by_status.get(k, 0.0)) for k, v in now.by_status.items()}
    return {
        "rps": _delta(now.requests, before.requests) / dt,
        "rows_s": _delta(now.rows, before.rows) / dt,
        "p50_ms": None if p50 is None else p50 * 1000,
        "p99_ms": None if p99 is None else p99 * 1000,
        "r429_s": status.get("429", 0.0) / dt,
        "r503_s": status.get("503", 0.0) / dt,
        "queue": now.queue,
    }


@dataclass
class _Watched:
    ctx: RequestContext
    last_seen: float
    points: deque[tuple[float, dict[str, dict[str, float | None]]]]
    last_raw: dict[str, Raw] | None = None
    last_time: float = 0.0
    running: bool = False  # listed by the background sampler: kept while the service runs


class MetricsHistory:
    """Ring buffers of plotted points, one per watched service."""

    def __init__(
        self,
        scrape: Callable[[RequestContext, str], bytes],
        *,
        interval_s: float = 2.0,
        window_s: float = 3600.0,
        idle_s: float = 60.0,
        clock: Callable[[], float] = time.time,
        running: Callable[[], list[tuple[RequestContext, str]]] | None = None,
        background_interval_s: float = 10.0,
    ) -> None:
        self._scrape = scrape
        self._running = running
        self.background_interval_s = background_interval_s
        self._background: threading.Thread | None = None
        self._stop = threading.Event()
        self.interval_s = interval_s
        self.window_s = window_s
        self.idle_s = idle_s
        self._clock = clock
        self._watched: dict[str, _Watched] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @classmethod
    def for_account(cls, account: Account, **kwargs: Any) -> MetricsHistory:
        from neve.context import admin_context

        def scrape(ctx: RequestContext, service: str) -> bytes:
            return account.services.service_metrics(ctx, service)

        def running() -> list[tuple[RequestContext, str]]:
            ctx = admin_context()
            return [
                (ctx, str(row["qualified_name"]))
                for row in account.services.show_services(ctx)
                if row.get("status") == "RUNNING"
            ]

        return cls(scrape, running=running, **kwargs)

    def start_background(self) -> None:
        """Sample every running service every ``background_interval_s`` (idempotent)."""
        if self._running is None:
            return
        with self._lock:
            self._stop.clear()
            if self._background is not None and self._background.is_alive():
                return
            self._background = threading.Thread(
                target=self._run_background, name="neve-console-metrics-all", daemon=True
            )
            self._background.start()

    def sample_running(self) -> None:
        """One background pass: keep an entry for each running service and sample the ones no
        page is watching (watched ones are sampled more often already); forget the others."""
        assert self._running is not None
        listed = dict((name, ctx) for ctx, name in self._running())
        now = self._clock()
        unwatched = []
        with self._lock:
            for name, ctx in listed.items():
                entry = self._watched.get(name)
                if entry is None:
                    maxlen = int(self.window_s / min(self.interval_s, self.background_interval_s))
                    entry = _Watched(ctx, 0.0, deque(maxlen=maxlen + 2))
                    self._watched[name] = entry
                entry.running = True
                if now - entry.last_seen > self.idle_s:
                    entry.ctx = ctx  # no viewer now: sample with the background's context
                    unwatched.append(name)
            for name, entry in list(self._watched.items()):
                if name not in listed and entry.running:
                    entry.running = False
                    if now - entry.last_seen > self.idle_s:
                        del self._watched[name]  # stopped, and no page shows it
        for name in unwatched:
            self.sample(name)

    def stop(self) -> None:
        """End the background sampling (the control plane stops serving)."""
        self._stop.set()

    def _run_background(self) -> None:
        while not self._stop.is_set():
            try:
                self.sample_running()
            except Exception:  # noqa: BLE001 (the catalog may be busy; the next pass retries)
                pass
            self._stop.wait(self.background_interval_s)

    def watch(self, ctx: RequestContext, service: str) -> None:
        """Keep sampling ``service`` (with this viewer's privileges) for the next ``idle_s``
        seconds; the first watch samples at once."""
        first = False
        with self._lock:
            entry = self._watched.get(service)
            if entry is None:
                maxlen = int(self.window_s / self.interval_s) + 2
                entry = _Watched(ctx, self._clock(), deque(maxlen=maxlen))
                self._watched[service] = entry
                first = True
            entry.ctx, entry.last_seen = ctx, self._clock()
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="neve-console-metrics", daemon=True
                )
                self._thread.start()
        if first:
            self.sample(service)

    def sample(self, service: str) -> None:
        """Scrape ``service`` once and append a point (a refused or failed scrape adds none)."""
        with self._lock:
            entry = self._watched.get(service)
        if entry is None:
            return
        try:
            raw = parse(self._scrape(entry.ctx, service).decode())
        except Exception:  # noqa: BLE001 (a gone service or revoked privilege: no point)
            return
        now = self._clock()
        with self._lock:
            before, dt = entry.last_raw, now - entry.last_time
            values = {i: point(r, (before or {}).get(i), dt) for i, r in raw.items()}
            if before is not None:  # the first scrape only sets the baseline of the rates
                entry.points.append((now, values))
            entry.last_raw, entry.last_time = raw, now

    def _run(self) -> None:
        while True:
            time.sleep(self.interval_s)
            now = self._clock()
            with self._lock:
                for name in [
                    n
                    for n, e in self._watched.items()
                    if now - e.last_seen > self.idle_s and not e.running
                ]:
                    del self._watched[name]
                names = [n for n, e in self._watched.items() if now - e.last_seen <= self.idle_s]
                if not names:
                    self._thread = None
                    return
            for name in names:
                self.sample(name)

    def series(self, service: str, last_s: float) -> dict[str, Any]:
        """The points of the last ``last_s`` seconds as uPlot wants them: one shared time axis
        and, per series, one list of values per instance (None where it has none)."""
        cutoff = self._clock() - last_s
        with self._lock:
            entry = self._watched.get(service)
            points = [p for p in entry.points if p[0] >= cutoff] if entry is not None else []
        instances = sorted({i for _, values in points for i in values}, key=_instance_order)
        return {
            "t": [round(t, 3) for t, _ in points],
            "instances": instances,
            "series": {
                key: {i: [values.get(i, {}).get(key) for _, values in points] for i in instances}
                for key in SERIES
            },
        }


def _instance_order(name: str) -> tuple[int, str]:
    return (int(name), "") if name.isdigit() else (1 << 30, name)
