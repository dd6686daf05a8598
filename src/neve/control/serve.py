"""The control plane daemon process: ``python -m neve.control --home DIR`` runs ``serve``.

Start-up, in order (one daemon per account: the first step fails fast for a second one):

1. take ``<home>/control.lock`` (``flock``); held until the process ends, released by the
   kernel even on SIGKILL;
2. log to ``<home>/logs/control.log``;
3. ``account.security.bootstrap()`` (admin user, system roles);
4. build every manager, so a broken module fails the start loudly;
5. ``account.services.recover()``: reattach to the instances recorded in the catalog, or
   restart them, and start the services supervisor (its reconcile pass);
6. write the local admin token (0600), serve the REST API, SQL endpoint and ingress gateway
   with uvicorn on ``host:port`` (bound right after step 1; port 0: a free one), and once it
   answers write ``control.json``; start the scheduler's ``PERIODIC_JOBS`` (idle compute
   pools, expired tokens).

SIGTERM or SIGINT stops it cleanly: uvicorn drains requests (bounded), the scheduler stops,
the token is revoked, ``control.json`` and the token file are removed, the managers close.
Service instances keep running: they are the account's, and the next daemon reattaches.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import json
import logging
import os
import signal
import socket
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import neve
from neve.config import Settings, load_settings
from neve.control.daemon import (
    ALREADY_RUNNING,
    LOCK_FILE,
    _remove_files,
    info_path,
    log_path,
    read_info,
    token_path,
    write_atomic,
)
from neve.control.scheduler import Scheduler

if TYPE_CHECKING:
    import uvicorn

    from neve.control.account import Account

log = logging.getLogger("neve.control")

#: Every periodic job of the daemon, in one place: (name, seconds, the job of an account).
#: The services reconcile pass runs on its own supervisor thread (also in-process, without a
#: daemon): ``ServiceManager.recover`` starts it.
POOL_IDLE_CHECK_INTERVAL_S = 2.0
TOKEN_PURGE_INTERVAL_S = 3600.0
PERIODIC_JOBS: tuple[tuple[str, float, Callable[[Account], Callable[[], object]]], ...] = (
    (
        "compute.suspend_idle_pools",
        POOL_IDLE_CHECK_INTERVAL_S,
        lambda a: a.compute.suspend_idle_pools,
    ),
    (
        "security.purge_expired_tokens",
        TOKEN_PURGE_INTERVAL_S,
        lambda a: a.security.purge_expired_tokens,
    ),
)
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(threadName)s]: %(message)s"


def serve(
    home: str | os.PathLike | None = None, *, host: str | None = None, port: int | None = None
) -> int:
    """Run the control plane for ``home`` in this process until SIGTERM/SIGINT; an exit status."""
    settings = load_settings(home)
    root = settings.home
    lock_fd = _take_lock(root / LOCK_FILE)
    if lock_fd is None:
        holder = read_info(root)
        where = f" (pid {holder['pid']} at {holder['url']})" if holder else ""
        print(f"neve: a control plane already serves {root}{where}", file=sys.stderr)
        return ALREADY_RUNNING
    handler = _setup_logging(log_path(root))
    _remove_stale_uploads(root)
    daemon = ControlDaemon(settings, host=host, port=port)
    try:
        with daemon.signal_handlers():
            return daemon.run()
    except SystemExit as exc:  # uvicorn exits this way when it cannot start
        log.error("the control plane could not start (exit status %s)", exc.code)
        return exc.code if isinstance(exc.code, int) and exc.code else 1
    except Exception:
        log.exception("the control plane failed")
        return 1
    finally:
        log.info("control plane stopped (pid %d)", os.getpid())
        os.close(lock_fd)
        logging.getLogger().removeHandler(handler)
        handler.close()


#: The port the control plane last listened on (kept across stops, unlike control.json).
LAST_PORT_FILE = "control.port"


def _read_last_port(home: Path) -> int | None:
    try:
        port = int((home / LAST_PORT_FILE).read_text().strip())
    except (OSError, ValueError):
        return None
    return port if 0 < port < 65536 else None


def _write_last_port(home: Path, port: int) -> None:
    with contextlib.suppress(OSError):
        (home / LAST_PORT_FILE).write_text(f"{port}\n")


def _remove_stale_uploads(root: Path) -> None:
    from neve.control.routes.registry import UPLOAD_DIR, remove_stale_uploads

    if stale := remove_stale_uploads(root):
        log.info("removed %d upload(s) a previous daemon left in %s", stale, root / UPLOAD_DIR)


def _take_lock(path: Path) -> int | None:
    """An fd holding an exclusive ``flock`` on ``path``, or None when another process holds it.

    The fd is not inherited by child processes (service instances), so the lock dies with us.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return None
        raise
    return fd


def _setup_logging(path: Path) -> logging.Handler:
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    if sys.stderr.isatty():  # in the foreground (`neve server start --foreground`): echo it
        console = logging.StreamHandler()
        console.setFormatter(logging.Formatter(LOG_FORMAT))
        root.addHandler(console)
    logging.getLogger("alembic").setLevel(logging.WARNING)  # one migration banner per start
    # httpx logs every request at INFO: the supervisor's readiness probes (each instance, every
    # interval) would bury the log. Failures still show (our own log lines name them).
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return handler


def _url_host(host: str) -> str:
    """The host clients on this machine use to reach a server bound to ``host``."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


class ControlDaemon:
    """One run of the daemon (see the module docstring)."""

    def __init__(self, settings: Settings, *, host: str | None, port: int | None) -> None:
        self.settings = settings
        self.home = settings.home
        self.host = host or settings.control.host
        self.port = settings.control.port if port is None else int(port)
        self.daemon_id = uuid.uuid4().hex
        self.stop_requested = threading.Event()
        self.server: uvicorn.Server | None = None
        self.scheme = "http"

    # -- signals ----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def signal_handlers(self) -> Iterator[None]:
        """SIGTERM/SIGINT request a clean stop at any phase.

        While serving, uvicorn installs its own handlers and, once drained, re-raises the signal
        it caught with the previous handler restored: ours, so the re-raise does not kill the
        process before the cleanup below has run.
        """
        previous = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum: int, frame: Any) -> None:
        if not self.stop_requested.is_set():
            log.info("received %s: stopping", signal.Signals(signum).name)
        self.stop_requested.set()
        if self.server is not None:
            self.server.should_exit = True

    # -- run --------------------------------------------------------------------------------------
    def run(self) -> int:
        from neve.control.account import Account

        log.info(
            "starting neve %s control plane for %s (pid %d)",
            neve.__version__,
            self.home,
            os.getpid(),
        )
        sock = self._bind()  # first: a taken port fails the start at once, with a clear log
        account = Account(self.settings)
        scheduler = Scheduler()
        token: str | None = None
        try:
            self._start_up(account, scheduler)
            if self.stop_requested.is_set():
                return 0
            token = account.security.local_admin_token()
            write_atomic(token_path(self.home), token, mode=0o600)
            self.server = self._server(account)
            return asyncio.run(self._serve(sock, scheduler, account))
        finally:
            scheduler.stop()
            if token is not None:
                with contextlib.suppress(Exception):  # the catalog may be the reason we stop
                    account.security.logout(token)
            _remove_files(self.home, self.daemon_id)
            account.close()
            sock.close()

    def _start_up(self, account: Account, scheduler: Scheduler) -> None:
        account.security.bootstrap()
        for name in ("registry", "environments", "compute", "services", "sql"):
            getattr(account, name)  # built now: a broken manager fails the start, not a request
        log.info("recovering services from the catalog")
        try:
            account.services.recover()
        except Exception:  # the API must still come up to let the user repair things
            log.exception("recovering services failed; serving the API anyway")
        for name, interval_s, job in PERIODIC_JOBS:
            scheduler.every(interval_s, job(account), name)

    def _bind(self) -> socket.socket:
        if self.port == 0:
            # A restarted control plane answers where the last one did when it can, so URLs
            # users copied (ingress_url, scripts) stay valid; else any free port.
            last = _read_last_port(self.home)
            if last:
                try:
                    return self._bind_to(last)
                except OSError:
                    log.info("port %d of the last start is taken; picking a free one", last)
        return self._bind_to(self.port)

    def _bind_to(self, port: int) -> socket.socket:
        family, kind, proto, _, address = socket.getaddrinfo(
            self.host, port, type=socket.SOCK_STREAM
        )[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            sock.close()
            raise OSError(
                exc.errno, f"cannot listen on {self.host}:{port}: {exc.strerror}"
            ) from None
        return sock

    def _server(self, account: Account) -> uvicorn.Server:
        import uvicorn

        from neve.control.app import create_app

        control = self.settings.control
        options: dict[str, Any] = {
            "log_config": None,  # keep our logging set-up: uvicorn's loggers go to control.log
            "access_log": control.access_log,
            "lifespan": "on",
            "timeout_graceful_shutdown": int(control.shutdown_timeout_secs),
            "server_header": False,
        }
        from neve.gateway.limits import uvicorn_options

        options.update(uvicorn_options(self.settings))  # header limits, slowloris guard, TLS
        self.scheme = "https" if options.get("ssl_certfile") else "http"
        app = create_app(account, daemon_id=self.daemon_id)
        return uvicorn.Server(uvicorn.Config(app, **options))

    async def _serve(self, sock: socket.socket, scheduler: Scheduler, account: Account) -> int:
        server = self.server
        assert server is not None
        if self.stop_requested.is_set():
            server.should_exit = True
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started and not serving.done():
            await asyncio.sleep(0.02)
        if not server.started:
            await serving  # raises what stopped it (SystemExit on a start-up failure)
            return 0 if self.stop_requested.is_set() else 1
        port = sock.getsockname()[1]
        _write_last_port(self.home, port)
        info = {
            "pid": os.getpid(),
            "url": f"{self.scheme}://{_url_host(self.host)}:{port}",
            "host": self.host,
            "port": port,
            "version": neve.__version__,
            "started_on": datetime.now(UTC).isoformat(),
            "daemon_id": self.daemon_id,
            "home": str(self.home),
        }
        write_atomic(info_path(self.home), json.dumps(info, indent=2) + "\n")
        scheduler.start()
        self._start_data_plane(scheduler, account, info["url"])
        log.info("serving %s at %s (pid %d)", self.home, info["url"], info["pid"])
        releaser = asyncio.create_task(self._release_long_polls_on_exit(account))
        try:
            await serving
        finally:
            releaser.cancel()
        return 0

    async def _release_long_polls_on_exit(self, account: Account) -> None:
        """Once uvicorn is told to stop, answer the proxies' route-table long-polls at once:
        uvicorn's graceful shutdown waits for open requests, and each long-poll would otherwise
        hold the stop for up to ``control_shutdown_timeout_secs``."""
        server = self.server
        while server is not None and not server.should_exit:
            await asyncio.sleep(0.05)
        account.close_route_publisher()

    def _start_data_plane(self, scheduler: Scheduler, account: Account, url: str) -> None:
        """Adopt or start the ingress proxies (they outlive this daemon) and keep them up: this
        machine's, and one on every node of every Ray pool's cluster (``NodeProxies``)."""
        from neve.dataplane.proxies import PROXY_CHECK_INTERVAL_S, NodeProxies, ProxySupervisor

        proxies = ProxySupervisor(self.settings, host=self.host, scheme=self.scheme)
        threading.Thread(target=proxies.ensure_quietly, name="neve-proxies", daemon=True).start()
        scheduler.every(PROXY_CHECK_INTERVAL_S, proxies.ensure_quietly, "dataplane.proxies")
        nodes = NodeProxies(self.settings, url, account.compute.ensure_ingress_proxies)
        scheduler.every(PROXY_CHECK_INTERVAL_S, nodes.ensure_quietly, "dataplane.node_proxies")
