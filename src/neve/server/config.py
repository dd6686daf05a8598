"""The inference server's settings, shared by the CLI, the front process and every worker.

``python -m neve.server`` parses the command line into a ``ServerConfig``; ``create_app`` can
also read it from the ``NEVE_SERVER_CONFIG`` environment variable (JSON). The sizing rules live
here: how many batches compute at once and how many intra-op threads each worker gets.
Standard library only: the front process never imports the model framework.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import asdict, dataclass, fields

from neve.errors import InvalidArgumentError

CONFIG_ENV = "NEVE_SERVER_CONFIG"

DEFAULT_MAX_BATCH_ROWS = 1024
DEFAULT_MAX_QUEUE_ROWS = 32768
DEFAULT_BATCH_TIMEOUT_MS = 2.0  # behind the ingress proxy 1.2x the requests of 1 ms (README)
DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024
DEFAULT_QUEUE_TIMEOUT_S = 10.0
DEFAULT_MAX_CONNECTIONS = 2048
DEVICES = ("cpu", "cuda")

#: Request header: seconds left of the caller's queue budget (an ingress proxy spent the rest).
#: The instance queues the request at most that long (and never longer than its queue_timeout).
TIMEOUT_HEADER = "x-neve-timeout"


def cpu_count() -> int:
    """CPUs this process may run on (the cgroup/affinity view, not the host's total)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def default_num_workers(device: str, cpus: int | None = None) -> int:
    """``2 * cpus + 1`` worker processes for a CPU model (cpus: this machine's unless given),
    one for a GPU model."""
    return 1 if device == "cuda" else 2 * (cpus or cpu_count()) + 1


def default_concurrency(num_workers: int, cpus: int | None = None) -> int:
    """Batches computing at once: one per CPU, and never more than there are workers.

    More would only time-slice the same cores (every batch slower, p99 worse); fewer would
    leave cores idle while requests wait.
    """
    return max(1, min(num_workers, cpus or cpu_count()))


def default_threads(concurrency: int, cpus: int | None = None) -> int:
    """Intra-op threads per worker so that the batches computing at once fill the CPUs."""
    return max(1, (cpus or cpu_count()) // max(1, concurrency))


def threads_for_batch(max_threads: int, batches_running: int) -> int:
    """Intra-op threads for a batch while ``batches_running`` batches compute (itself
    included): the CPUs shared between them, at most ``max_threads``.

    A lone batch gets every core; beside another it gets its share, re-read between slices of
    its rows (``worker.SLICE_ROWS``), so two large batches do not hold three threads on two
    cores for long: an OpenMP pool with more threads than free cores spins and stalls (two
    two-thread MiniLM batches on 2 CPUs: 127 rows/s against 433 for two one-thread batches).
    """
    return max(1, max_threads // max(1, batches_running))


@dataclass(frozen=True)
class ServerConfig:
    """How one server instance serves one model directory (the same in every worker)."""

    model_dir: str
    host: str = "127.0.0.1"
    port: int = 8080
    num_workers: int = 1
    device: str = "cpu"
    #: Name the Open Inference Protocol (V2) routes answer to besides each method's name.
    model_name: str = "model"
    #: Most rows one model call receives (a method's ``max_batch_size`` option lowers it).
    max_batch_rows: int = DEFAULT_MAX_BATCH_ROWS
    #: Batches computing at once over all workers (0: ``default_concurrency``).
    max_concurrent_batches: int = 0
    #: Intra-op threads (OpenMP/BLAS/torch/xgboost) per worker (0: ``default_threads``, or
    #: for torch-style models every CPU, each batch computing with its share of them).
    threads_per_worker: int = 0
    #: Most rows waiting for the model in this instance, over all methods; past it: 429.
    max_queue_rows: int = DEFAULT_MAX_QUEUE_ROWS
    #: How long the batcher waits for more rows once the first request of a batch arrived.
    batch_timeout_ms: float = DEFAULT_BATCH_TIMEOUT_MS
    #: Largest request body; larger ones get 413 before they are read.
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    #: Request bodies being received at once by this instance, in bytes; past it: 429.
    max_inflight_bytes: int = 4 * DEFAULT_MAX_BODY_BYTES
    #: A request still queued (not yet handed to the model) after this long gets 503.
    queue_timeout_s: float = DEFAULT_QUEUE_TIMEOUT_S
    #: Open connections before uvicorn answers 503 (a last line against floods).
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    log_level: str = "info"
    access_log: bool = False

    def __post_init__(self) -> None:
        positive = {
            "port": self.port >= 0,
            "num_workers": self.num_workers >= 1,
            "max_concurrent_batches": self.max_concurrent_batches >= 0,
            "threads_per_worker": self.threads_per_worker >= 0,
            "max_batch_rows": self.max_batch_rows >= 1,
            "max_queue_rows": self.max_queue_rows >= 1,
            "batch_timeout_ms": self.batch_timeout_ms >= 0,
            "max_body_bytes": self.max_body_bytes >= 1,
            "max_inflight_bytes": self.max_inflight_bytes >= self.max_body_bytes,
            "queue_timeout_s": self.queue_timeout_s > 0,
            "max_connections": self.max_connections >= 1,
        }
        bad = [name for name, ok in positive.items() if not ok]
        if bad:
            shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in bad)
            raise InvalidArgumentError(
                f"invalid server setting(s) {shown}: counts and sizes must be positive, "
                "timeouts non-negative, max_inflight_bytes >= max_body_bytes"
            )
        if self.device not in DEVICES:
            raise InvalidArgumentError(
                f"invalid device {self.device!r}: use one of {', '.join(DEVICES)}"
            )

    def concurrency(self) -> int:
        """Batches computing at once (the setting, or the default for this machine)."""
        if self.max_concurrent_batches:
            return min(self.max_concurrent_batches, self.num_workers)
        return default_concurrency(self.num_workers)

    def threads(self, threaded_calls: bool = False) -> int:
        """Intra-op threads each worker starts with: the setting; by default, for a model
        whose framework spreads one call over every core (``threaded_calls``: its handler's
        trait, e.g. torch) all the CPUs, each batch then computing with its share
        (``shares_threads``); for the others the CPUs divided among the batches at once."""
        if self.threads_per_worker:
            return self.threads_per_worker
        return cpu_count() if threaded_calls else default_threads(self.concurrency())

    def shares_threads(self, threaded_calls: bool = False) -> bool:
        """Whether each batch computes with its share of the CPUs (``threads_for_batch``): for
        ``threaded_calls`` models on the CPU, unless ``threads_per_worker`` is set."""
        return threaded_calls and self.device == "cpu" and not self.threads_per_worker

    def to_env(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> ServerConfig:
        raw = (environ if environ is not None else os.environ).get(CONFIG_ENV)
        if not raw:
            raise InvalidArgumentError(
                f"{CONFIG_ENV} is not set: start the server with `python -m neve.server "
                "--model-dir DIR` (or pass a ServerConfig to create_app)"
            )
        data = json.loads(raw)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def configure_logging(level: str) -> None:
    """Send the ``neve.server`` log to stderr at ``level`` (the front process and every worker
    call this once; the instance's log file is their stderr)."""
    log = logging.getLogger("neve.server")
    if log.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s neve.server: %(message)s"))
    log.addHandler(handler)
    log.setLevel(level.upper())
    log.propagate = False


def timeout_from_header(value: str | None) -> float | None:
    """Seconds from ``X-Neve-Timeout`` (None when absent or not a number)."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if seconds == seconds else None  # NaN: ignore
