"""The control plane daemon: started on demand, one per account, survives its clients and a
SIGKILL (with the catalog intact), stops cleanly, and says why when it cannot start."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

import neve
from neve.control import daemon
from neve.errors import AuthenticationError, ServiceUnavailableError

pytestmark = pytest.mark.e2e  # starts processes: see the Development section


def daemons_for(home: Path) -> list[psutil.Process]:
    """Live ``python -m neve.control --home HOME`` processes."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmd = proc.info["cmdline"] or []
        if "neve.control" in cmd and str(home) in cmd and proc.info["status"] != "zombie":
            found.append(proc)
    return found


def port_open(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def wait_dead(info: dict, timeout_s: float = 30.0) -> None:
    """Until the daemon's process is gone and its port refuses connections (a SIGKILLed
    multi-threaded process shows as a zombie a moment before its sockets are closed)."""
    deadline = time.monotonic() + timeout_s
    while daemon.pid_alive(info["pid"]) or port_open(info["port"]):
        daemon._reap(info["pid"])
        assert time.monotonic() < deadline, f"daemon {info['pid']} still alive after {timeout_s}s"
        time.sleep(0.05)


CONNECT = (
    "import sys, neve\n"
    "s = neve.connect(sys.argv[1])\n"
    "print(s.url, s.current_user, s.current_role)\n"
    "s.close()\n"
)


def test_concurrent_connects_start_one_daemon_that_survives_sigkill_and_stops_cleanly(
    account_homes,
) -> None:
    home = account_homes("race")
    # Three processes connect at once to an account with no daemon: exactly one starts.
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CONNECT, str(home)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    outputs = [p.communicate(timeout=240) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err[-2000:] for _, err in outputs]
    answers = {out.strip() for out, _ in outputs}
    info = daemon.read_info(home)
    assert answers == {f"{info['url']} ADMIN ACCOUNTADMIN"}
    assert [p.pid for p in daemons_for(home)] == [info["pid"]]
    # The daemon outlived those clients; this connect attaches to it.
    session = neve.connect(home)
    assert daemon.read_info(home)["pid"] == info["pid"]
    session.sql("CREATE DATABASE survivor")

    os.kill(info["pid"], signal.SIGKILL)
    wait_dead(info)
    assert daemon.running(home) is None  # the stale control.json is not believed
    # The same session carries on: its next call starts a new daemon, catalog intact.
    names = [r["name"] for r in session.sql("SHOW DATABASES").collect()]
    assert "SURVIVOR" in names
    restarted = daemon.read_info(home)
    assert restarted["pid"] != info["pid"]
    assert [p.pid for p in daemons_for(home)] == [restarted["pid"]]
    fresh = neve.connect(home)
    assert "SURVIVOR" in [r["name"] for r in fresh.sql("SHOW DATABASES").collect()]
    fresh.close()
    token = session.token
    session.close()

    # SIGTERM: a clean exit removes control.json and the token file, and revokes the token.
    os.kill(restarted["pid"], signal.SIGTERM)
    wait_dead(restarted)
    assert not (home / daemon.INFO_FILE).exists()
    assert not (home / daemon.TOKEN_FILE).exists()
    assert "control plane stopped" in daemon.log_tail(home, 5)
    from neve.control.account import Account

    acct = Account.open(str(home))
    try:
        with pytest.raises(AuthenticationError, match="revoked"):
            acct.security.authenticate_token(token)
    finally:
        acct.close()


def test_a_daemon_that_cannot_start_says_why(account_homes) -> None:
    home = account_homes("busy-port")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        (home / "settings.toml").write_text(f"control_port = {port}\n")
        started = time.monotonic()
        with pytest.raises(ServiceUnavailableError) as err:
            daemon.ensure_running(home, timeout_s=60)
    assert time.monotonic() - started < 55  # it failed fast, not by timing out
    message = str(err.value)
    assert "exited with status 1" in message
    assert f"cannot listen on 127.0.0.1:{port}" in message  # the log tail explains it
    assert daemons_for(home) == []
    assert daemon.read_info(home) is None


def test_stop_of_an_account_without_daemon_is_a_no_op(tmp_path) -> None:
    assert daemon.stop(tmp_path) is False
    assert daemon.status(tmp_path)["running"] is False
    # a control.json left by a dead daemon is cleaned up, not believed
    (tmp_path / daemon.INFO_FILE).write_text(
        json.dumps({"pid": 2**22 + 7, "url": "http://127.0.0.1:9", "daemon_id": "x"})
    )
    assert daemon.running(tmp_path) is None
    assert daemon.stop(tmp_path) is False
    assert not (tmp_path / daemon.INFO_FILE).exists()
