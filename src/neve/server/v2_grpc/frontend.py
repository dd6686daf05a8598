"""The V2 gRPC port of an instance: ``grpc.server`` threads handing requests to the front's queue.

It runs beside uvicorn in the front process (``--grpc-port``). Each call is converted to the V2
payload the HTTP route parses (in the gRPC thread) and submitted to the same per-method batcher
on the front's event loop, so both protocols share admission, batching, queue timeouts and
the worker slots. gRPC's own deadline bounds the wait, as does ``x-neve-timeout`` metadata (the
queue budget the ingress passes on). A refusal is RESOURCE_EXHAUSTED or UNAVAILABLE with a
``retry-after`` trailer.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from typing import TYPE_CHECKING, Any

import grpc

from neve import __version__
from neve.errors import ModelExecutionError, NeveError, ServiceUnavailableError
from neve.server import metrics, protocol
from neve.server.config import TIMEOUT_HEADER, timeout_from_header
from neve.server.v2_grpc import (
    METHODS,
    SERVICE,
    error_details,
    grpc_status,
    pb,
    request_payload,
    response_message,
    retry_metadata,
    tensor_metadata,
)

if TYPE_CHECKING:
    from neve.server.app import ServerState

log = logging.getLogger("neve.server")

UNKNOWN_METHOD = "_unknown"
#: Threads answering gRPC calls; they wait on the queue, the workers compute.
DEFAULT_THREADS = 16


class GrpcFrontend:
    """``start(host, port)`` binds and serves (port 0 picks one); ``stop()`` drains."""

    def __init__(self, state: ServerState, *, threads: int = DEFAULT_THREADS) -> None:
        self.state = state
        self.threads = threads
        self._server: grpc.Server | None = None

    def start(self, host: str, port: int) -> int:
        config = self.state.config
        server = grpc.server(
            concurrent.futures.ThreadPoolExecutor(
                max_workers=self.threads, thread_name_prefix="neve-grpc"
            ),
            maximum_concurrent_rpcs=config.max_connections,
            options=[
                ("grpc.max_receive_message_length", config.max_body_bytes),
                ("grpc.max_send_message_length", -1),
                ("grpc.so_reuseport", 0),  # a port picked here is this instance's alone
            ],
        )
        handlers = {
            name: grpc.unary_unary_rpc_method_handler(
                getattr(self, "_" + name),
                request_deserializer=request.FromString,
                response_serializer=response.SerializeToString,
            )
            for name, (request, response) in METHODS.items()
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        bound = server.add_insecure_port(address)
        if not bound:
            raise OSError(f"cannot listen for gRPC on {address}")
        server.start()
        self._server = server
        return bound

    def stop(self, grace_s: float = 5.0) -> None:
        if self._server is not None:
            self._server.stop(grace_s).wait(grace_s + 1)
            self._server = None

    # -- health and metadata --------------------------------------------------------------------
    def _ServerLive(self, request: Any, context: grpc.ServicerContext) -> Any:
        return pb.ServerLiveResponse(live=True)

    def _ServerReady(self, request: Any, context: grpc.ServicerContext) -> Any:
        return pb.ServerReadyResponse(ready=self.state.ready)

    def _ServerMetadata(self, request: Any, context: grpc.ServicerContext) -> Any:
        return pb.ServerMetadataResponse(name="neve", version=__version__, extensions=[])

    def _ModelReady(self, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            self._model_method(request.name)
        except NeveError as err:
            self._abort(context, err)
        return pb.ModelReadyResponse(ready=self.state.ready)

    def _ModelMetadata(self, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            method = self._model_method(request.name)
        except NeveError as err:
            self._abort(context, err)
        sig = self.state.methods[method].signature
        return pb.ModelMetadataResponse(
            name=request.name,
            versions=[],
            platform=f"neve-{self.state.model_type}",
            inputs=tensor_metadata(protocol.v2_tensor_metadata(sig.inputs)),
            outputs=tensor_metadata(protocol.v2_tensor_metadata(sig.outputs)),
        )

    # -- inference ------------------------------------------------------------------------------
    def _ModelInfer(self, request: Any, context: grpc.ServicerContext) -> Any:
        state = self.state
        started = time.perf_counter()
        method = UNKNOWN_METHOD
        status = "200"
        try:
            if not state.ready or state.loop is None:
                raise ServiceUnavailableError("the model is not ready yet", code="NOT_READY")
            payload = request_payload(request)
            method = state.v2_method(request.model_name, payload)
            sig = state.methods[method].signature
            parsed, requested = protocol.parse_v2_request(payload, sig.inputs, sig.outputs, method)
            parsed.params = state.method_params(method, protocol.request_params(payload, v2=True))
            out = self._submit(method, parsed, context)
            rows = len(state.answer_index(method, parsed, out))
            body = protocol.v2_response_body(
                request.model_name, request.id or None, sig.outputs, out, rows, requested
            )
            response = response_message(body, request.model_version)
        except NeveError as err:
            status = str(err.http_status)
            if err.http_status >= 500:
                log.warning("gRPC ModelInfer -> %s %s", status, err.message)
            metrics.REQUESTS.labels(method, status).inc()
            self._abort(context, err)
        except Exception as exc:  # a bug of ours: still a status, and keep serving
            log.exception("unexpected error answering gRPC ModelInfer")
            metrics.REQUESTS.labels(method, "500").inc()
            self._abort(
                context, ModelExecutionError(f"internal server error: {type(exc).__name__}: {exc}")
            )
        metrics.REQUESTS.labels(method, status).inc()
        metrics.ROWS.labels(method).inc(parsed.n_rows)
        metrics.REQUEST_LATENCY.labels(method).observe(time.perf_counter() - started)
        return response

    def _submit(
        self, method: str, parsed: protocol.ServiceRequest, context: grpc.ServicerContext
    ) -> protocol.OutputColumns:
        """Queue the rows on the front's loop and wait for their batch's answer."""
        state = self.state
        budgets = [context.time_remaining()]
        for key, value in context.invocation_metadata() or ():
            if key == TIMEOUT_HEADER:
                budgets.append(timeout_from_header(value))
        known = [b for b in budgets if b is not None]
        timeout_s = min(known) if known else None

        async def run() -> protocol.OutputColumns:
            batcher = state.batchers[method]
            batcher.refuse_if_full()
            return await batcher.submit(parsed, timeout_s=timeout_s)

        assert state.loop is not None
        future = asyncio.run_coroutine_threadsafe(run(), state.loop)
        context.add_callback(future.cancel)  # the client left: drop its rows from the queue
        try:
            return future.result()
        except concurrent.futures.CancelledError:
            gone = NeveError("the client cancelled the call", code="CANCELLED")
            gone.http_status = 499
            raise gone from None

    def _model_method(self, name: str) -> str:
        return self.state.v2_target(name) or self.state.default_method()

    @staticmethod
    def _abort(context: grpc.ServicerContext, err: NeveError) -> None:
        trailer = retry_metadata(err)
        if trailer:
            context.set_trailing_metadata(trailer)
        context.abort(grpc_status(err), error_details(err))
