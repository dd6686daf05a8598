"""The Starlette application of an instance's front process: routes, body limits, errors.

One front process per instance owns the HTTP listener, admission control and one batcher per
model method; the model itself lives in the worker processes of a ``WorkerPool``, which compute
the batches (see ``neve.server.pool``). The front reads the methods and signatures from the
model directory's manifest, so it never imports the model framework. The lifespan startup
starts the workers and returns once one has loaded the model: a server that answers at all can
compute, and a model that fails to load makes startup fail (``python -m neve.server`` then
exits with status 3).

Routes::

    POST /<method>                         service-function format (lower-case; '_' or '-')
    POST /v2/models/<name>/infer           Open Inference Protocol; <name>: a method or the
    POST /v2/models/<name>/versions/<v>/infer      model name (then parameters.method or the
                                                    default method)
    GET  /v2, /v2/health/live, /v2/health/ready, /v2/models/<name>, /v2/models/<name>/ready
    GET  /health   alive      GET /ready   model loaded     GET /metrics   Prometheus
    GET  /methods  every method's signature, options and routes
    GET  /workers  every worker process: pid, ready, the thread limits in effect
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
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
from neve.models.base import handler_by_type
from neve.models.modeldir import MethodSpec, read_manifest
from neve.models.signature import ModelSignature, resolve_params
from neve.server import arrow_ipc, metrics, protocol, v2_binary
from neve.server.batching import Admission, MethodBatcher
from neve.server.config import (
    TIMEOUT_HEADER,
    ServerConfig,
    configure_logging,
    timeout_from_header,
)
from neve.server.pool import WorkerPool

log = logging.getLogger("neve.server")
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
    """Everything the front holds: the methods, the worker pool, batchers and admission."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.admission = Admission(config.max_queue_rows, config.max_inflight_bytes)
        manifest = read_manifest(config.model_dir)
        self.model_type: str = manifest["model_type"]
        self.methods: dict[str, MethodSpec] = {
            m: MethodSpec(
                m,
                ModelSignature.from_dict(d["signature"]),
                d.get("options") or {},
                d.get("function_type") or "FUNCTION",
            )
            for m, d in manifest["methods"].items()
        }
        self.pool = WorkerPool(
            config,
            threaded_calls=handler_by_type(self.model_type).threaded_calls,
            on_fatal=self._fatal,
        )
        self.batchers: dict[str, MethodBatcher] = {}
        self.routes: dict[str, str] = method_routes(list(self.methods))
        self.ready = False
        self.loaded_in_s = 0.0
        #: The event loop batchers run on (another protocol's threads submit to it).
        self.loop: asyncio.AbstractEventLoop | None = None
        #: The V2 gRPC port when one is served (``GET /ready`` names it for the ingress).
        self.grpc_port: int | None = None
        #: Called when the server cannot go on (a worker cannot load the model any more).
        self.on_fatal: Callable[[str], None] | None = None

    async def start(self) -> None:
        started = time.perf_counter()
        self.loop = asyncio.get_running_loop()
        await self.pool.start()
        self.loaded_in_s = time.perf_counter() - started
        for spec in self.methods.values():
            batcher = MethodBatcher(
                spec,
                self.pool,
                self.admission,
                max_batch_rows=self.config.max_batch_rows,
                batch_timeout_s=self.config.batch_timeout_ms / 1000.0,
                queue_timeout_s=self.config.queue_timeout_s,
            )
            batcher.start()
            self.batchers[spec.name] = batcher
        # Long-lived objects out of the collector's view: request garbage triggers full
        # collections, which then need not walk them every time.
        gc.collect()
        gc.freeze()
        self.ready = True
        log.info(
            "front %d: %s model from %s ready in %.2f s; methods: %s; %d worker(s), "
            "%d batch(es) at once, %d thread(s) per worker%s",
            os.getpid(),
            self.model_type,
            self.config.model_dir,
            self.loaded_in_s,
            ", ".join(self.methods),
            self.pool.num_workers,
            self.pool.concurrency,
            self.pool.threads,
            " (each batch: its share of them)" if self.pool.shares_threads else "",
        )

    async def stop(self) -> None:
        self.ready = False
        for batcher in self.batchers.values():
            await batcher.stop()
        await self.pool.stop()

    def _fatal(self, message: str) -> None:
        self.ready = False
        if self.on_fatal is not None:
            self.on_fatal(message)

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

    def v2_target(self, name: str) -> str | None:
        """A method for a V2 model name, or None for the served model's name (or none: the
        ingress forwards a call that named only the service with an empty model name)."""
        if not name or name.lower() == self.config.model_name.lower():
            return None
        return self.resolve(name)

    def v2_method(self, name: str, payload: Any) -> str:
        """The method a V2 request runs: named by the model name, else ``parameters.method``."""
        target = self.v2_target(name)
        if target is not None:
            return target
        params = payload.get("parameters") if isinstance(payload, dict) else None
        asked = params.get("method") if isinstance(params, dict) else None
        return self.resolve(str(asked)) if asked else self.default_method()

    def method_params(self, method: str, given: dict[str, Any] | None) -> dict[str, Any]:
        """The call's parameter values, checked here so a bad one is a 400 for its request."""
        sig = self.methods[method].signature
        if not sig.params and not given:
            return {}
        return resolve_params(sig, given, method=method)

    def answer_index(self, method: str, parsed: protocol.ServiceRequest, out: Any) -> list[Any]:
        """Row ids of an answer: a table function's own rows from 0; others echo the input's."""
        if self.methods[method].partitioned:
            return list(range(len(out.columns[0]) if out.columns else 0))
        return parsed.index

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
    """The ASGI app of an instance's front process (no argument: config from the environment)."""
    config = config or ServerConfig.from_env()
    configure_logging(config.log_level)
    state = ServerState(config)

    async def answer(
        request: Request,
        method_of: Callable[[Any], str],
        parse: Callable[[Any, str, bool], tuple[protocol.ServiceRequest, Any]],
        encode: Callable[
            [str, Any, protocol.ServiceRequest, protocol.OutputColumns],
            bytes | tuple[bytes, dict[str, str]],
        ],
        *,
        v2: bool = False,
        early_method: str | None = None,
        decode: Callable[[bytes], Any] = protocol.loads,
    ) -> Response:
        """The one path every inference request takes, whatever its protocol.

        A service-function request (``early_method`` known from the path) may be an Arrow IPC
        stream instead of JSON; it is answered in the same format. ``decode`` turns the body
        into the payload (V2's binary tensor extension has its own); ``encode`` may return
        headers with the content.
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
                    inputs = state.methods[method].signature.inputs
                    parsed, extra = protocol.parse_arrow_request(body, inputs, method), None
                    # Arrow bodies carry columns only: parameters ride in the query string.
                    parsed.params = method_params(method, _query_params(request))
                else:
                    payload = decode(body)
                    if early_method is None:
                        # V2: the method may be named inside the body.
                        method = method_of(payload)
                    # JSON booleans are rare in numeric rows; without any, parsing is faster.
                    bools = protocol.may_hold_booleans(body)
                    parsed, extra = parse(payload, method, bools)
                    del payload
            finally:
                state.admission.release_bytes(reserved)
            del body
            # Receiving and parsing the body spent part of the request's budget already (a
            # busy front reads slowly): the queue gets what is left.
            budget = timeout_from_header(request.headers.get(TIMEOUT_HEADER))
            if budget is None:
                budget = state.config.queue_timeout_s
            out = await state.batchers[method].submit(
                parsed, timeout_s=budget - (time.perf_counter() - started)
            )
            answer_headers: dict[str, str] = {}
            if arrow:
                content, media_type = protocol.encode_arrow_response(out), arrow_ipc.ARROW_STREAM
            else:
                encoded = encode(method, extra, parsed, out)
                content, answer_headers = encoded if isinstance(encoded, tuple) else (encoded, {})
                if answer_headers:
                    media_type = "application/octet-stream"
            rows = parsed.n_rows
            response = Response(content, media_type=media_type, headers=answer_headers or None)
        except NeveError as err:
            status = err.http_status
            headers = None
            if status in (429, 503):  # every refusal says when to come back
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
            internal = ModelExecutionError(f"internal server error: {type(exc).__name__}: {exc}")
            response = Response(protocol.error_body(internal, v2=v2), status, media_type=JSON)
        metrics.REQUESTS.labels(method, str(status)).inc()
        if status == 200:
            metrics.ROWS.labels(method).inc(rows)
            metrics.REQUEST_LATENCY.labels(method).observe(time.perf_counter() - started)
        return response

    # ------------------------------------------------------------ service-function format

    method_params = state.method_params
    answer_index = state.answer_index

    def parse_service(
        payload: Any, method: str, bools: bool
    ) -> tuple[protocol.ServiceRequest, None]:
        sig = state.methods[method].signature
        parsed = protocol.parse_service_request(payload, sig.inputs, method, bools=bools)
        parsed.params = method_params(method, protocol.request_params(payload))
        return parsed, None

    def encode_service(
        method: str, extra: Any, parsed: protocol.ServiceRequest, out: protocol.OutputColumns
    ) -> bytes:
        return protocol.encode_service_response(answer_index(method, parsed, out), out)

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

    v2_target = state.v2_target

    def parse_v2(payload: Any, method: str, bools: bool) -> tuple[protocol.ServiceRequest, Any]:
        sig = state.methods[method].signature
        parsed, requested = protocol.parse_v2_request(payload, sig.inputs, sig.outputs, method)
        parsed.params = method_params(method, protocol.request_params(payload, v2=True))
        request_id = payload.get("id") if isinstance(payload, dict) else None
        binary = v2_binary.binary_outputs(payload) if isinstance(payload, dict) else (False, set())
        return parsed, (requested, request_id, binary)

    async def v2_infer(request: Request) -> Response:
        name = request.path_params["name"]
        header_length = request.headers.get(v2_binary.HEADER)
        encoding = request.headers.get("content-encoding")

        def decode(body: bytes) -> Any:
            # tritonclient's default: a JSON header, then raw tensor bytes
            body = v2_binary.decompress(body, encoding)
            if header_length is not None:
                return v2_binary.split_request(body, header_length)
            return protocol.loads(body)

        def method_of(payload: Any) -> str:
            return state.v2_method(name, payload)

        def encode_v2(
            method: str, extra: Any, parsed: protocol.ServiceRequest, out: protocol.OutputColumns
        ) -> tuple[bytes, dict[str, str]]:
            requested, request_id, (every, binary_names) = extra
            sig = state.methods[method].signature
            rows = len(answer_index(method, parsed, out))
            body = protocol.v2_response_body(name, request_id, sig.outputs, out, rows, requested)
            return v2_binary.encode_response(body, every, binary_names)

        return await answer(request, method_of, parse_v2, encode_v2, v2=True, decode=decode)

    async def v2_model_metadata(request: Request) -> Response:
        name = request.path_params["name"]
        try:
            method = v2_target(name) or state.default_method()
        except ObjectNotFoundError as err:
            return Response(protocol.error_body(err, v2=True), 404, media_type=JSON)
        sig = state.methods[method].signature
        return _json(
            {
                "name": name,
                "versions": [],
                "platform": f"neve-{state.model_type}",
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
                "model_type": state.model_type,
                "methods": list(state.batchers),
                "loaded_in_s": round(state.loaded_in_s, 3),
                "workers": config.num_workers,
                "workers_ready": state.pool.ready_count(),
                "max_concurrent_batches": state.pool.concurrency,
                "threads_per_worker": state.pool.threads,
                "threads_per_batch": _threads_per_batch(state.pool),
                "grpc_port": state.grpc_port,
            }
        )

    async def workers_route(request: Request) -> Response:
        return _json(
            {
                "workers": state.pool.describe(),
                "max_concurrent_batches": state.pool.concurrency,
                "threads_per_worker": state.pool.threads,
                "threads_per_batch": _threads_per_batch(state.pool),
                "batches_running": state.pool.busy,
                "restarts": state.pool.restarts,
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
                "model_type": state.model_type,
                "model_name": config.model_name,
                "methods": {
                    name: {
                        "signature": spec.signature.to_dict(),
                        "options": spec.options,
                        "function_type": spec.function_type,
                        "max_batch_rows": state.batchers[name].max_batch_rows,
                        "routes": routes.get(name, []),
                    }
                    for name, spec in state.methods.items()
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
        except BaseException:
            await state.stop()
            raise
        try:
            yield
        finally:
            await state.stop()

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/ready", ready, methods=["GET"]),
        Route("/metrics", metrics_route, methods=["GET"]),
        Route("/methods", methods_route, methods=["GET"]),
        Route("/workers", workers_route, methods=["GET"]),
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


def _query_params(request: Request) -> dict[str, Any] | None:
    raw = request.query_params.get("params")
    if raw is None:
        return None
    try:
        value = protocol.loads(raw.encode())
    except NeveError:
        value = None
    if not isinstance(value, dict):
        raise InvalidArgumentError(
            "query parameter params must be a JSON object of parameter values",
            code="INVALID_REQUEST",
        )
    return value


def _json(body: Any, status: int = 200) -> Response:
    return Response(protocol.dumps(body), status, media_type=JSON)


def _threads_per_batch(pool: WorkerPool) -> str | int:
    """``"shared"`` when each batch computes with its share of the CPUs, else the fixed count
    every batch computes with."""
    return "shared" if pool.shares_threads else pool.threads
