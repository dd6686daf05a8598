"""The local backend runs real inference servers as detached process groups and stops them whole.

The servers here run with this test process's python (neve is installed in it); an instance
running in a built image's python, and a killed supervisor whose workers must not be left
behind, are tested in tests/environments/test_image_builds.py.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
from sklearn.linear_model import LogisticRegression

from neve.compute.backends.base import InstanceHandle, InstanceSpec
from neve.compute.backends.local import LocalBackend
from neve.compute.resources import ResourceRequest
from neve.context import admin_context
from neve.errors import ServiceUnavailableError
from neve.models import save_model

pytestmark = pytest.mark.e2e  # starts processes: see the Development section


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    x = pd.DataFrame({"a": rng.random(40), "b": rng.random(40)})
    y = (x["a"] > 0.5).astype(int)
    path = tmp_path / "model"
    save_model(LogisticRegression().fit(x, y), path, sample_input=x)
    return path


def _group(pgid: int) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid:
                found.append(proc)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return found


def _wait_gone(pgid: int, timeout: float = 10.0) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = [p for p in _group(pgid) if p.status() != psutil.STATUS_ZOMBIE]
        if not left:
            return []
        time.sleep(0.1)
    return _group(pgid)


def test_instance_starts_answers_ready_reattaches_and_stops_without_orphans(
    account, model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the control plane's settings and credentials must not reach the model's process
    monkeypatch.setenv("NEVE_CATALOG_URL", "postgresql://neve:secret@db/neve")
    monkeypatch.setenv("NEVE_TOKEN", "a caller's token")
    ctx = admin_context()
    account.security.bootstrap()
    compute = account.compute
    compute.create_pool(ctx, "pool", max_nodes=1, instance_family="CPU_X64_S")
    placement = compute.place(ctx, "pool", ResourceRequest(cpu=1, memory_gb=1), holder="T/0")
    backend = compute.backend_for("pool")
    assert isinstance(backend, LocalBackend) and backend.node_names() == ["POOL-node-1"]
    log_path = tmp_path / "logs" / "0" / "model-inference.log"
    spec = InstanceSpec(
        python=sys.executable,
        model_dir=str(model_dir),
        service="ML.APPS.T",
        instance_index=0,
        log_path=str(log_path),
        request=placement.request,
        num_workers=2,
        max_batch_rows=64,
        node=placement.node,
        env={"NEVE_TEST_MARK": "1"},
    )
    handle = backend.start_instance(spec)
    try:
        assert handle.port > 0 and handle.node == "POOL-node-1" and backend.is_alive(handle)
        body = backend.wait_ready(handle, timeout=120)
        assert isinstance(body, dict)
        leader = psutil.Process(handle.pid)
        assert os.getpgid(handle.pid) == handle.pid  # its own process group (session leader)
        environ = leader.environ()
        assert environ.get("NEVE_TEST_MARK") == "1"  # what the spec sets does arrive
        assert environ.get("NEVE_SERVICE") == "ML.APPS.T"
        leaked = {k for k in environ if k in ("NEVE_CATALOG_URL", "NEVE_TOKEN", "NEVE_HOME")}
        assert leaked == set(), f"control-plane variables reached the instance: {leaked}"
        assert leader.environ().get("CUDA_VISIBLE_DEVICES") == ""  # no GPU placed: none visible
        # Two workers besides the supervisor, all in the instance's group.
        deadline = time.monotonic() + 30
        while len(_group(handle.pid)) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(_group(handle.pid)) >= 3
        assert "serving" in log_path.read_text()

        # A restarted control plane rebuilds the handle from the catalog's JSON and a new
        # backend object; it still recognizes the process and can stop it.
        stored = InstanceHandle.from_json(handle.to_json())
        reattached = LocalBackend(backend.pool)
        assert reattached.is_alive(stored)
        assert reattached.wait_ready(stored, timeout=30) == body
        reattached.stop_instance(stored, timeout=10)
        assert _wait_gone(handle.pid) == [], "processes of the instance survived stop_instance"
        assert not backend.is_alive(handle) and not reattached.is_alive(stored)
        backend.stop_instance(handle)  # idempotent on a stopped instance
    finally:
        backend.stop_instance(handle, timeout=2)
        compute.release(None, "pool", "T/0")


def test_instance_that_cannot_start_reports_its_log(account, tmp_path: Path) -> None:
    ctx = admin_context()
    account.security.bootstrap()
    account.compute.create_pool(ctx, "pool", instance_family="CPU_X64_XS")
    backend = account.compute.backend_for("pool")
    not_a_model = tmp_path / "empty"
    not_a_model.mkdir()
    spec = InstanceSpec(
        python=sys.executable,
        model_dir=str(not_a_model),
        service="ML.APPS.BAD",
        instance_index=0,
        log_path=str(tmp_path / "bad.log"),
        num_workers=1,
    )
    with pytest.raises(ServiceUnavailableError, match="instance 0 of ML.APPS.BAD exited") as err:
        backend.start_instance(spec)
    assert "not a neve model directory" in err.value.message
    missing = InstanceSpec(**{**spec.__dict__, "python": str(tmp_path / "no" / "python")})
    with pytest.raises(ServiceUnavailableError, match="image python .* does not exist"):
        backend.start_instance(missing)


def test_an_instance_log_over_the_limit_is_rotated_when_it_starts(tmp_path: Path) -> None:
    from neve.compute.backends.ray_actor import rotate_log

    log = tmp_path / "model-inference.log"
    assert rotate_log(log, max_bytes=10) is False  # nothing there yet
    log.write_bytes(b"old run\n" * 2)
    (tmp_path / "model-inference.log.1").write_bytes(b"oldest\n")
    assert rotate_log(log, max_bytes=10) is True
    assert not log.exists()
    assert (tmp_path / "model-inference.log.1").read_bytes() == b"old run\n" * 2  # one kept
    log.write_bytes(b"small\n")
    assert rotate_log(log, max_bytes=10) is False and log.read_bytes() == b"small\n"
