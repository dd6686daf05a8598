"""``python -m neve.server``: the supervisor process of one inference server instance.

It binds the listening socket itself (``--port 0`` picks a free port; ``--port-file`` receives
the port once bound), then runs uvicorn's multi-process supervisor over N worker processes, each
importing ``neve.server.app:create_app`` and loading its own copy of the model. The supervisor
restarts a worker that dies, and stops the whole server (exit status 3) when a worker cannot
start, e.g. because the model does not load. SIGTERM or SIGINT stops it gracefully.

The supervisor imports only the standard library, uvicorn and ``neve.server.config``: the model
framework and pandas are loaded in the workers.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from neve.errors import InvalidArgumentError
from neve.server.config import (
    CONFIG_ENV,
    DEFAULT_BATCH_TIMEOUT_MS,
    DEFAULT_MAX_BATCH_ROWS,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_QUEUE_ROWS,
    DEFAULT_QUEUE_TIMEOUT_S,
    ServerConfig,
    cpu_count,
    default_num_workers,
)

APP = "neve.server.app:create_app"
SUPERVISED_ENV = "NEVE_SERVER_SUPERVISED"  # the same names as in neve.server.app
STATE_DIR_ENV = (
    "NEVE_SERVER_STATE_DIR"  # metrics/ (prometheus) and workers/ (one file per ready worker)
)
STARTUP_FAILURE = 3  # uvicorn's exit status for a worker that could not start (and ours)
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m neve.server",
        description="Serve one neve model directory over HTTP with N worker processes.",
    )
    p.add_argument("--model-dir", required=True, help="model directory written by save_model")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080, help="0 picks a free port")
    p.add_argument("--port-file", help="write the bound port to this file once listening")
    p.add_argument(
        "--num-workers", type=int, default=None, help="default: 2*cpus+1 on cpu, 1 on cuda"
    )
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--model-name", default="model", help="name for the V2 protocol routes")
    p.add_argument("--max-batch-rows", type=int, default=DEFAULT_MAX_BATCH_ROWS)
    p.add_argument("--max-queue-rows", type=int, default=DEFAULT_MAX_QUEUE_ROWS)
    p.add_argument("--batch-timeout-ms", type=float, default=DEFAULT_BATCH_TIMEOUT_MS)
    p.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES)
    p.add_argument(
        "--max-inflight-bytes", type=int, default=None, help="default: 4 x --max-body-bytes"
    )
    p.add_argument("--queue-timeout-s", type=float, default=DEFAULT_QUEUE_TIMEOUT_S)
    p.add_argument("--max-connections", type=int, default=DEFAULT_MAX_CONNECTIONS)
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--access-log", action="store_true", help="log every request (slower)")
    return p


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    return ServerConfig(
        model_dir=str(Path(args.model_dir).resolve()),
        host=args.host,
        port=args.port,
        num_workers=(
            args.num_workers if args.num_workers is not None else default_num_workers(args.device)
        ),
        device=args.device,
        model_name=args.model_name,
        max_batch_rows=args.max_batch_rows,
        max_queue_rows=args.max_queue_rows,
        batch_timeout_ms=args.batch_timeout_ms,
        max_body_bytes=args.max_body_bytes,
        max_inflight_bytes=args.max_inflight_bytes or 4 * args.max_body_bytes,
        queue_timeout_s=args.queue_timeout_s,
        max_connections=args.max_connections,
        log_level=args.log_level,
        access_log=args.access_log,
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except InvalidArgumentError as exc:
        parser.error(exc.message)
    if not (Path(config.model_dir) / "manifest.json").is_file():
        parser.error(
            f"--model-dir {config.model_dir} is not a neve model directory (no manifest.json)"
        )

    import uvicorn
    from uvicorn.supervisors import Multiprocess

    from neve.server.supervisor import (
        REUSE_PORT,
        ReusePortSupervisor,
        bind_anchor,
        failed_to_start,
    )

    state_dir = Path(tempfile.mkdtemp(prefix="neve-server-"))
    (state_dir / "metrics").mkdir()
    (state_dir / "workers").mkdir()
    os.environ[CONFIG_ENV] = config.to_env()
    os.environ[SUPERVISED_ENV] = "1"
    os.environ[STATE_DIR_ENV] = str(state_dir)
    # Workers inherit these: prometheus-client reads the directory when it is imported.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(state_dir / "metrics")
    # N workers share the CPUs: one BLAS/OpenMP/torch thread pool per worker of cpus/N threads
    # avoids oversubscription (unless the environment already says otherwise).
    threads = str(max(1, cpu_count() // config.num_workers))
    for name in THREAD_ENV:
        os.environ.setdefault(name, threads)

    uv_config = uvicorn.Config(
        APP,
        factory=True,
        host=config.host,
        port=config.port,
        workers=config.num_workers,
        lifespan="on",
        log_level=config.log_level,
        access_log=config.access_log,
        limit_concurrency=config.max_connections,
        timeout_graceful_shutdown=10,
        # Model loading can hold the GIL for a while; do not take a busy worker for a hung one.
        timeout_worker_healthcheck=30,
    )
    supervisor: Multiprocess | None = None
    try:
        try:
            anchor = bind_anchor(config.host, config.port)
        except OSError as exc:
            print(f"neve.server: cannot listen on {config.host}:{config.port}: {exc}", flush=True)
            return STARTUP_FAILURE
        port = anchor.getsockname()[1]
        if args.port_file:
            _write_atomically(Path(args.port_file), f"{port}\n")
        print(
            f"neve.server: serving {config.model_dir} on http://{config.host}:{port} "
            f"with {config.num_workers} worker(s) (pid {os.getpid()})",
            flush=True,
        )
        # uvicorn's supervisor (also for one worker: it restarts a worker that dies). On Linux
        # every worker gets its own SO_REUSEPORT socket, so connections spread over workers.
        if REUSE_PORT:
            supervisor = ReusePortSupervisor(uv_config, anchor)
        else:
            supervisor = Multiprocess(uv_config, sockets=[anchor])
        supervisor.run()
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)
    if supervisor is not None and failed_to_start(supervisor):
        print("neve.server: a worker failed to start (see the log above); exiting", flush=True)
        return STARTUP_FAILURE
    return 0


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
