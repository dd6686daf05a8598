"""The control plane daemon seen from outside: find it, start it in the background, stop it.

One daemon serves one account directory. Its files there:

- ``control.lock``: an ``flock`` the daemon holds while it lives. Two daemons started at once
  for one account race on it; the loser exits with ``ALREADY_RUNNING`` (17).
- ``control.start.lock``: held by a client while it starts a daemon, so that N processes calling
  ``neve.connect()`` at once spawn one daemon, not N.
- ``control.json``: ``pid``, ``url``, ``port``, ``version``, ``started_on``, ``daemon_id``,
  ``home``, written atomically once the daemon answers on its port, removed on a clean exit.
- ``local_admin.token``: a token of the local admin, mode 0600. On the embedded default the
  file's permissions are the trust boundary (as with Jupyter's or Ray's local tokens).
- ``logs/control.log``: the daemon's log.

A daemon killed with SIGKILL leaves ``control.json`` behind; a file is believed only when the
daemon it names answers ``/api/v1/health`` with the same pid and ``daemon_id``.

The daemon process itself is ``neve.control.serve`` (``python -m neve.control``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from neve.errors import ServiceUnavailableError
from neve.server.processes import pid_alive

INFO_FILE = "control.json"
TOKEN_FILE = "local_admin.token"
LOCK_FILE = "control.lock"
START_LOCK_FILE = "control.start.lock"
LOG_FILE = Path("logs") / "control.log"
HEALTH_PATH = "/api/v1/health"

#: Exit status of a daemon that found another one holding the account's lock.
ALREADY_RUNNING = 17
#: Bound on waiting for a new daemon to answer (imports, catalog migration, service recovery).
DEFAULT_START_TIMEOUT_S = 120.0
DEFAULT_STOP_TIMEOUT_S = 30.0


def _home(home: str | os.PathLike) -> Path:
    return Path(home).expanduser().resolve()


def log_path(home: str | os.PathLike) -> Path:
    return _home(home) / LOG_FILE


def token_path(home: str | os.PathLike) -> Path:
    return _home(home) / TOKEN_FILE


def info_path(home: str | os.PathLike) -> Path:
    return _home(home) / INFO_FILE


# -- files ------------------------------------------------------------------------------------------


def write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    """Write ``path`` so that readers see the old file or the new one, never half of one.

    The temporary file is created with ``mode`` from the start: a token is never readable by
    others, not even for a moment.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)  # O_CREAT honours the umask; the mode must be exact
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def read_info(home: str | os.PathLike) -> dict[str, Any] | None:
    """The daemon's ``control.json`` (maybe stale: check with ``healthy``), or None."""
    try:
        info = json.loads(info_path(home).read_text())
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(info, dict) or not isinstance(info.get("pid"), int) or "url" not in info:
        return None
    return info


def read_token(home: str | os.PathLike) -> str:
    """The local admin token the running daemon wrote (only the account's owner can read it)."""
    path = token_path(home)
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        raise ServiceUnavailableError(
            f"no local admin token at {path}: the control plane of {_home(home)} is not running"
        ) from None
    except PermissionError:
        raise ServiceUnavailableError(
            f"cannot read {path}: only the owner of the account directory may connect locally "
            "(connect with url= and a user's credentials instead)"
        ) from None


def _remove_files(home: Path, daemon_id: str | None = None) -> None:
    """Remove control.json and the token, if they still belong to ``daemon_id`` (when given)."""
    if daemon_id is not None:
        current = read_info(home)
        if current is not None and current.get("daemon_id") != daemon_id:
            return  # a newer daemon already wrote its own files
    for path in (info_path(home), token_path(home)):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def log_tail(home: str | os.PathLike, lines: int = 40) -> str:
    path = log_path(home)
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 256 * 1024))
            text = fh.read().decode(errors="replace")
    except FileNotFoundError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


# -- is it alive? -----------------------------------------------------------------------------------


def _reap(pid: int) -> None:
    """Collect the exit status of ``pid`` if it is our child (a daemon this process started)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def health(info: dict[str, Any], timeout_s: float = 2.0) -> dict[str, Any] | None:
    """The daemon's ``/api/v1/health`` answer, if the daemon ``info`` names is the one answering."""
    if not pid_alive(int(info.get("pid", -1))):
        return None
    try:
        # loopback: never through a proxy; health carries no secret, so a self-signed TLS
        # certificate need not be verified for it
        resp = httpx.get(
            f"{str(info['url']).rstrip('/')}{HEALTH_PATH}",
            timeout=timeout_s,
            trust_env=False,
            verify=False,
        )
        body = resp.json()
    except (httpx.HTTPError, ValueError):
        return None
    if resp.status_code != 200 or not isinstance(body, dict) or body.get("pid") != info["pid"]:
        return None
    if info.get("daemon_id") and body.get("daemon_id") != info["daemon_id"]:
        return None  # another daemon reuses the pid (e.g. in a fresh container) or the port
    return body


def healthy(info: dict[str, Any], timeout_s: float = 2.0) -> bool:
    return health(info, timeout_s) is not None


def running(home: str | os.PathLike) -> dict[str, Any] | None:
    """``control.json`` of the daemon serving ``home`` when it answers, else None."""
    info = read_info(home)
    return info if info is not None and healthy(info) else None


def status(home: str | os.PathLike) -> dict[str, Any]:
    """``{"running": bool, "home", ...}``: the daemon's info and health when it runs."""
    root = _home(home)
    info = read_info(root)
    answer = health(info) if info is not None else None
    if info is not None and answer is not None:
        return {
            "running": True,
            **info,
            "home": str(root),
            "uptime_s": answer.get("uptime_s"),
            "log": str(log_path(root)),
        }
    result: dict[str, Any] = {"running": False, "home": str(root), "log": str(log_path(root))}
    if info is not None and pid_alive(int(info["pid"])):
        # alive but not answering: hung, or still starting
        result.update(pid=info["pid"], url=info.get("url"), state="not responding")
    return result


# -- starting ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def _flock(path: Path, timeout_s: float, what: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path``, waiting at most ``timeout_s``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() >= deadline:
                    raise ServiceUnavailableError(
                        f"timed out after {timeout_s:.0f}s waiting for {what} ({path})"
                    ) from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def ensure_running(
    home: str | os.PathLike,
    *,
    timeout_s: float = DEFAULT_START_TIMEOUT_S,
    host: str | None = None,
    port: int | None = None,
) -> dict[str, Any]:
    """The info of the daemon serving ``home``, starting one in the background when none does.

    Safe to call from many processes at once: one of them starts the daemon, the others wait for
    it. Raises ``ServiceUnavailableError`` with the end of the daemon's log when it does not
    come up within ``timeout_s``.
    """
    root = _home(home)
    info = running(root)
    if info is not None:
        return info
    root.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout_s
    with _flock(root / START_LOCK_FILE, timeout_s, "another process starting the control plane"):
        info = running(root)  # started by whoever held the lock before us
        if info is not None:
            return info
        proc = spawn(root, host=host, port=port)
        return _wait_for_start(root, proc, deadline, timeout_s)


def spawn(home: Path, *, host: str | None = None, port: int | None = None) -> subprocess.Popen:
    """Start ``python -m neve.control --home HOME`` detached: it outlives this process."""
    log_file = log_path(home)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "neve.control", "--home", str(home)]
    if host is not None:
        argv += ["--host", host]
    if port is not None:
        argv += ["--port", str(port)]
    with log_file.open("ab") as out:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,  # the daemon logs to this file too; this catches what bypasses logging
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own session: no SIGINT/SIGHUP from our terminal
            close_fds=True,
            cwd=str(home),
            env={**os.environ, "NEVE_HOME": str(home), "PYTHONUNBUFFERED": "1"},
        )


def _wait_for_start(
    home: Path, proc: subprocess.Popen, deadline: float, timeout_s: float
) -> dict[str, Any]:
    while True:
        info = running(home)
        if info is not None:
            return info
        code = proc.poll()
        # ALREADY_RUNNING: a daemon started some other way holds the lock; wait for it to answer
        if code is not None and code != ALREADY_RUNNING:
            raise ServiceUnavailableError(
                f"the neve control plane for {home} exited with status {code} while starting; "
                f"last lines of {log_path(home)}:\n{log_tail(home)}"
            )
        if time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    if proc.poll() is None:  # stuck: do not leave a half-started daemon behind
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
    holder = read_info(home)
    extra = (
        f" (pid {holder['pid']} holds the account but does not answer: `neve server stop`)"
        if holder and pid_alive(int(holder["pid"]))
        else ""
    )
    raise ServiceUnavailableError(
        f"the neve control plane for {home} did not answer within {timeout_s:.0f}s{extra}; "
        f"last lines of {log_path(home)}:\n{log_tail(home)}"
    )


# -- stopping ---------------------------------------------------------------------------------------


def _same_process(info: dict[str, Any]) -> bool:
    """Whether ``info['pid']`` still is the daemon that wrote ``info`` (not a recycled pid)."""
    import psutil

    try:
        created = psutil.Process(int(info["pid"])).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return False
    try:
        started = datetime.fromisoformat(str(info["started_on"])).timestamp()
    except (KeyError, ValueError):
        return False
    return created <= started + 1.0


def _wait_gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while True:
        _reap(pid)
        if not pid_alive(pid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def stop(home: str | os.PathLike, *, timeout_s: float = DEFAULT_STOP_TIMEOUT_S) -> bool:
    """Stop the daemon serving ``home`` (SIGTERM, then SIGKILL after ``timeout_s``).

    Returns True when a daemon was running. Services keep running: they belong to the account,
    not to the daemon, and the next daemon reattaches to them.
    """
    root = _home(home)
    info = read_info(root)
    if info is None:
        return False
    pid = int(info["pid"])
    if not pid_alive(pid) or not (healthy(info) or _same_process(info)):
        _remove_files(root, info.get("daemon_id"))  # left by a daemon that died
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if not _wait_gone(pid, timeout_s):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        _wait_gone(pid, 10.0)
    _remove_files(root, info.get("daemon_id"))  # a clean exit removed them already
    return True
