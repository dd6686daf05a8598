"""Real uv builds of model images: build once, reuse, layering, network rules, limits, recovery.

One account per module holds the base environment, so only the first build pays for it; uv's
cache makes every later environment a matter of hard links. Nothing here reaches a package
index unless an integration allows PyPI and the local cache lacks a package (then PyPI is used,
which the rules allow).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import psutil
import pytest
from sklearn.linear_model import LogisticRegression
from sqlalchemy import func, select

from neve.catalog import models as m
from neve.compute.backends.base import InstanceSpec
from neve.context import RequestContext, admin_context
from neve.control.account import Account
from neve.errors import (
    BuildError,
    InvalidArgumentError,
    InvalidStateError,
    ObjectNotFoundError,
)
from neve.models import save_model

pytestmark = pytest.mark.e2e  # starts processes: see the Development section

REPO = "ML.REG.IMAGES"


def _save_sklearn(path: Path) -> Path:
    rng = np.random.default_rng(0)
    x = pd.DataFrame({"a": rng.random(40), "b": rng.random(40)})
    y = (x["a"] > 0.5).astype(int)
    save_model(LogisticRegression().fit(x, y), path, sample_input=x)
    return path


def _log(account: Account, ctx: RequestContext, tmp: Path, name: str, **kwargs) -> int:
    account.registry.log_model(ctx, "ML", "REG", name, "V1", _save_sklearn(tmp / name), **kwargs)
    return _version_id(account, name)


def _version_id(account: Account, model: str) -> int:
    with account.catalog.transaction() as s:
        return s.scalar(
            select(m.ModelVersion.id).join(m.Model).where(m.Model.name == model.upper())
        )


@dataclass
class Built:
    account: Account
    ctx: RequestContext
    tmp: Path
    version_id: int
    first: dict
    first_seconds: float


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    tmp = tmp_path_factory.mktemp("builds")
    # This module tests the base build itself: its account builds its own base.
    own_base = pytest.MonkeyPatch()
    own_base.delenv("NEVE_BASE_IMAGES_DIR", raising=False)
    account = Account.open(str(tmp / "home"))
    account.security.bootstrap()
    ctx = admin_context("ML", "REG")
    version_id = _log(account, ctx, tmp, "clf")
    account.environments.create_image_repository(ctx, REPO)
    start = time.monotonic()
    job = account.environments.build_image(ctx, model_version_id=version_id, repo=REPO)
    assert job["name"].startswith("MODEL_BUILD_") and job["status"] in ("PENDING", "RUNNING")
    first = account.environments.wait_job(job["name"], timeout=600)
    seconds = time.monotonic() - start
    try:
        yield Built(account, ctx, tmp, version_id, first, seconds)
    finally:
        account.environments.close()
        account.close()
        own_base.undo()


def _jobs(account: Account) -> int:
    with account.catalog.transaction() as s:
        return s.scalar(select(func.count()).select_from(m.Job))


def test_image_built_once_and_reused(built: Built) -> None:
    env, ctx = built.account.environments, built.ctx
    first = built.first
    assert first["status"] == "DONE", env.job_logs(ctx, first["name"])
    assert first["image_status"] == "READY" and first["requirements"] == ["scikit-learn==1.9.1"]
    python = env.image_python(first)
    assert python == Path(first["python"]) and python.exists()
    # The model's only dependency is in the base: the image is a thin layer over it.
    assert first["installed"] == [] and 0 < first["size_bytes"] < 2 * 2**20
    assert first["base_size_bytes"] > 50 * 2**20

    start = time.monotonic()
    again = env.build_image(ctx, model_version_id=built.version_id, repo=REPO)
    second_seconds = time.monotonic() - start
    assert again["status"] == "SKIPPED" and "reused, build skipped" in again["status_reason"]
    assert again["image_digest"] == first["image_digest"]
    assert again["python"] == first["python"]
    assert second_seconds < built.first_seconds / 5, (second_seconds, built.first_seconds)

    images = env.show_images(ctx, REPO)
    assert len(images) == 1
    assert (
        images[0]["status"] == "READY" and images[0]["digest"] == "sha256:" + first["image_digest"]
    )
    assert images[0]["inputs"]["requirements"] == ["scikit-learn==1.9.1"]
    assert images[0]["model"] == "ML.REG.CLF" and images[0]["size_bytes"] == first["size_bytes"]

    logs = env.job_logs(ctx, first["name"])
    for step in ("build base environment", "install base packages", "build the model layer"):
        assert f"==> {step}" in logs
    assert "satisfied by the base environment" in logs and "image ready" in logs
    assert "reused" in env.job_logs(ctx, again["name"], last_n=1)
    assert env.get_job(ctx, again["name"])["status"] == "SKIPPED"
    assert {j["name"] for j in env.show_jobs(ctx)} >= {first["name"], again["name"]}


def test_force_rebuild_builds_again(built: Built) -> None:
    env, ctx = built.account.environments, built.ctx
    job = env.build_image(ctx, model_version_id=built.version_id, repo=REPO, force_rebuild=True)
    done = env.wait_job(job["name"], timeout=300)
    assert done["status"] == "DONE" and done["image_digest"] == built.first["image_digest"]
    logs = env.job_logs(ctx, job["name"])
    assert "force_rebuild" in logs and "exists: reused" in logs  # the base is not rebuilt
    assert "==> build the model layer" in logs
    assert env.image_python(done).exists()


def test_instance_of_built_image_serves_and_leaves_no_orphans(built: Built) -> None:
    account, ctx = built.account, built.ctx
    account.compute.create_pool(ctx, "serve_pool", instance_family="CPU_X64_S")
    backend = account.compute.backend_for("serve_pool")
    with account.catalog.transaction() as s:
        version = s.get(m.ModelVersion, built.version_id)
        model_dir = account.registry.version_path(version)
    spec = InstanceSpec(
        python=built.first["python"],
        model_dir=str(model_dir),
        service="ML.REG.CLF_SVC",
        instance_index=0,
        log_path=str(built.tmp / "svc" / "model-inference.log"),
        num_workers=1,
    )
    handle = backend.start_instance(spec)
    try:
        backend.wait_ready(handle, timeout=120)
        leader = psutil.Process(handle.pid)
        assert leader.cmdline()[0] == built.first["python"]  # the image's python, not ours
        resp = httpx.post(f"{handle.url}/predict", json={"data": [[0, 0.9, 0.1], [1, 0.1, 0.2]]})
        assert resp.status_code == 200, resp.text
        assert [row[0] for row in resp.json()["data"]] == [0, 1]
        # The supervisor dies hard: stopping the instance must still take its worker down.
        os.kill(handle.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while backend.is_alive(handle) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not backend.is_alive(handle)
        backend.stop_instance(handle, timeout=2)
        deadline = time.monotonic() + 10
        while _group(handle.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _group(handle.pid) == []
    finally:
        backend.stop_instance(handle, timeout=2)


def _group(pgid: int) -> list[int]:
    found = []
    for proc in psutil.process_iter(["status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                found.append(proc.pid)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return found


def _pypi_integration(account: Account, ctx: RequestContext, name: str, hosts: list[str]) -> str:
    env = account.environments
    env.create_network_rule(ctx, f"{name}_rule", value_list=hosts)
    env.create_external_access_integration(ctx, name, [f"{name}_rule"])
    return name


def test_layered_image_adds_only_what_the_base_lacks(built: Built) -> None:
    account, ctx = built.account, built.ctx
    env = account.environments
    version_id = _log(
        account, ctx, built.tmp, "clf_requests",
        pip_requirements=["requests"], conda_dependencies=["py-xgboost"],
    )  # fmt: skip
    # Allowed in case this machine's uv cache lacks requests; with a warm cache it stays offline.
    pypi = _pypi_integration(account, ctx, "pypi", ["pypi.org:443", "files.pythonhosted.org:443"])
    job = env.build_image(
        ctx, model_version_id=version_id, repo=REPO, external_access_integrations=[pypi]
    )
    done = env.wait_job(job["name"], timeout=300)
    assert done["status"] == "DONE", env.job_logs(ctx, job["name"])
    assert "xgboost==3.2.0" in done["requirements"]  # the conda name, mapped to PyPI's
    logs = env.job_logs(ctx, job["name"])
    assert "no conda client is configured" in logs and "py-xgboost -> xgboost" in logs
    names = {p.split("==")[0] for p in done["installed"]}
    assert "requests" in names
    assert not names & {"idna", "numpy", "scikit-learn", "xgboost"}, names  # from the base
    script = "import requests, idna; print(requests.__file__); print(idna.__file__)"
    out = subprocess.run(
        [done["python"], "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    requests_file, idna_file = out.stdout.split()
    assert requests_file.startswith(done["image_path"])  # in the model layer
    assert idna_file.startswith(done["base_path"])  # shared from the base


def test_build_refused_without_an_integration_allowing_the_needed_host(built: Built) -> None:
    account, ctx = built.account, built.ctx
    env = account.environments
    version_id = _log(
        account, ctx, built.tmp, "clf_uncached", pip_requirements=["some-package-not-cached"]
    )
    job = env.wait_job(
        env.build_image(ctx, model_version_id=version_id, repo=REPO)["name"], timeout=120
    )
    assert job["status"] == "FAILED"
    reason = job["status_reason"]
    assert "some-package-not-cached not in the local package cache" in reason
    assert "pypi.org:443, files.pythonhosted.org:443" in reason
    assert "build_external_access_integrations" in reason

    half = _pypi_integration(account, ctx, "index_only", ["pypi.org:443"])
    job = env.wait_job(
        env.build_image(
            ctx, model_version_id=version_id, repo=REPO, external_access_integrations=[half]
        )["name"],
        timeout=120,
    )
    assert job["status"] == "FAILED"
    assert (
        "integration(s) INDEX_ONLY do not allow files.pythonhosted.org:443" in job["status_reason"]
    )
    assert "--offline" in env.job_logs(ctx, job["name"])  # it never went online
    statuses = {i["model"]: i["status"] for i in env.show_images(ctx, REPO)}
    assert statuses["ML.REG.CLF_UNCACHED"] == "FAILED"


def test_bad_build_requests_are_refused_before_anything_is_recorded(built: Built) -> None:
    account, ctx = built.account, built.ctx
    env = account.environments
    before = _jobs(account)
    with pytest.raises(BuildError, match="sklearn models run on CPU only"):
        env.build_image(ctx, model_version_id=built.version_id, repo=REPO, gpu=True)
    with pytest.raises(ObjectNotFoundError, match="image repository ML.REG.NOPE does not exist"):
        env.build_image(ctx, model_version_id=built.version_id, repo="ML.REG.NOPE")
    with pytest.raises(ObjectNotFoundError, match="model version id 9999 does not exist"):
        env.build_image(ctx, model_version_id=9999, repo=REPO)
    with pytest.raises(ObjectNotFoundError, match="external access integration MISSING"):
        env.build_image(
            ctx, model_version_id=built.version_id, repo=REPO,
            external_access_integrations=["missing"],
        )  # fmt: skip
    env.create_network_rule(ctx, "off_rule", value_list=["pypi.org"])
    env.create_external_access_integration(ctx, "off", ["off_rule"], enabled=False)
    with pytest.raises(InvalidStateError, match="integration OFF is disabled"):
        env.build_image(
            ctx, model_version_id=built.version_id, repo=REPO, external_access_integrations="off"
        )
    with pytest.raises(InvalidArgumentError, match="build timeout must be"):
        env.build_image(ctx, model_version_id=built.version_id, repo=REPO, timeout_s=0)
    old = _log(account, ctx, built.tmp, "old_python", python_version="3.99")
    with pytest.raises(BuildError, match="python 3.99 is not available on this machine"):
        env.build_image(ctx, model_version_id=old, repo=REPO)
    assert _jobs(account) == before


@pytest.fixture
def fresh(tmp_path: Path, own_base_images: None) -> Iterator[tuple[Account, RequestContext, int]]:
    """An account with no base environment yet (its build is slow enough to interrupt)."""
    account = Account.open(str(tmp_path / "home"))
    account.security.bootstrap()
    ctx = admin_context("ML", "REG")
    version_id = _log(account, ctx, tmp_path, "clf")
    account.environments.create_image_repository(ctx, REPO)
    try:
        yield account, ctx, version_id
    finally:
        account.environments.close()
        account.close()


def _processes_mentioning(text: str) -> list[int]:
    pids = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(text in arg for arg in proc.info["cmdline"] or []):
                pids.append(proc.pid)
        except psutil.Error:
            continue
    return pids


def test_build_timeout_kills_the_build(fresh) -> None:
    account, ctx, version_id = fresh
    env = account.environments
    job = env.build_image(ctx, model_version_id=version_id, repo=REPO, timeout_s=1.5)
    done = env.wait_job(job["name"], timeout=60)
    assert done["status"] == "FAILED"
    assert "exceeded its time limit of 1.5 s" in done["status_reason"]
    assert done["image_status"] == "FAILED" and done["python"] is None
    images = account.settings.images_dir
    assert not any(images.glob("base-*")) and not list((images / ".tmp").iterdir())
    assert _processes_mentioning(str(images)) == []  # uv was killed with its process group
    assert "FAILED" in env.job_logs(ctx, job["name"], last_n=3)

    job = env.build_image(ctx, model_version_id=version_id, repo=REPO)
    cancelled = env.cancel_job(ctx, job["name"])
    assert cancelled["status"] == "CANCELLED" and cancelled["image_status"] == "FAILED"
    assert _processes_mentioning(str(images)) == []


def test_dropping_a_service_cancels_its_build(fresh) -> None:
    """Dropped while its image builds (the first build of an account installs the base for
    seconds), a service stops that build: uv is killed, the job ends CANCELLED naming the drop,
    no half-built base is left, and the service is gone."""
    account, ctx, _ = fresh
    services, env = account.services, account.environments
    account.sql.execute(
        ctx,
        "CREATE COMPUTE POOL drop_pool MIN_NODES = 1 MAX_NODES = 1 INSTANCE_FAMILY = 'CPU_X64_S'",
    )
    svc = "ML.REG.DROPPED_SVC"
    row = services.create_service(
        ctx,
        model="ML.REG.CLF",
        version="V1",
        service_name=svc,
        compute_pool="drop_pool",
        image_repo=REPO,
        block=False,
    )
    assert row["status"] in ("PENDING", "BUILDING"), row
    deadline = time.monotonic() + 120
    while True:  # until the service's build is installing the base packages (uv running)
        jobs = [j for j in env.show_jobs(ctx) if j.get("service_id") is not None]
        log = Path(jobs[0]["log_path"]) if jobs else None
        if log is not None and log.exists() and "install base packages" in log.read_text():
            break
        assert time.monotonic() < deadline, f"the build did not reach the install step: {jobs}"
        time.sleep(0.05)
    try:
        services.drop_service(ctx, svc)
        with pytest.raises(ObjectNotFoundError):
            services.describe_service(ctx, svc)
        done = env.get_job(ctx, jobs[0]["name"])
        assert done["status"] == "CANCELLED", done
        assert "dropped by" in done["status_reason"], done["status_reason"]
        assert done["image_status"] == "FAILED"
        assert "CANCELLED" in env.job_logs(ctx, done["name"], last_n=3)
        images = account.settings.images_dir
        assert not any(images.glob("base-*")), "a half-built base was left"
        assert _processes_mentioning(str(images)) == []  # uv was killed with its process group
    finally:
        services.close()


def test_killed_build_leaves_no_ready_image(fresh, tmp_path: Path) -> None:
    account, ctx, version_id = fresh
    home = account.settings.home
    script = textwrap.dedent(
        f"""
        import sys, time
        from neve.control.account import Account
        from neve.context import admin_context
        account = Account.open({str(home)!r})
        job = account.environments.build_image(
            admin_context("ML", "REG"), model_version_id={version_id}, repo={REPO!r})
        print(job["name"], flush=True)
        time.sleep(600)
        """
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        name = child.stdout.readline().strip()
        assert name.startswith("MODEL_BUILD_")
        log = home / "logs" / "jobs" / f"{name}.log"
        deadline = time.monotonic() + 120
        while "install base packages" not in (log.read_text() if log.exists() else ""):
            assert time.monotonic() < deadline, "the build did not reach the install step"
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)  # the builder dies mid-install
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
    with account.catalog.transaction() as s:
        image = s.scalar(select(m.Image))
        assert image.status != "READY"
    # A control plane starting on this account finds the job orphaned and cleans up.
    restarted = Account.open(str(home))
    try:
        job = restarted.environments.get_job(ctx, name)
        assert job["status"] == "FAILED" and "interrupted" in job["status_reason"]
        assert job["image_status"] == "FAILED"
        images = restarted.settings.images_dir
        assert not any(images.glob("base-*")) and not list((images / ".tmp").iterdir())
        assert _processes_mentioning(str(images)) == []  # an orphaned uv was killed too
        assert json.dumps(job, default=str)
    finally:
        restarted.environments.close()
        restarted.close()


# -- the REST routes and the CLI, over real HTTP with token authentication -------------------------
@pytest.fixture(scope="module")
def api(built: Built) -> Iterator[tuple[str, str]]:
    import threading

    import uvicorn

    from neve.control.app import create_app

    server = uvicorn.Server(
        uvicorn.Config(create_app(built.account), host="127.0.0.1", port=0, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", built.account.security.local_admin_token()
    finally:
        server.should_exit = True
        thread.join(10)


def test_rest_routes(api: tuple[str, str]) -> None:
    from neve.client.transport import Transport
    from neve.errors import InvalidArgumentError as Invalid
    from neve.errors import ObjectNotFoundError as NotFound

    url, token = api
    rest = Transport(url, token)
    headers = {"X-Neve-Database": "ML", "X-Neve-Schema": "REG"}
    try:
        created = rest.call(
            "POST", "/api/v1/compute-pools",
            json={"name": "rest_pool", "instance_family": "CPU_X64_XS", "max_nodes": 2},
        )  # fmt: skip
        assert created["name"] == "REST_POOL" and created["state"] == "IDLE"
        assert "REST_POOL" in [p["name"] for p in rest.call("GET", "/api/v1/compute-pools")]
        assert (
            rest.call("PATCH", "/api/v1/compute-pools/rest_pool", json={"suspend": True})["state"]
            == "SUSPENDED"
        )
        with pytest.raises(Invalid, match="unknown field\\(s\\) colour"):
            rest.call("PATCH", "/api/v1/compute-pools/rest_pool", json={"colour": "red"})
        with pytest.raises(Invalid, match="valid instance families"):
            rest.call("POST", "/api/v1/compute-pools", json={"name": "x", "instance_family": "Z"})
        assert rest.call("DELETE", "/api/v1/compute-pools/rest_pool") == {"dropped": True}
        with pytest.raises(NotFound, match="compute pool REST_POOL does not exist"):
            rest.call("GET", "/api/v1/compute-pools/rest_pool")
        assert len(rest.call("GET", "/api/v1/instance-families")) == 10

        rest.call(
            "POST", "/api/v1/image-repositories", json={"name": "rest_images"}, headers=headers
        )
        repos = rest.call("GET", "/api/v1/image-repositories", params={"schema": "ML.REG"})
        assert "REST_IMAGES" in [r["name"] for r in repos]
        assert rest.call("GET", "/api/v1/image-repositories/ML.REG.IMAGES/images")
        rule = rest.call(
            "POST", "/api/v1/network-rules",
            json={"name": "ml.reg.rest_rule", "value_list": ["pypi.org:443"]},
        )  # fmt: skip
        assert rule["value_list"] == ["pypi.org:443"]
        rest.call(
            "POST", "/api/v1/integrations",
            json={"name": "rest_int", "allowed_network_rules": ["ml.reg.rest_rule"]},
        )  # fmt: skip
        assert rest.call("GET", "/api/v1/integrations/rest_int")["enabled"] is True
        rest.call("DELETE", "/api/v1/integrations/rest_int")
        rest.call("DELETE", "/api/v1/network-rules/ml.reg.rest_rule")
        rest.call("DELETE", "/api/v1/image-repositories/ml.reg.rest_images")
        jobs = rest.call("GET", "/api/v1/jobs")
        assert jobs and all(j["name"].startswith("MODEL_BUILD_") for j in jobs)
        log = rest.call("GET", f"/api/v1/jobs/{jobs[0]['name']}/logs", params={"last_n": 2})
        assert len(log["text"].splitlines()) == 2
        with pytest.raises(NotFound, match="job MODEL_BUILD_NOPE does not exist"):
            rest.call("GET", "/api/v1/jobs/MODEL_BUILD_NOPE")
    finally:
        rest.close()


def test_cli_pools_and_images(api: tuple[str, str], built: Built) -> None:
    from typer.testing import CliRunner

    from neve.cli.main import app

    url, token = api
    runner = CliRunner()
    env = {"NEVE_URL": url, "NEVE_TOKEN": token, "COLUMNS": "250"}

    def neve(*args: str, code: int = 0) -> str:
        result = runner.invoke(app, list(args), env=env)
        assert result.exit_code == code, result.output
        return result.output

    assert "CLI_POOL is IDLE" in neve(
        "pools", "create", "cli_pool", "--family", "CPU_X64_XS", "--max", "2"
    )
    assert "CLI_POOL" in neve("pools", "list", "--like", "cli%")
    assert "CLI_POOL-node-1" in neve("pools", "describe", "cli_pool")
    assert "1..3 nodes" in neve("pools", "set", "cli_pool", "--max", "3")
    assert "SUSPENDED" in neve("pools", "suspend", "cli_pool")
    assert "IDLE" in neve("pools", "resume", "cli_pool")
    assert "MIN_NODES (4) must not be greater" in neve(
        "pools", "set", "cli_pool", "--min", "4", code=1
    )
    assert "Dropped." in neve("pools", "drop", "cli_pool")
    assert "GPU_NV_S" in neve("pools", "families")

    assert "Network rule" in neve(
        "images", "rules", "create", "ml.reg.cli_rule", "--value", "pypi.org"
    )
    assert "CLI_RULE" in neve("images", "rules", "list")
    _log(built.account, built.ctx, built.tmp, "clf_cli")
    out = neve("images", "build", "ml.reg.clf_cli", "--repo", "ml.reg.images", "--force")
    assert "==> build the model layer" in out and "DONE" in out and "image sha256:" in out
    again = neve("images", "build", "ml.reg.clf_cli", "--version", "v1", "--repo", "ml.reg.images")
    assert "SKIPPED" in again
    job_name = again.split("Build job ")[1].split()[0]
    assert "reused" in neve("images", "logs", job_name, "--last", "1")
    assert "SKIPPED" in neve("images", "job", job_name)
    assert "READY" in neve("images", "list", "ml.reg.images")
    gpu = neve("images", "build", "ml.reg.clf_cli", "--repo", "ml.reg.images", "--gpu", code=1)
    assert "CPU only" in gpu
