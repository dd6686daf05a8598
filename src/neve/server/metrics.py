"""Prometheus metrics of the inference server, aggregated over all worker processes.

The supervisor sets ``PROMETHEUS_MULTIPROC_DIR`` (a fresh temporary directory) before it starts
the workers, so prometheus-client keeps every worker's values in memory-mapped files there and
``GET /metrics`` on any worker reports the sum over all of them. Without that variable (an app
created in-process) the metrics are this process's own.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client import REGISTRY as PROCESS_REGISTRY

from neve.server.processes import pid_alive

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = CONTENT_TYPE_LATEST

_LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
_ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)

REQUESTS = Counter(
    "neve_server_requests", "Requests answered, by method and HTTP status", ["method", "status"]
)
ROWS = Counter("neve_server_rows", "Rows answered successfully, by method", ["method"])
REQUEST_LATENCY = Histogram(
    "neve_server_request_latency_seconds",
    "Time from request to response (successful requests), by method",
    ["method"],
    buckets=_LATENCY_BUCKETS,
)
MODEL_LATENCY = Histogram(
    "neve_server_model_latency_seconds",
    "Time of one batched model call, by method",
    ["method"],
    buckets=_LATENCY_BUCKETS,
)
BATCH_ROWS = Histogram(
    "neve_server_batch_rows", "Rows per batched model call, by method", ["method"],
    buckets=_ROW_BUCKETS,
)  # fmt: skip
MODEL_CALLS = Counter("neve_server_model_calls", "Batched model calls, by method", ["method"])
QUEUE_ROWS = Gauge(
    "neve_server_queue_rows",
    "Rows waiting for the model, by method (summed over live workers)",
    ["method"],
    multiprocess_mode="livesum",
)
REJECTIONS = Counter(
    "neve_server_rejections",
    "Requests refused by admission control, by method and reason "
    "(queue_full, body_budget, too_large, queue_timeout)",
    ["method", "reason"],
)

_LIVE_FILE = re.compile(r"^gauge_live\w*?_(\d+)\.db$")


def render() -> tuple[bytes, str]:
    """The exposition text for ``GET /metrics`` and its content type."""
    directory = os.environ.get(MULTIPROC_ENV)
    if not directory:
        return generate_latest(PROCESS_REGISTRY), CONTENT_TYPE
    _forget_dead_workers(Path(directory))
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=directory)
    return generate_latest(registry), CONTENT_TYPE


def _forget_dead_workers(directory: Path) -> None:
    # uvicorn's supervisor replaces a dead worker without telling us; its "live" gauge files
    # (queue depth) would otherwise be summed forever. Counters of dead workers are kept.
    for file in directory.glob("gauge_live*.db"):
        match = _LIVE_FILE.match(file.name)
        if match is None:
            continue
        pid = int(match.group(1))
        if not pid_alive(pid):
            multiprocess.mark_process_dead(pid, path=str(directory))
