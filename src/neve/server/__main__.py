"""``python -m neve.server``: one inference server instance.

This process is the instance's front: it binds the listening socket (``--port 0`` picks a free
port; ``--port-file`` receives the port once bound) and runs uvicorn in-process with the
application of ``neve.server.app``, which starts N worker processes that each load their own
copy of the model and compute the batches the front forms (``neve.server.pool``). The server
listens once a worker has loaded the model, restarts workers that die, and exits with status 3
when the model does not load. SIGTERM or SIGINT stops it gracefully.

The front never imports the model framework: it is loaded in the workers.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from neve.errors import InvalidArgumentError
from neve.server.config import (
    DEFAULT_BATCH_TIMEOUT_MS,
    DEFAULT_MAX_BATCH_ROWS,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_QUEUE_ROWS,
    DEFAULT_QUEUE_TIMEOUT_S,
    ServerConfig,
    default_num_workers,
)

STARTUP_FAILURE = 3  # the model does not load (uvicorn's status for a failed startup)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m neve.server",
        description="Serve one neve model directory over HTTP: one queue, N worker processes.",
    )
    p.add_argument("--model-dir", required=True, help="model directory written by save_model")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080, help="0 picks a free port")
    p.add_argument(
        "--grpc-port",
        type=int,
        default=-1,
        help="also serve the V2 gRPC protocol on this port (0 picks a free one; -1: off)",
    )
    p.add_argument(
        "--port-file",
        help="write the bound port (and the gRPC port on a second line) once listening",
    )
    p.add_argument(
        "--num-workers", type=int, default=None, help="default: 2*cpus+1 on cpu, 1 on cuda"
    )
    p.add_argument(
        "--max-concurrent-batches",
        type=int,
        default=0,
        help="batches computing at once (default: min(workers, cpus))",
    )
    p.add_argument(
        "--threads-per-worker",
        type=int,
        default=0,
        help="intra-op threads per worker (default: cpus / concurrent batches)",
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
        max_concurrent_batches=args.max_concurrent_batches,
        threads_per_worker=args.threads_per_worker,
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

    # Metrics live in this one process; a multi-process setting inherited from a launcher
    # would make prometheus-client write files nobody reads.
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    import uvicorn

    from neve.server.app import create_app
    from neve.server.sockets import bind_socket

    try:
        sock = bind_socket(config.host, config.port)
    except OSError as exc:
        print(f"neve.server: cannot listen on {config.host}:{config.port}: {exc}", flush=True)
        return STARTUP_FAILURE
    port = sock.getsockname()[1]
    app = create_app(config)
    state = app.state.server
    grpc_frontend = None
    grpc_port = None
    if args.grpc_port >= 0:
        try:
            from neve.server.v2_grpc.frontend import GrpcFrontend
        except Exception as exc:  # an image built before gRPC: serve HTTP alone
            print(f"neve.server: V2 gRPC off ({type(exc).__name__}: {exc})", flush=True)
            args.grpc_port = -1
    if args.grpc_port >= 0:
        grpc_frontend = GrpcFrontend(state)
        try:
            grpc_port = state.grpc_port = grpc_frontend.start(config.host, args.grpc_port)
        except (OSError, RuntimeError) as exc:
            print(f"neve.server: cannot serve gRPC on port {args.grpc_port}: {exc}", flush=True)
            sock.close()
            return STARTUP_FAILURE
    # http: uvicorn's "auto" takes httptools (in every image: SERVER_PACKAGES), h11 in an
    # image built before it was
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=config.host,
            port=port,
            lifespan="on",
            log_level=config.log_level,
            access_log=config.access_log,
            limit_concurrency=config.max_connections,
            timeout_graceful_shutdown=10,
        )
    )

    def fatal(message: str) -> None:
        server.should_exit = True

    state.on_fatal = fatal
    if args.port_file:
        lines = [port] if grpc_port is None else [port, grpc_port]
        _write_atomically(Path(args.port_file), "".join(f"{n}\n" for n in lines))
    also = "" if grpc_port is None else f" (V2 gRPC on port {grpc_port})"
    print(
        f"neve.server: serving {config.model_dir} on http://{config.host}:{port}{also} with "
        f"{config.num_workers} worker(s), {state.pool.concurrency} batch(es) at once, "
        f"{state.pool.threads} thread(s) per worker (pid {os.getpid()})",
        flush=True,
    )
    # uvicorn re-raises the stop signal once it has shut down; a graceful stop exits 0.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _stopped)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
        if grpc_frontend is not None:
            grpc_frontend.stop()
    if state.pool.failed:
        print(f"neve.server: {state.pool.failed}; exiting", flush=True)
        return STARTUP_FAILURE
    if not server.started:
        return STARTUP_FAILURE
    return 0


def _stopped(signum: int, frame: object) -> None:
    pass


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
