"""An ingress proxy process: ``python -m neve.dataplane.proxy --home DIR --index I --port P``.

It serves the ingress gateway (``neve.gateway.app.Gateway``: authentication, the service, USAGE,
routes, body limits, waking, the router) on the account's ingress port, which every proxy of
the account shares (``SO_REUSEPORT``), and V2 gRPC on the ingress gRPC port
(``neve.gateway.grpc_ingress``), with ``ControlPlaneAccess`` for its look-ups and the route
table followed by long-poll. A second port (its admin URL; loopback on the account's machine)
answers ``GET /_neve/health``, ``POST /_neve/invalidate`` (the control plane's push after a
security change) and ``POST /_neve/control`` (where the control plane is now); both POSTs must
carry the proxy secret.

Once serving it writes ``<home>/run/proxies/<index>.json`` (pid, ports, admin URL, version) so
that a daemon, the current one or the next, adopts it. SIGTERM stops it after draining.

On a Ray node (``ray_actor.ProxyActor`` starts it) there is no home: ``--control-url``,
``--record-file`` and ``--admin-host`` (the node's address, so the control plane can push),
with the secret and the settings in ``NEVE_PROXY_SECRET`` / ``NEVE_PROXY_SETTINGS``.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

import neve
from neve.config import Settings, load_settings, settings_from_values
from neve.dataplane.proxies import (
    CONTROL_PATH,
    HEALTH_PATH,
    SECRET_ENV,
    SECRET_HEADER,
    SETTINGS_ENV,
    proxy_secret,
    record_path,
)
from neve.dataplane.publish import INVALIDATE_PATH
from neve.dataplane.routes import ControlPlaneAccess, RouteTableClient, control_url_of
from neve.errors import InvalidArgumentError
from neve.gateway.app import Gateway
from neve.gateway.core import Receive, Scope, Send
from neve.gateway.grpc_ingress import GrpcIngress
from neve.gateway.limits import uvicorn_options

log = logging.getLogger("neve.dataplane")


class ProxyApp:
    """The gateway on the ingress port; health and invalidation on the admin port."""

    def __init__(
        self,
        gateway: Gateway,
        access: ControlPlaneAccess,
        admin_port: int,
        home: Path,
        control: ControlTarget | None = None,
    ) -> None:
        self.gateway = gateway
        self.access = access
        self.admin_port = admin_port
        self.home = home
        self.control = control
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
                    "control_url": routes.control_url(),
                },
            )
        elif path in (INVALIDATE_PATH, CONTROL_PATH) and method == "POST":
            given = dict(scope.get("headers") or []).get(SECRET_HEADER.encode(), b"").decode()
            if not hmac.compare_digest(given, self.secret):
                await _json(send, 403, {"code": "FORBIDDEN", "message": "wrong proxy secret"})
                return
            if path == CONTROL_PATH:  # the control plane moved (a restart on another port)
                body = await _body(receive)
                url = body.get("url") if isinstance(body, dict) else None
                if self.control is None or not isinstance(url, str) or not url:
                    await _json(send, 400, {"code": "INVALID", "message": "no control url"})
                    return
                self.control.told = url.rstrip("/")
                await _json(send, 200, {"control_url": self.control.told})
                return
            self.access.invalidate()
            self.gateway.invalidate()
            await _json(send, 200, {"invalidated": True})
        else:
            await _json(send, 404, {"code": "NOT_FOUND", "message": f"no admin route {path}"})


async def _body(receive: Receive) -> Any:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    try:
        return orjson.loads(b"".join(chunks) or b"null")
    except orjson.JSONDecodeError:
        return None


async def _json(send: Send, status: int, payload: Any) -> None:
    body = orjson.dumps(payload)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _watch(server: Any, routes: RouteTableClient, home: Path | None, orphan_s: float) -> None:
    """Stop when the account is gone, or its control plane has been away for ``orphan_s``."""
    loop = asyncio.get_running_loop()
    last_seen = loop.time()
    while True:
        await asyncio.sleep(2.0)
        if routes.connected:
            last_seen = loop.time()
        if home is not None and not home.is_dir():
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


def _admin_socket(host: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((host, 0))
    sock.listen(64)
    return sock


@dataclass
class ProxyOptions:
    """What one proxy process serves, and for which account.

    On the account's machine ``home`` holds everything (settings, the secret, the control
    plane's address, the proxy's record). A proxy on a Ray node has no home: it is handed the
    settings, the secret (``NEVE_PROXY_SECRET``) and the control plane's URL, writes its record
    to ``record_file`` and listens for the control plane's pushes on the node's address.
    """

    index: int
    host: str
    port: int
    grpc_port: int = -1
    home: Path | None = None
    control_url: str | None = None
    settings: Settings | None = None
    secret: str | None = None
    record_file: Path | None = None
    admin_host: str = "127.0.0.1"


async def _serve(options: ProxyOptions) -> int:
    import uvicorn

    home = options.home
    settings = options.settings or load_settings(home)
    secret = options.secret or (proxy_secret(home) if home else None)
    if not secret:
        log.error("no proxy secret for %s: the control plane starts proxies", home)
        return 2
    ingress = _ingress_socket(options.host, options.port)
    admin = _admin_socket(options.admin_host)
    admin_port = admin.getsockname()[1]
    admin_url = f"http://{_url_host(options.admin_host)}:{admin_port}"

    gateway_ref: list[Gateway] = []

    def on_epoch() -> None:  # a security change elsewhere: drop cached answers
        if gateway_ref:
            gateway_ref[0].invalidate()

    # a proxy on another node is told where the control plane is (and told again when it
    # moves: POST /_neve/control); a local one reads home
    control = ControlTarget(options.control_url, home)
    routes = RouteTableClient(control.url, secret, admin_url=admin_url, on_epoch=on_epoch)
    access = ControlPlaneAccess(routes)
    gateway = Gateway(settings=settings, access=access)
    gateway_ref.append(gateway)
    app = ProxyApp(gateway, access, admin_port, home or settings.home, control)
    uvicorn_config: dict[str, Any] = {
        "log_config": None,
        "access_log": False,
        "lifespan": "off",
        **uvicorn_options(settings),
        # the gateway refuses past ingress_max_inflight itself, with Retry-After (uvicorn's
        # own limit answers a bare 503)
        "limit_concurrency": None,
    }
    server = uvicorn.Server(uvicorn.Config(app, **uvicorn_config))
    follow = asyncio.create_task(routes.run())
    # A proxy whose control plane has been away this long stops: restarts take seconds; an
    # account whose daemon was stopped for good does not keep it forever.
    orphan_s = settings.ingress.proxy_orphan_secs
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
    if options.grpc_port >= 0:
        grpc_ingress = GrpcIngress(gateway)
        try:
            bound_grpc = await grpc_ingress.start(options.host, options.grpc_port)
        except (OSError, RuntimeError) as exc:
            log.error(
                "ingress proxy %d: no gRPC ingress on port %d: %s",
                options.index,
                options.grpc_port,
                exc,
            )
            await grpc_ingress.stop(0)
            grpc_ingress = None
    path = options.record_file or record_path(home or settings.home, options.index)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(
        json.dumps(
            {
                "index": options.index,
                "pid": os.getpid(),
                "port": ingress.getsockname()[1],  # --port 0: the one bound
                "admin_url": admin_url,
                "version": neve.__version__,
                "grpc_port": bound_grpc,
            }
        )
    )
    tmp.replace(path)
    log.info(
        "ingress proxy %d serving %s on port %d, gRPC %s (admin %s)",
        options.index,
        home or options.control_url,
        ingress.getsockname()[1],
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


class ControlTarget:
    """Where the control plane is: read from ``<home>/control.json``, or as last told."""

    def __init__(self, url: str | None, home: Path | None) -> None:
        self.told = url.rstrip("/") if url else None
        self._read_home = control_url_of(home) if home is not None and not url else None

    def url(self) -> str | None:
        return self._read_home() if self._read_home is not None else self.told


def _url_host(host: str) -> str:
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m neve.dataplane.proxy")
    parser.add_argument("--home", default=None, help="the account's directory (on its machine)")
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--control-url", default=None, help="default: <home>/control.json")
    parser.add_argument(
        "--grpc-port", type=int, default=-1, help="V2 gRPC ingress port (0: a free one; -1: off)"
    )
    parser.add_argument(
        "--record-file",
        default=None,
        help="where to write pid/ports once serving (default: <home>/run/proxies/<index>.json)",
    )
    parser.add_argument(
        "--admin-host", default=None, help="address of the admin port (default: 127.0.0.1)"
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
        options = _options(args)
    except (InvalidArgumentError, ValueError) as exc:
        parser.error(str(exc))
    try:
        return asyncio.run(_serve(options))
    except OSError as exc:
        log.error("ingress proxy %d could not start: %s", args.index, exc)
        return 1


def _options(args: argparse.Namespace) -> ProxyOptions:
    options = ProxyOptions(
        index=args.index,
        host=args.host,
        port=args.port,
        grpc_port=args.grpc_port,
        control_url=args.control_url,
        record_file=Path(args.record_file) if args.record_file else None,
        admin_host=args.admin_host or "127.0.0.1",
    )
    if args.home:
        options.home = Path(args.home).resolve()
        return options
    # a proxy without a home (on a Ray node): everything comes from its launcher
    if not args.control_url or not args.record_file:
        raise ValueError("without --home, --control-url and --record-file are required")
    options.secret = os.environ.get(SECRET_ENV) or None
    values = json.loads(os.environ.get(SETTINGS_ENV) or "{}")
    run_dir = Path(args.record_file).resolve().parent
    options.settings = settings_from_values(values, home=run_dir, source=SETTINGS_ENV)
    return options


if __name__ == "__main__":
    sys.exit(main())
