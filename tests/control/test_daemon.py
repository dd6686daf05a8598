"""The control plane daemon: started on demand, one per account, survives clients, restarts cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

import neve
from neve.control import daemon
from neve.errors import AuthenticationError


def _daemons_for(home: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if "neve.control" in cmd and str(home) in cmd:
            found.append(proc)
    return found


def test_connect_starts_a_daemon_and_a_second_connect_attaches(control_plane, neve_home):
    info = daemon.read_info(neve_home)
    assert info is not None and daemon.healthy(info)
    token_file = neve_home / daemon.TOKEN_FILE
    assert oct(token_file.stat().st_mode & 0o777) == "0o600"
    again = neve.connect(neve_home)
    assert daemon.read_info(neve_home)["pid"] == info["pid"]
    assert again.current_role == "ACCOUNTADMIN"
    assert len(_daemons_for(neve_home)) == 1
    again.close()


def test_unauthenticated_and_malformed_requests_get_json_errors(control_plane):
    url = control_plane.url
    resp = httpx.post(f"{url}/api/v1/sql", json={"sql": "SELECT 1"})
    assert resp.status_code == 401
    assert resp.json()["code"] == "UNAUTHENTICATED"
    resp = httpx.post(
        f"{url}/api/v1/sql",
        content=b"{not json",
        headers={
            "Authorization": f"Bearer {control_plane.token}",
            "Content-Type": "application/json",
        },
    )
    assert resp.status_code == 400
    assert "JSON" in resp.json()["message"]
    with pytest.raises(AuthenticationError):
        neve.connect(url=url, token="not-a-token")


def test_killed_daemon_is_replaced_with_state_intact(control_plane, neve_home):
    control_plane.sql("CREATE DATABASE survivor").collect()
    old_pid = daemon.read_info(neve_home)["pid"]
    os.kill(old_pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while daemon.pid_alive(old_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    session = neve.connect(neve_home)
    new_pid = daemon.read_info(neve_home)["pid"]
    assert new_pid != old_pid
    names = [r["name"] for r in session.sql("SHOW DATABASES").collect()]
    assert "SURVIVOR" in names
    session.close()


def test_concurrent_connects_start_exactly_one_daemon(neve_home):
    code = "import neve, sys; s = neve.connect(sys.argv[1]); print(s.url)"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(neve_home)], stdout=subprocess.PIPE, text=True
        )
        for _ in range(3)
    ]
    try:
        urls = {p.communicate(timeout=90)[0].strip() for p in procs}
        assert all(p.returncode == 0 for p in procs)
        assert len(urls) == 1
        assert len(_daemons_for(neve_home)) == 1
    finally:
        daemon.stop(neve_home)
    assert _daemons_for(neve_home) == []


def test_cli_server_status_and_stop(neve_home):
    neve_cli = [sys.executable, "-m", "neve.cli.main", "--home", str(neve_home)]
    status = subprocess.run([*neve_cli, "server", "status"], capture_output=True, text=True)
    assert status.returncode == 1 and "not running" in status.stdout
    started = subprocess.run(
        [*neve_cli, "server", "start"], capture_output=True, text=True, timeout=90
    )
    assert started.returncode == 0, started.stderr
    status = subprocess.run(
        [*neve_cli, "server", "status", "--json"], capture_output=True, text=True
    )
    assert '"running": true' in status.stdout
    stopped = subprocess.run(
        [*neve_cli, "server", "stop"], capture_output=True, text=True, timeout=60
    )
    assert "stopped" in stopped.stdout
    assert daemon.read_info(neve_home) is None
    assert _daemons_for(neve_home) == []


def test_openapi_document_lists_the_rest_api(control_plane):
    doc = httpx.get(f"{control_plane.url}/api/v1/openapi.json").json()
    assert doc["info"]["title"] == "neve control plane"
    assert "/api/v1/sql" in doc["paths"]
