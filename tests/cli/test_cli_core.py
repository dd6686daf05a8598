"""The ``neve`` command's core: sub-apps, global options, ``neve server``, error handling."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from neve.cli import _common
from neve.cli.main import SUBCOMMANDS, app
from neve.control import daemon

pytestmark = pytest.mark.e2e  # starts processes: see the Development section

runner = CliRunner()


def neve_cli(*args: str):
    result = runner.invoke(app, list(args), catch_exceptions=False)
    return result


def test_help_lists_every_sub_app_present() -> None:
    result = neve_cli("--help")
    assert result.exit_code == 0
    cli_dir = Path(_common.__file__).parent
    modules = {p.stem for p in cli_dir.glob("*.py")} - {"__init__", "_common", "main"}
    assert set(SUBCOMMANDS) == modules  # every sub-app module is mounted
    for name in SUBCOMMANDS:
        assert name in result.output
    for option in ("--home", "--url", "--role"):
        assert option in result.output


def test_server_lifecycle_from_the_command_line(account_homes) -> None:
    home = str(account_homes("cli"))
    before = os.environ.get("NEVE_HOME")

    status = neve_cli("--home", home, "server", "status")
    assert status.exit_code == 1 and "not running" in status.output

    started = neve_cli("--home", home, "server", "start")
    assert started.exit_code == 0, started.output
    info = daemon.read_info(home)
    assert f"pid {info['pid']}" in started.output and info["url"] in started.output
    again = neve_cli("--home", home, "server", "start")
    assert "already running" in again.output and daemon.read_info(home)["pid"] == info["pid"]

    status = neve_cli("--home", home, "server", "status", "--json")
    assert status.exit_code == 0
    reported = json.loads(status.output)
    assert reported["running"] is True and reported["pid"] == info["pid"]

    me = neve_cli("--home", home, "--role", "sysadmin", "whoami")
    assert me.exit_code == 0, me.output
    assert "ADMIN" in me.output and "SYSADMIN" in me.output and info["url"] in me.output

    logs = neve_cli("--home", home, "server", "logs", "-n", "200")
    assert "serving" in logs.output

    stopped = neve_cli("--home", home, "server", "stop")
    assert stopped.exit_code == 0 and f"stopped the control plane (pid {info['pid']})" in (
        stopped.output
    )
    assert not daemon.pid_alive(info["pid"]) and daemon.read_info(home) is None
    assert "no control plane runs" in neve_cli("--home", home, "server", "stop").output
    # started again, it answers at the same address (copied URLs stay valid)
    assert neve_cli("--home", home, "server", "start").exit_code == 0
    again = daemon.read_info(home)
    assert again["port"] == info["port"] and again["pid"] != info["pid"]
    assert neve_cli("--home", home, "server", "stop").exit_code == 0
    # the global options did not leak into this process's environment
    assert os.environ.get("NEVE_HOME") == before


def test_a_neve_error_is_one_red_line_and_status_1() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = runner.invoke(app, ["--url", f"http://127.0.0.1:{port}", "--token", "x", "whoami"])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: cannot reach the neve control plane")
    assert "Traceback" not in result.output + result.stderr
    assert os.environ.get("NEVE_URL") is None and os.environ.get("NEVE_TOKEN") is None


def test_console_script_entry_point() -> None:
    """The installed ``neve`` runs ``neve.cli.main:run``: same errors, same status."""
    proc = subprocess.run(
        [sys.executable, "-m", "neve.cli.main", "--url", "http://127.0.0.1:9", "whoami"],
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if not k.startswith("NEVE_")},
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith("error: connecting to http://127.0.0.1:9 needs user=")
    assert "Traceback" not in proc.stderr


def test_print_rows_renders_nulls_and_nested_values(capsys: pytest.CaptureFixture) -> None:
    _common.print_rows(
        ["name", "spec", "comment"], [["svc", {"a": [1, 2]}, None], ["x", [], "[b]"]]
    )
    out = capsys.readouterr().out
    assert "svc" in out and '{"a": [1, 2]}' in out and "NULL" in out and "[b]" in out
    assert "2 rows" in out
