"""An ingress proxy process: ``python -m neve.dataplane.proxy --home DIR --index I --port P``.

It serves the ingress gateway (``neve.gateway.app.Gateway``: authentication, the service, USAGE,
routes, body limits, waking, the router) on the account's ingress port, which every proxy of
the account shares (``SO_REUSEPORT``), with ``ControlPlaneAccess`` for its look-ups and the
route table followed by long-poll. A second, loopback-only port (its admin URL) answers
``GET /_neve/health`` and ``POST /_neve/invalidate`` (the control plane's push after a
security change; it must carry the proxy secret).

Once serving it writes ``<home>/run/proxies/<index>.json`` (pid, port, admin URL, version) so
that a daemon, the current one or the next, adopts it. SIGTERM stops it after draining.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import json
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import orjson

import neve
from neve.config import load_settings
from neve.dataplane.proxies import (
    HEALTH_PATH,
    SECRET_HEADER,
    proxy_secret,
    record_path,
)
from neve.dataplane.publish import INVALIDATE_PATH
from neve.dataplane.routes import ControlPlaneAccess, RouteTableClient, control_url_of
from neve.gateway.app import Gateway, Receive, Scope, Send
from neve.gateway.grpc_ingress import GrpcIngress
from neve.gateway.limits import uvicorn_options

log = logging.getLogger("neve.dataplane")

#: A proxy whose control plane has been away this long stops (``ingress_proxy_orphan_secs``):
#: restarts take seconds; an account whose daemon was stopped for good does not keep it forever.
DEFAULT_ORPHAN_S = 900.0


class ProxyApp:
    """The gateway on the ingress port; health and invalidation on the admin port."""

    def __init__(
        self, gateway: Gateway, access: ControlPlaneAccess, admin_port: int, home: Path
    ) -> None:
        self.gateway = gateway
        self.access = access
        self.admin_port = admin_port
        self.home = home
        self.secret = access.routes.secret

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (scope.get("server") or (None, None))[1] == self.admin_port:
            await self._admin(scope, receive, send)
            return
        await self.gateway(scope, receive, send)

    async def _admin(self, scope: Scope, receive: Receive, send: Send) -> None:
        path, method = scope.get("path"), scope.get("method")
        if path == HEALTH_PATH and method == "GET":
            routes = self.access.routes
            await _json(
                send,
                200,
                {
                    "pid": os.getpid(),
                    "home": str(self.home),
                    "version": neve.__version__,
                    "routes_version": routes.version,
                    "connected": routes.connected,
                },
            )
        elif path == INVALIDATE_PATH and method == "POST":
            given = dict(scope.get("headers") or []).get(SECRET_HEADER.encode(), b"").decode()
            if not hmac.compare_digest(given, self.secret):
                await _json(send, 403, {"code": "FORBIDDEN", "message": "wrong proxy secret"})
                return
            self.access.invalidate()
            self.gateway.invalidate()
            await _json(send, 200, {"invalidated": True})
        else:
            await _json(send, 404, {"code": "NOT_FOUND", "message": f"no admin route {path}"})


async def _json(send: Send, status: int, payload: Any) -> None:
    body = orjson.dumps(payload)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _watch(server: Any, routes: RouteTableClient, home: Path, orphan_s: float) -> None:
    """Stop when the account is gone, or its control plane has been away for ``orphan_s``."""
    loop = asyncio.get_running_loop()
    last_seen = loop.time()
    while True:
        await asyncio.sleep(2.0)
        if routes.connected:
            last_seen = loop.time()
        if not home.is_dir():
            log.info("account directory %s is gone: stopping", home)
            server.should_exit = True
            return
        if loop.time() - last_seen > orphan_s:
            log.info("no control plane for %.0f s: stopping", orphan_s)
            server.should_exit = True
            return


def _ingress_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # every proxy of the account listens on this one port; the kernel spreads connections
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host or "0.0.0.0", port))
    sock.listen(2048)
    sock.set_inheritable(False)
    return sock


def _admin_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    return sock


async def _serve(
    home: Path,
    index: int,
    host: str,
    port: int,
    control_url: str | None = None,
    grpc_port: int = -1,
) -> int:
    import uvicorn

    settings = load_settings(home)
    secret = proxy_secret(home)
    if not secret:
        log.error("no proxy secret in %s: the control plane starts proxies", home)
        return 2
    ingress = _ingress_socket(host, port)
    admin = _admin_socket()
    admin_port = admin.getsockname()[1]
    admin_url = f"http://127.0.0.1:{admin_port}"

    gateway_ref: list[Gateway] = []

    def on_epoch() -> None:  # a security change elsewhere: drop cached answers
        if gateway_ref:
            gateway_ref[0].invalidate()

    # a proxy on another node is told where the control plane is; a local one reads home
    where = (lambda: control_url.rstrip("/")) if control_url else control_url_of(home)
    routes = RouteTableClient(where, secret, admin_url=admin_url, on_epoch=on_epoch)
    access = ControlPlaneAccess(routes)
    gateway = Gateway(settings=settings, access=access)
    gateway_ref.append(gateway)
    app = ProxyApp(gateway, access, admin_port, home)
    options: dict[str, Any] = {
        "log_config": None,
        "access_log": False,
        "lifespan": "off",
        **uvicorn_options(settings),
        # the gateway refuses past ingress_max_inflight itself, with Retry-After (uvicorn's
        # own limit answers a bare 503)
        "limit_concurrency": None,
    }
    server = uvicorn.Server(uvicorn.Config(app, **options))
    follow = asyncio.create_task(routes.run())
    orphan_s = float(settings.extra.get("ingress_proxy_orphan_secs", DEFAULT_ORPHAN_S))
    watch = asyncio.create_task(_watch(server, routes, home, orphan_s))
    serving = asyncio.create_task(server.serve(sockets=[ingress, admin]))
    while not server.started and not serving.done():
        await asyncio.sleep(0.02)
    if not server.started:
        follow.cancel()
        await serving
        return 1
    grpc_ingress: GrpcIngress | None = None
    bound_grpc: int | None = None
    if grpc_port >= 0:
        grpc_ingress = GrpcIngress(gateway)
        try:
            bound_grpc = await grpc_ingress.start(host, grpc_port)
        except (OSError, RuntimeError) as exc:
            log.error("ingress proxy %d: no gRPC ingress on port %d: %s", index, grpc_port, exc)
            await grpc_ingress.stop(0)
            grpc_ingress = None
    path = record_path(home, index)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(
        json.dumps(
            {
                "index": index,
                "pid": os.getpid(),
                "port": port,
                "admin_url": admin_url,
                "version": neve.__version__,
                "grpc_port": bound_grpc,
            }
        )
    )
    tmp.replace(path)
    log.info(
        "ingress proxy %d serving %s on port %d, gRPC %s (admin %s)",
        index,
        home,
        port,
        bound_grpc or "off",
        admin_url,
    )
    try:
        await serving
    finally:
        for task in (follow, watch):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if grpc_ingress is not None:
            await grpc_ingress.stop()
        await gateway.aclose()
        access.close()
        with contextlib.suppress(OSError, ValueError):
            if json.loads(path.read_text()).get("pid") == os.getpid():
                path.unlink()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m neve.dataplane.proxy")
    parser.add_argument("--home", required=True)
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--control-url", default=None, help="default: <home>/control.json")
    parser.add_argument(
        "--grpc-port", type=int, default=-1, help="V2 gRPC ingress port (0: a free one; -1: off)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s [proxy %(process)d]: %(message)s",
    )
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("neve.gateway").setLevel(logging.WARNING)  # one line per request: too much
    # SIGTERM/SIGINT: uvicorn drains and returns; SIGHUP (a closed terminal) is not a reason
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        return asyncio.run(
            _serve(
                Path(args.home).resolve(),
                args.index,
                args.host,
                args.port,
                args.control_url,
                args.grpc_port,
            )
        )
    except OSError as exc:
        log.error("ingress proxy %d could not start: %s", args.index, exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
