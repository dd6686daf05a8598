"""The launch helper and the command line: free ports, readiness, failures that explain themselves."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from neve.errors import InvalidArgumentError, ServiceUnavailableError
from neve.server import server_command, start_server
from neve.server.config import default_num_workers

pytestmark = pytest.mark.e2e  # starts processes: see the Development section


def test_port_zero_is_reported_and_stop_ends_every_process(
    linear_dir: Path, serve_and_stop
) -> None:
    server = serve_and_stop(linear_dir, num_workers=1, port=0)
    assert server.port > 0 and server.url == f"http://127.0.0.1:{server.port}"
    workers = server.worker_pids()
    assert len(workers) == 1
    assert server.stop() == 0  # graceful
    assert not psutil.pid_exists(server.pid) or psutil.Process(server.pid).status() == "zombie"
    assert not any(psutil.pid_exists(p) for p in workers)


def test_model_that_does_not_load_stops_the_server_with_its_log(tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text('{"model_type": "sklearn", "methods": {}}')
    server = start_server(broken, num_workers=1)
    try:
        with pytest.raises(ServiceUnavailableError) as info:
            server.wait_ready(timeout=60)
        assert "exited with status 3" in info.value.message
        assert "cannot load sklearn model" in info.value.message  # the worker's error, from the log
    finally:
        server.stop()


def test_command_line_rejects_bad_settings_before_starting(tmp_path: Path) -> None:
    run = [sys.executable, "-m", "neve.server", "--model-dir", str(tmp_path)]
    out = subprocess.run(run, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "not a neve model directory" in out.stderr
    (tmp_path / "manifest.json").write_text("{}")
    out = subprocess.run([*run, "--num-workers", "0"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "num_workers=0" in out.stderr


def test_server_command_maps_options_to_flags(tmp_path: Path) -> None:
    cmd = server_command(tmp_path, port=9, num_workers=3, max_batch_rows=8, access_log=True)
    assert cmd[1:3] == ["-m", "neve.server"]
    assert cmd[cmd.index("--max-batch-rows") + 1] == "8" and "--access-log" in cmd
    with pytest.raises(InvalidArgumentError, match="max_batch_size"):
        server_command(tmp_path, max_batch_size=8)
    assert default_num_workers("cuda") == 1
    assert default_num_workers("cpu") == 2 * len(__import__("os").sched_getaffinity(0)) + 1
