"""The account's ingress proxies: how many, on which port, started or re-adopted by the daemon.

Proxies are detached processes (``python -m neve.dataplane.proxy``), like service instances:
a control plane stop, restart or crash leaves them serving, and the next daemon re-adopts the
live ones (``<home>/run/proxies/<index>.json`` names each one's pid and admin URL) and starts
the missing ones. All of them listen on one ingress port (``SO_REUSEPORT``: the kernel spreads
connections), kept across restarts in ``<home>/ingress.port``, so ``ingress_url`` stays valid.

Settings (``settings.toml``, top level):

=========================== ============================= ==========================================
setting                     default                       meaning
=========================== ============================= ==========================================
``ingress_proxies``         half the CPUs, at least 1     proxy processes on this machine (0: none;
                                                          the control plane's own ingress remains)
``ingress_port``            0 (the last one, else free)   the port every proxy listens on
``ingress_host``            the control plane's host      the address they listen on
``ingress_grpc_port``       0 (the last one, else free)   the V2 gRPC port every proxy listens on
                                                          (-1: no gRPC ingress)
=========================== ============================= ==========================================

The proxies and the control plane share a secret (``<home>/run/proxy.secret``, 0600, kept
across restarts): the route table and the look-up endpoints answer only to it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

import neve
from neve.config import Settings
from neve.server.config import cpu_count

log = logging.getLogger("neve.dataplane")

RUN_DIR = "run"
PROXY_DIR = "run/proxies"
SECRET_FILE = "run/proxy.secret"
INGRESS_FILE = "ingress.json"
PORT_FILE = "ingress.port"
NODE_PROXIES_FILE = "run/node-proxies.json"
GRPC_PORT_FILE = "ingress-grpc.port"
SECRET_HEADER = "x-neve-proxy-secret"
HEALTH_PATH = "/_neve/health"
#: The control plane tells a proxy on a Ray node where it is now (``{"url"}``, with the secret).
CONTROL_PATH = "/_neve/control"
#: How a proxy without a home (on a Ray node) gets its secret and settings (JSON).
SECRET_ENV = "NEVE_PROXY_SECRET"
SETTINGS_ENV = "NEVE_PROXY_SETTINGS"
START_TIMEOUT_S = 30.0
#: How often the daemon checks that its proxies run (and restarts the dead ones).
PROXY_CHECK_INTERVAL_S = 5.0


def default_proxy_count(cpus: int | None = None) -> int:
    """One proxy per two CPUs (the other half computes), at least one."""
    return max(1, int(cpus or cpu_count()) // 2)


def proxy_count(settings: Settings) -> int:
    value = settings.ingress.proxies
    return default_proxy_count() if value is None else value


def proxy_secret(home: Path, *, create: bool = False) -> str | None:
    """The secret shared by the account's control plane and proxies (made once when asked)."""
    path = Path(home) / SECRET_FILE
    try:
        return path.read_text().strip() or None
    except OSError:
        if not create:
            return None
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    return value


def ingress_info(home: Path) -> dict[str, Any] | None:
    """``{"url", "host", "port"}`` of the account's proxies, when it has some."""
    try:
        return json.loads((Path(home) / INGRESS_FILE).read_text())
    except (OSError, ValueError):
        return None


def ingress_url(home: Path) -> str | None:
    info = ingress_info(home)
    return str(info["url"]).rstrip("/") if info and info.get("url") else None


def ingress_grpc_address(home: Path) -> str | None:
    """``host:port`` of the proxies' V2 gRPC ingress (what ``tritonclient.grpc`` takes)."""
    info = ingress_info(home)
    return str(info["grpc_address"]) if info and info.get("grpc_address") else None


@dataclass(frozen=True)
class ProxyRecord:
    index: int
    pid: int
    port: int
    admin_url: str
    version: str
    grpc_port: int | None = None

    @classmethod
    def read(cls, path: Path) -> ProxyRecord | None:
        try:
            data = json.loads(path.read_text())
            return cls(
                int(data["index"]),
                int(data["pid"]),
                int(data["port"]),
                str(data["admin_url"]),
                str(data["version"]),
                int(data["grpc_port"]) if data.get("grpc_port") else None,
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None


def record_path(home: Path, index: int) -> Path:
    return Path(home) / PROXY_DIR / f"{index}.json"


def proxy_records(home: Path) -> list[ProxyRecord]:
    folder = Path(home) / PROXY_DIR
    records = [ProxyRecord.read(p) for p in sorted(folder.glob("*.json"))]
    return [r for r in records if r is not None]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie (our exited child) is not alive
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    return True


def healthy(record: ProxyRecord, home: Path, timeout_s: float = 2.0) -> bool:
    """The proxy of ``record`` runs, is this version, serves ``home`` and answers."""
    if record.version != neve.__version__ or not _alive(record.pid):
        return False
    try:
        resp = httpx.get(record.admin_url + HEALTH_PATH, timeout=timeout_s, trust_env=False)
        body = resp.json()
    except (httpx.HTTPError, ValueError):
        return False
    return (
        resp.status_code == 200
        and body.get("pid") == record.pid
        and body.get("home") == str(Path(home).resolve())
    )


class ProxySupervisor:
    """Keeps ``count`` proxies serving ``home`` (called at daemon start and periodically)."""

    def __init__(self, settings: Settings, *, host: str, scheme: str = "http") -> None:
        self.settings = settings
        self.home = Path(settings.home).resolve()
        self.count = proxy_count(settings)
        self.host = settings.ingress.host or host
        self.scheme = scheme
        self._started: dict[int, subprocess.Popen] = {}
        self._lock = threading.Lock()

    def ensure_quietly(self) -> None:
        """``ensure``, logging instead of raising (the scheduler's and start-up's form)."""
        try:
            self.ensure()
        except Exception:
            log.exception("starting the ingress proxies failed")

    def ensure(self) -> list[ProxyRecord]:
        """Adopt the live proxies, start the missing ones; the records of those serving."""
        if self.count <= 0:
            with contextlib.suppress(FileNotFoundError):
                (self.home / INGRESS_FILE).unlink()  # ingress_url: the control plane's own
            return []
        with self._lock:
            return self._ensure()

    def _ensure(self) -> list[ProxyRecord]:
        proxy_secret(self.home, create=True)
        live: dict[int, ProxyRecord] = {}
        for record in proxy_records(self.home):
            if record.index < self.count and healthy(record, self.home):
                live[record.index] = record
            elif record.index >= self.count and _alive(record.pid):
                _terminate(record.pid)  # fewer proxies asked for now
        port = self._port(live)
        grpc_port = self._grpc_port(live)
        for index in range(self.count):
            if index not in live:
                started = self._start(index, port, grpc_port)
                if started is not None:
                    live[index] = started
                    port = started.port
                    grpc_port = started.grpc_port if started.grpc_port else grpc_port
        if live:
            first = next(iter(live.values()))
            self._publish(first.port, first.grpc_port)
        return [live[i] for i in sorted(live)]

    def _port(self, live: dict[int, ProxyRecord]) -> int:
        if live:
            return next(iter(live.values())).port
        configured = self.settings.ingress.port
        if configured:
            return configured
        try:
            last = int((self.home / PORT_FILE).read_text().strip())
        except (OSError, ValueError):
            last = 0
        if last and _port_free(self.host, last):
            return last
        return _free_port(self.host)

    def _grpc_port(self, live: dict[int, ProxyRecord]) -> int:
        """The gRPC ingress port (-1: none), chosen as ``_port`` chooses the HTTP one."""
        for record in live.values():
            if record.grpc_port:
                return record.grpc_port
        configured = self.settings.ingress.grpc_port
        if configured:
            return configured
        try:
            last = int((self.home / GRPC_PORT_FILE).read_text().strip())
        except (OSError, ValueError):
            last = 0
        if last and _port_free(self.host, last):
            return last
        return _free_port(self.host)

    def _start(self, index: int, port: int, grpc_port: int = -1) -> ProxyRecord | None:
        path = record_path(self.home, index)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        logs = self.home / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "neve.dataplane.proxy",
            "--home",
            str(self.home),
            "--index",
            str(index),
            "--host",
            self.host,
            "--port",
            str(port),
            "--grpc-port",
            str(grpc_port),
        ]
        env = {**os.environ, "NEVE_HOME": str(self.home)}
        with open(logs / f"proxy-{index}.log", "ab") as out:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # not in the daemon's process group: outlives it
                close_fds=True,
            )
        self._started[index] = proc
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            record = ProxyRecord.read(path)
            if record is not None and record.pid == proc.pid:
                log.info("ingress proxy %d serving on port %d (pid %d)", index, port, proc.pid)
                return record
            if proc.poll() is not None:
                log.error(
                    "ingress proxy %d exited with status %s; see %s",
                    index,
                    proc.returncode,
                    logs / f"proxy-{index}.log",
                )
                return None
            time.sleep(0.05)
        log.error("ingress proxy %d did not start within %.0f s", index, START_TIMEOUT_S)
        _terminate(proc.pid)
        return None

    def _publish(self, port: int, grpc_port: int | None = None) -> None:
        (self.home / PORT_FILE).write_text(f"{port}\n")
        host = self.host
        url_host = "127.0.0.1" if host in ("", "0.0.0.0") else f"[{host}]" if ":" in host else host
        info: dict[str, Any] = {
            "url": f"{self.scheme}://{url_host}:{port}",
            "host": host,
            "port": port,
        }
        if grpc_port:
            (self.home / GRPC_PORT_FILE).write_text(f"{grpc_port}\n")
            info.update(grpc_port=grpc_port, grpc_address=f"{url_host}:{grpc_port}")
        tmp = self.home / (INGRESS_FILE + ".tmp")
        tmp.write_text(json.dumps(info) + "\n")
        tmp.replace(self.home / INGRESS_FILE)

    def admin_urls(self) -> tuple[str, ...]:
        return tuple(r.admin_url for r in proxy_records(self.home))


class NodeProxies:
    """The proxies on Ray nodes: one per node of every Ray pool's cluster, kept by the compute
    backends (``ensure`` is given as ``ensure_on_nodes(config)``, the compute manager's
    ``ensure_ingress_proxies``), told where this control plane is, and listed in
    ``<home>/run/node-proxies.json`` (``node_proxies(home)``)."""

    def __init__(
        self,
        settings: Settings,
        control_url: str,
        ensure_on_nodes: Callable[[dict[str, Any]], list[dict[str, Any]]],
    ) -> None:
        self.settings = settings
        self.home = Path(settings.home).resolve()
        self.control_url = control_url.rstrip("/")
        self.ensure_on_nodes = ensure_on_nodes

    def config(self) -> dict[str, Any]:
        return {
            "python": sys.executable,
            "control_url": self.control_url,
            "secret": proxy_secret(self.home, create=True),
            "settings": self.settings.configured(),
            "port": self.settings.ingress.port,
            "grpc_port": self.settings.ingress.grpc_port,
        }

    def ensure_quietly(self) -> None:
        try:
            self.ensure()
        except Exception:
            log.exception("starting the ingress proxies on Ray nodes failed")

    def ensure(self) -> list[dict[str, Any]]:
        config = self.config()
        records = self.ensure_on_nodes(config)
        for record in records:
            if record.get("control_url") != self.control_url and record.get("admin_url"):
                retarget(record["admin_url"], self.control_url, config["secret"])
                record["control_url"] = self.control_url
        path = self.home / NODE_PROXIES_FILE
        if records or path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(records, indent=1) + "\n")
            tmp.replace(path)
        return records


def node_proxies(home: Path) -> list[dict[str, Any]]:
    """The proxies on Ray nodes as last seen: ``pool``, ``node``, ``url``, ``grpc_address``..."""
    try:
        records = json.loads((Path(home) / NODE_PROXIES_FILE).read_text())
    except (OSError, ValueError):
        return []
    return records if isinstance(records, list) else []


def retarget(admin_url: str, control_url: str, secret: str) -> bool:
    """Tell a proxy that does not read ``control.json`` where the control plane is now."""
    try:
        httpx.post(
            admin_url + CONTROL_PATH,
            json={"url": control_url},
            headers={SECRET_HEADER: secret},
            timeout=3.0,
            trust_env=False,
        ).raise_for_status()
        return True
    except httpx.HTTPError as exc:
        log.warning("proxy %s was not told the control plane's URL: %s", admin_url, exc)
        return False


def stop_proxies(home: Path, timeout_s: float = 10.0) -> int:
    """SIGTERM every proxy of ``home`` and wait for them; how many were running."""
    records = [r for r in proxy_records(home) if _alive(r.pid)]
    for r in records:
        _terminate(r.pid)
    deadline = time.monotonic() + timeout_s
    for r in records:
        while _alive(r.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(r.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(r.pid, signal.SIGKILL)
    return len(records)


def _terminate(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)


def _port_free(host: str, port: int) -> bool:
    try:
        with socket.socket(_family(host), socket.SOCK_STREAM) as s:
            s.bind((host or "0.0.0.0", port))
        return True
    except OSError:
        return False


def _free_port(host: str) -> int:
    with socket.socket(_family(host), socket.SOCK_STREAM) as s:
        s.bind((host or "0.0.0.0", 0))
        return int(s.getsockname()[1])


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in (host or "") else socket.AF_INET
