"""Prometheus metrics of the inference server.

The front process answers every request and runs every batcher, so one process holds all the
instance's metrics: no multi-process aggregation is needed (workers record nothing).
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

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
    "Rows waiting for the model, by method",
    ["method"],
)
REJECTIONS = Counter(
    "neve_server_rejections",
    "Requests refused by admission control, by method and reason "
    "(queue_full, body_budget, too_large, queue_timeout)",
    ["method", "reason"],
)

BATCHES_RUNNING = Gauge("neve_server_batches_running", "Batches computing now, over all workers")
WORKERS_READY = Gauge("neve_server_workers_ready", "Worker processes with the model loaded")
WORKER_RESTARTS = Counter(
    "neve_server_worker_restarts", "Worker processes that died and were started again"
)


def render() -> tuple[bytes, str]:
    """The exposition text for ``GET /metrics`` and its content type."""
    return generate_latest(REGISTRY), CONTENT_TYPE
