"""The control plane daemon: one per account directory, started in the background on demand.

Files in the account directory:

- ``control.lock``  flock held by the running daemon: two starts race safely, one wins.
- ``control.json``  pid, url, port, version, started_on (written atomically once serving).
- ``local_admin.token``  a session token for the local admin, mode 0600: on the embedded default
  the file's permissions are the trust boundary, as with Jupyter's or Ray's local tokens.
- ``logs/control.log``  the daemon's log.

Services started by the daemon run in their own sessions, so they outlive it; a restarted
daemon reattaches to them (``ServiceManager.recover``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

import neve
from neve.errors import ServiceUnavailableError

INFO_FILE = "control.json"
TOKEN_FILE = "local_admin.token"
LOCK_FILE = "control.lock"
START_LOCK_FILE = "control.start.lock"

log = logging.getLogger("neve.control")


def info_path(home: Path) -> Path:
    return home / INFO_FILE


def read_info(home: Path) -> dict[str, Any] | None:
    try:
        return json.loads(info_path(home).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie is not alive
    with contextlib.suppress(Exception):
        import psutil

        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    return True


def healthy(info: dict[str, Any], timeout: float = 2.0) -> bool:
    if not pid_alive(int(info.get("pid", -1))):
        return False
    try:
        resp = httpx.get(f"{info['url']}/api/v1/health", timeout=timeout, verify=False)
        return resp.status_code == 200 and resp.json().get("pid") == info["pid"]
    except (httpx.HTTPError, ValueError):
        return False


def status(home: Path) -> dict[str, Any]:
    info = read_info(home)
    if info and healthy(info):
        return {"running": True, **info}
    return {"running": False, "home": str(home)}


def _write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


# -- the daemon process -------------------------------------------------------------------------


def serve(home: Path) -> int:
    """Run the control plane in this process until SIGTERM/SIGINT. Returns an exit code."""
    import uvicorn

    from neve.control.account import Account
    from neve.control.app import create_app
    from neve.control.supervisor import Supervisor

    home.mkdir(parents=True, exist_ok=True)
    lock_fh = open(home / LOCK_FILE, "a+")  # noqa: SIM115  (held for the daemon's lifetime)
    try:
        fcntl.flock(lock_fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        log.info("another control plane already serves %s", home)
        return 3

    account = Account.open(str(home))
    settings = account.settings
    account.security.bootstrap()
    supervisor = Supervisor()
    services = account.services
    if hasattr(services, "recover"):
        services.recover()
    if hasattr(services, "reconcile"):
        supervisor.every(
            float(settings.extra.get("reconcile_interval_secs", 2.0)), services.reconcile
        )
    if hasattr(account.security, "purge_expired_tokens"):
        supervisor.every(3600.0, account.security.purge_expired_tokens)
    supervisor.start()

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((settings.control_host, settings.control_port))
    port = sock.getsockname()[1]

    options: dict[str, Any] = {}
    with contextlib.suppress(ImportError):
        from neve.gateway.limits import uvicorn_options

        options = uvicorn_options(settings)
    scheme = "https" if options.get("ssl_certfile") else "http"
    config = uvicorn.Config(
        create_app(account), log_level="info", access_log=False, lifespan="off", **options
    )
    server = uvicorn.Server(config)

    token = account.security.local_admin_token()
    _write_atomic(home / TOKEN_FILE, token, mode=0o600)
    info = {
        "pid": os.getpid(),
        "url": f"{scheme}://{settings.control_host}:{port}",
        "port": port,
        "version": neve.__version__,
        "started_on": datetime.now(UTC).isoformat(),
        "home": str(home),
    }
    _write_atomic(info_path(home), json.dumps(info))
    log.info("neve control plane serving %s at %s", home, info["url"])
    try:
        server.run(sockets=[sock])
    finally:
        supervisor.stop()
        for name in (INFO_FILE, TOKEN_FILE):
            with contextlib.suppress(FileNotFoundError):
                (home / name).unlink()
        account.close()
        fcntl.flock(lock_fh, fcntl.LOCK_UN)
        lock_fh.close()
    return 0


# -- starting and stopping it from a client ----------------------------------------------------


def ensure_running(home: Path, *, timeout_s: float = 60.0) -> dict[str, Any]:
    """The running daemon's info, starting one in the background when none serves ``home``."""
    info = read_info(home)
    if info and healthy(info):
        return info
    home.mkdir(parents=True, exist_ok=True)
    with open(home / START_LOCK_FILE, "a+") as start_lock:
        fcntl.flock(start_lock, fcntl.LOCK_EX)  # one starter at a time per account
        info = read_info(home)
        if info and healthy(info):
            return info
        return _start(home, timeout_s=timeout_s)


def _start(home: Path, *, timeout_s: float) -> dict[str, Any]:
    logs = home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log_file = logs / "control.log"
    with contextlib.suppress(FileNotFoundError):
        info_path(home).unlink()  # stale file of a dead daemon
    with open(log_file, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "neve.control", "--home", str(home)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # outlives the client
            close_fds=True,
            env={**os.environ, "NEVE_HOME": str(home)},
        )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        info = read_info(home)
        if info and healthy(info):
            return info
        code = proc.poll()
        if code is not None and code != 3:
            break
        if code == 3:  # another daemon holds the lock: wait for its control.json
            pass
        time.sleep(0.1)
    tail = _tail(log_file, 30)
    with contextlib.suppress(ProcessLookupError):
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    raise ServiceUnavailableError(
        f"the neve control plane for {home} did not start within {timeout_s:.0f}s; "
        f"last lines of {log_file}:\n{tail}"
    )


def stop(home: Path, *, timeout_s: float = 30.0) -> bool:
    """Stop the daemon serving ``home``; True when one was running."""
    info = read_info(home)
    if not info or not pid_alive(int(info["pid"])):
        return False
    pid = int(info["pid"])
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and pid_alive(pid):
        time.sleep(0.05)
    if pid_alive(pid):
        os.kill(pid, signal.SIGKILL)
    for name in (INFO_FILE, TOKEN_FILE):
        with contextlib.suppress(FileNotFoundError):
            (home / name).unlink()
    return True


def _tail(path: Path, n: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except FileNotFoundError:
        return "(no log)"
