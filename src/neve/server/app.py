"""The Starlette application one uvicorn worker runs: routes, body limits, error responses.

``create_app`` is the factory uvicorn imports in every worker (``neve.server.app:create_app``,
configuration from ``NEVE_SERVER_CONFIG``). The model is loaded in the lifespan startup, before
the worker accepts its first connection: a worker that answers at all has its model loaded, and
a model that fails to load makes the worker exit with uvicorn's startup-failure code, which
stops the whole server (see ``neve.server.__main__``).

Routes::

    POST /<method>                         service-function format (lower-case; '_' or '-')
    POST /v2/models/<name>/infer           Open Inference Protocol; <name>: a method or the
    POST /v2/models/<name>/versions/<v>/infer      model name (then parameters.method or the
                                                    default method)
    GET  /v2, /v2/health/live, /v2/health/ready, /v2/models/<name>, /v2/models/<name>/ready
    GET  /health   alive      GET /ready   model loaded     GET /metrics   Prometheus
    GET  /methods  every method's signature, options and routes
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from neve.errors import (
    InvalidArgumentError,
    ModelExecutionError,
    NeveError,
    ObjectNotFoundError,
    OverloadedError,
    PayloadTooLargeError,
    UnsupportedMediaTypeError,
)
from neve.server import arrow_ipc, metrics, protocol
from neve.server.batching import Admission, MethodBatcher
from neve.server.config import ServerConfig
from neve.server.processes import pid_alive

log = logging.getLogger("neve.server")
#: Set by ``python -m neve.server`` for its workers (a worker then exits on startup failure).
SUPERVISED_ENV = "NEVE_SERVER_SUPERVISED"
#: The supervisor's scratch directory; ``workers/<pid>`` exists while that worker is ready.
STATE_DIR_ENV = "NEVE_SERVER_STATE_DIR"
STARTUP_FAILURE = 3  # uvicorn's exit status for a worker that could not start
JSON = "application/json"
UNKNOWN_METHOD = "_unknown"  # metrics label for requests to no method (bounded cardinality)


def method_routes(methods: list[str]) -> dict[str, str]:
    """URL segment -> method name: ``predict_proba`` answers at ``/predict_proba`` and
    ``/predict-proba`` (and any case, since paths are lower-cased before the look-up)."""
    routes: dict[str, str] = {}
    for name in methods:
        for alias in (name, name.lower(), name.lower().replace("_", "-")):
            routes.setdefault(alias, name)
    return routes


class ServerState:
    """Everything one worker holds: the loaded model, its batchers and the admission budget."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.admission = Admission(config.max_queue_rows, config.max_inflight_bytes)
        self.model: Any = None
        self.batchers: dict[str, MethodBatcher] = {}
        self.routes: dict[str, str] = {}
        self.executor: ThreadPoolExecutor | None = None
        self.ready = False
        self.loaded_in_s = 0.0

    async def start(self) -> None:
        from neve.models import load_model  # pandas and the framework: only in workers

        started = time.perf_counter()
        self.model = load_model(self.config.model_dir, device=self.config.device)
        self.loaded_in_s = time.perf_counter() - started
        # One model thread: LoadedModel serializes calls anyway, and batches go in FIFO order.
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="neve-model")
        for name in self.model.methods:
            batcher = MethodBatcher(
                self.model,
                name,
                self.admission,
                self.executor,
                max_batch_rows=self.config.max_batch_rows,
                batch_timeout_s=self.config.batch_timeout_ms / 1000.0,
                queue_timeout_s=self.config.queue_timeout_s,
            )
            batcher.start()
            self.batchers[name] = batcher
        self.routes = method_routes(list(self.model.methods))
        # The model and the libraries are long-lived: move them out of the collector's view,
        # so the full collections that request garbage triggers do not walk them every time.
        gc.collect()
        gc.freeze()
        self.ready = True
        self._mark_ready(True)
        log.info(
            "worker %d loaded %s model from %s in %.2f s; methods: %s",
            os.getpid(),
            self.model.model_type,
            self.config.model_dir,
            self.loaded_in_s,
            ", ".join(self.model.methods),
        )

    async def stop(self) -> None:
        self.ready = False
        self._mark_ready(False)
        for batcher in self.batchers.values():
            await batcher.stop()
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)

    def _mark_ready(self, ready: bool) -> None:
        state = os.environ.get(STATE_DIR_ENV)
        if not state:
            return
        marker = Path(state) / "workers" / str(os.getpid())
        with contextlib.suppress(OSError):
            if ready:
                marker.touch()
            else:
                marker.unlink(missing_ok=True)

    def workers_ready(self) -> int:
        """Workers of this server whose model is loaded (1 when not run by the supervisor)."""
        state = os.environ.get(STATE_DIR_ENV)
        if not state:
            return int(self.ready)
        count = 0
        with contextlib.suppress(OSError):
            for marker in (Path(state) / "workers").iterdir():
                if marker.name.isdigit() and pid_alive(int(marker.name)):
                    count += 1
        return count

    def resolve(self, segment: str) -> str:
        method = self.routes.get(segment) or self.routes.get(segment.lower())
        if method is None:
            raise ObjectNotFoundError(
                f"model has no method {segment!r}; methods: {sorted(self.batchers)} "
                f"(routes: {', '.join('/' + r for r in sorted(set(self.routes)))})"
            )
        return method

    def default_method(self) -> str:
        return "predict" if "predict" in self.batchers else next(iter(self.batchers))

    async def read_body(self, request: Request, method: str) -> tuple[bytes, int]:
        """The request body, refusing it (413/429) before reading when it cannot be admitted.

        The bytes stay reserved against ``max_inflight_bytes`` until the caller releases them
        (after parsing: ``admission.release_bytes(reserved)``), so concurrent large bodies
        cannot exhaust memory. Returns the body and the bytes reserved.
        """
        limit = self.config.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                raise InvalidArgumentError(
                    f"invalid Content-Length header {declared!r}", code="INVALID_REQUEST"
                ) from None
            if size > limit:
                metrics.REJECTIONS.labels(method, "too_large").inc()
                raise PayloadTooLargeError(
                    f"request body of {size} bytes is larger than the limit of {limit} bytes"
                )
            self._reserve(size, method)
            reserved = size
        else:
            reserved = 0
        parts: list[bytes] = []
        received = 0
        try:
            async for part in request.stream():
                received += len(part)
                if received > limit:
                    metrics.REJECTIONS.labels(method, "too_large").inc()
                    raise PayloadTooLargeError(
                        f"request body is larger than the limit of {limit} bytes"
                    )
                if received > reserved:  # chunked upload: reserve as it arrives
                    self._reserve(received - reserved, method)
                    reserved = received
                parts.append(part)
        except BaseException:
            self.admission.release_bytes(reserved)
            raise
        return (parts[0] if len(parts) == 1 else b"".join(parts)), reserved

    def _reserve(self, n: int, method: str) -> None:
        if not self.admission.reserve_bytes(n):
            metrics.REJECTIONS.labels(method, "body_budget").inc()
            err = OverloadedError(
                f"server is busy receiving {self.admission.inflight_bytes} bytes of requests "
                f"(limit {self.admission.max_inflight_bytes}); retry later"
            )
            err.retry_after_s = 1  # type: ignore[attr-defined]
            raise err


def create_app(config: ServerConfig | None = None) -> Starlette:
    """The ASGI app of one worker (uvicorn calls this with no argument: config from env)."""
    config = config or ServerConfig.from_env()
    _configure_logging(config.log_level)
    state = ServerState(config)

    async def answer(
        request: Request,
        method_of: Callable[[Any], str],
        parse: Callable[[Any, str, bool], tuple[protocol.ServiceRequest, Any]],
        encode: Callable[[str, Any, protocol.ServiceRequest, protocol.OutputColumns], bytes],
        *,
        v2: bool = False,
        early_method: str | None = None,
    ) -> Response:
        """The one path every inference request takes, whatever its protocol.

        A service-function request (``early_method`` known from the path) may be an Arrow IPC
        stream instead of JSON; it is answered in the same format.
        """
        started = time.perf_counter()
        method = early_method or UNKNOWN_METHOD
        status = 200
        rows = 0
        media_type = JSON
        try:
            arrow = arrow_ipc.is_arrow(request.headers.get("content-type"))
            if arrow and early_method is None:
                raise UnsupportedMediaTypeError(
                    f"{request.url.path} reads JSON only; send Arrow IPC streams to POST /<method>"
                )
            if early_method is not None:
                # A full queue refuses at once, before the body is read and parsed.
                state.batchers[method].refuse_if_full()
            body, reserved = await state.read_body(request, method)
            try:
                if arrow:
                    inputs = state.model.methods[method].signature.inputs
                    parsed, extra = protocol.parse_arrow_request(body, inputs, method), None
                else:
                    payload = protocol.loads(body)
                    if early_method is None:
                        # V2: the method may be named inside the body.
                        method = method_of(payload)
                    # JSON booleans are rare in numeric rows; without any, parsing is faster.
                    bools = b"true" in body or b"false" in body
                    parsed, extra = parse(payload, method, bools)
                    del payload
            finally:
                state.admission.release_bytes(reserved)
            del body
            out = await state.batchers[method].submit(parsed)
            if arrow:
                content, media_type = protocol.encode_arrow_response(out), arrow_ipc.ARROW_STREAM
            else:
                content = encode(method, extra, parsed, out)
            rows = parsed.n_rows
            response = Response(content, media_type=media_type)
        except NeveError as err:
            status = err.http_status
            headers = None
            if isinstance(err, OverloadedError):
                headers = {"Retry-After": str(getattr(err, "retry_after_s", 1))}
            if status >= 500:
                log.warning("%s %s -> %d %s", request.method, request.url.path, status, err.message)
            response = Response(
                protocol.error_body(err, v2=v2), status, headers=headers, media_type=JSON
            )
        except ClientDisconnect:
            status = 499  # the client left; nobody reads this answer
            response = Response(b"", status)
        except Exception as exc:  # a bug of ours: still a JSON answer, and keep serving
            log.exception("unexpected error answering %s", request.url.path)
            status = 500
            err = ModelExecutionError(f"internal server error: {type(exc).__name__}: {exc}")
            response = Response(protocol.error_body(err, v2=v2), status, media_type=JSON)
        metrics.REQUESTS.labels(method, str(status)).inc()
        if status == 200:
            metrics.ROWS.labels(method).inc(rows)
            metrics.REQUEST_LATENCY.labels(method).observe(time.perf_counter() - started)
        return response

    # ------------------------------------------------------------ service-function format

    def parse_service(
        payload: Any, method: str, bools: bool
    ) -> tuple[protocol.ServiceRequest, None]:
        sig = state.model.methods[method].signature
        return protocol.parse_service_request(payload, sig.inputs, method, bools=bools), None

    def encode_service(
        method: str, extra: Any, parsed: protocol.ServiceRequest, out: protocol.OutputColumns
    ) -> bytes:
        return protocol.encode_service_response(parsed.index, out)

    async def invoke(request: Request) -> Response:
        segment = request.path_params["method"]
        try:
            method = state.resolve(segment)
        except ObjectNotFoundError as err:
            metrics.REQUESTS.labels(UNKNOWN_METHOD, "404").inc()
            return Response(protocol.error_body(err), 404, media_type=JSON)
        return await answer(request, lambda _: method, parse_service, encode_service,
                            early_method=method)  # fmt: skip

    # ------------------------------------------------------------ Open Inference Protocol

    def v2_target(name: str) -> str | None:
        """A method for a V2 model name, or None when ``name`` is the served model's name."""
        if name.lower() == config.model_name.lower():
            return None
        return state.resolve(name)

    def parse_v2(payload: Any, method: str, bools: bool) -> tuple[protocol.ServiceRequest, Any]:
        sig = state.model.methods[method].signature
        parsed, requested = protocol.parse_v2_request(payload, sig.inputs, sig.outputs, method)
        request_id = payload.get("id") if isinstance(payload, dict) else None
        return parsed, (requested, request_id)

    async def v2_infer(request: Request) -> Response:
        name = request.path_params["name"]

        def method_of(payload: Any) -> str:
            target = v2_target(name)
            if target is not None:
                return target
            params = payload.get("parameters") if isinstance(payload, dict) else None
            asked = params.get("method") if isinstance(params, dict) else None
            return state.resolve(str(asked)) if asked else state.default_method()

        def encode_v2(
            method: str, extra: Any, parsed: protocol.ServiceRequest, out: protocol.OutputColumns
        ) -> bytes:
            requested, request_id = extra
            sig = state.model.methods[method].signature
            return protocol.encode_v2_response(
                name, request_id, sig.outputs, out, parsed.n_rows, requested
            )

        return await answer(request, method_of, parse_v2, encode_v2, v2=True)

    async def v2_model_metadata(request: Request) -> Response:
        name = request.path_params["name"]
        try:
            method = v2_target(name) or state.default_method()
        except ObjectNotFoundError as err:
            return Response(protocol.error_body(err, v2=True), 404, media_type=JSON)
        sig = state.model.methods[method].signature
        return _json(
            {
                "name": name,
                "versions": [],
                "platform": f"neve-{state.model.model_type}",
                "parameters": {"method": method, "methods": list(state.batchers)},
                "inputs": protocol.v2_tensor_metadata(sig.inputs),
                "outputs": protocol.v2_tensor_metadata(sig.outputs),
            }
        )

    async def v2_model_ready(request: Request) -> Response:
        name = request.path_params["name"]
        try:
            v2_target(name)
        except ObjectNotFoundError as err:
            return Response(protocol.error_body(err, v2=True), 404, media_type=JSON)
        return _json({"name": name, "ready": state.ready})

    async def v2_server_metadata(request: Request) -> Response:
        from neve import __version__

        return _json({"name": "neve", "version": __version__, "extensions": []})

    # ------------------------------------------------------------ health, metrics, methods

    async def health(request: Request) -> Response:
        return _json({"status": "alive", "pid": os.getpid()})

    async def ready(request: Request) -> Response:
        if not state.ready:
            return _json({"status": "stopping", "pid": os.getpid()}, 503)
        return _json(
            {
                "status": "ready",
                "pid": os.getpid(),
                "model_type": state.model.model_type,
                "methods": list(state.batchers),
                "loaded_in_s": round(state.loaded_in_s, 3),
                "workers": config.num_workers,
                "workers_ready": state.workers_ready(),
            }
        )

    async def v2_live(request: Request) -> Response:
        return _json({"live": True})

    async def v2_ready(request: Request) -> Response:
        return _json({"ready": state.ready}, 200 if state.ready else 503)

    async def metrics_route(request: Request) -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    async def methods_route(request: Request) -> Response:
        routes: dict[str, list[str]] = {}
        for alias, name in state.routes.items():
            if alias == alias.lower():
                routes.setdefault(name, []).append("/" + alias)
        return _json(
            {
                "model_type": state.model.model_type,
                "model_name": config.model_name,
                "methods": {
                    name: {
                        "signature": spec.signature.to_dict(),
                        "options": spec.options,
                        "max_batch_rows": state.batchers[name].max_batch_rows,
                        "routes": routes.get(name, []),
                    }
                    for name, spec in state.model.methods.items()
                },
            }
        )

    # ------------------------------------------------------------ errors outside handlers

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}.get(exc.status_code, "HTTP_ERROR")
        message = (
            f"no route {request.method} {request.url.path}; see GET /methods"
            if exc.status_code in (404, 405)
            else str(exc.detail)
        )
        return Response(
            protocol.dumps({"code": code, "message": message}),
            exc.status_code,
            headers=exc.headers,
            media_type=JSON,
        )

    async def server_error(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s", request.url.path, exc_info=exc)
        body = {"code": "INTERNAL", "message": f"internal server error: {type(exc).__name__}"}
        return Response(protocol.dumps(body), 500, media_type=JSON)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            await state.start()
        except BaseException as exc:
            if os.environ.get(SUPERVISED_ENV) != "1":
                raise
            _exit_startup_failure(exc)
        watcher = asyncio.get_running_loop().create_task(_exit_with_parent(os.getppid()))
        try:
            yield
        finally:
            watcher.cancel()
            await state.stop()

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/ready", ready, methods=["GET"]),
        Route("/metrics", metrics_route, methods=["GET"]),
        Route("/methods", methods_route, methods=["GET"]),
        Route("/v2", v2_server_metadata, methods=["GET"]),
        Route("/v2/health/live", v2_live, methods=["GET"]),
        Route("/v2/health/ready", v2_ready, methods=["GET"]),
        Route("/v2/models/{name}", v2_model_metadata, methods=["GET"]),
        Route("/v2/models/{name}/ready", v2_model_ready, methods=["GET"]),
        Route("/v2/models/{name}/infer", v2_infer, methods=["POST"]),
        Route("/v2/models/{name}/versions/{version}/infer", v2_infer, methods=["POST"]),
        Route("/{method}", invoke, methods=["POST"]),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HTTPException: http_error, Exception: server_error},
    )
    app.state.server = state
    return app


def _json(body: Any, status: int = 200) -> Response:
    return Response(protocol.dumps(body), status, media_type=JSON)


async def _exit_with_parent(parent_pid: int) -> None:
    # A worker whose supervisor died (kill -9) would keep serving on the inherited socket
    # forever; it notices the re-parenting and shuts down gracefully instead.
    while True:
        await asyncio.sleep(1.0)
        if os.getppid() != parent_pid:
            log.warning("worker %d: supervisor %d is gone, shutting down", os.getpid(), parent_pid)
            os.kill(os.getpid(), signal.SIGTERM)
            return


def _exit_startup_failure(exc: BaseException) -> None:
    """End a supervised worker whose model does not load, at once and with uvicorn's
    startup-failure status, so the supervisor stops the whole server instead of restarting it.

    ``os._exit`` skips interpreter finalization: uvicorn's supervisor may be waiting for this
    worker's health ping, and a process that lingers half-finalized makes it wait the whole
    health-check timeout.
    """
    log.error("worker %d: cannot start: %s", os.getpid(), exc, exc_info=exc)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(STARTUP_FAILURE)


def _configure_logging(level: str) -> None:
    if log.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s neve.server: %(message)s"))
    log.addHandler(handler)
    log.setLevel(level.upper())
    log.propagate = False
