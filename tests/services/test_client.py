"""The user's path through the client: ``neve.connect()`` (a real control-plane daemon),
``mv.create_service`` with progress, ``mv.run(..., service_name=...)`` equal to the in-process
run, ``list_services``, the CLI, a daemon restart that leaves the instances running (and
reattaches to them), and ``delete_service`` leaving no process behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pandas as pd
import pytest
from account_processes import daemon_session
from svc_helpers import alive, process_tree
from typer.testing import CliRunner

from neve.errors import SignatureError

pytestmark = pytest.mark.e2e  # starts processes: see the Development section

SVC = "LIN_SVC"


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    with daemon_session(
        tmp_path_factory.mktemp("client-home"), settings="service_supervisor_interval_secs = 0.3\n"
    ) as sess:
        yield sess


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(3)
    train = pd.DataFrame({"A": rng.normal(size=200), "B": rng.normal(size=200)})
    return train, 2 * train.A + train.B


def test_client_path(session, data):
    from sklearn.linear_model import LinearRegression

    import neve
    from neve.cli.services import app as services_cli
    from neve.control import daemon

    train, y = data
    reg = neve.Registry(session, database_name="ml", schema_name="reg")
    mv = reg.log_model(
        LinearRegression().fit(train, y),
        model_name="lin",
        version_name="v1",
        conda_dependencies=["scikit-learn"],
        sample_input_data=train,
    )
    session.sql(
        "CREATE COMPUTE POOL IF NOT EXISTS cli_pool MIN_NODES = 1 MAX_NODES = 1 "
        "INSTANCE_FAMILY = 'CPU_X64_S'"
    ).collect()
    session.sql("CREATE IMAGE REPOSITORY IF NOT EXISTS ml.reg.images").collect()

    seen: list[str] = []
    handle = mv.create_service(
        service_name=SVC,
        service_compute_pool="cli_pool",
        image_repo="images",
        max_instances=2,
        num_workers=1,
        ingress_enabled=True,
        progress=lambda row: seen.append(row["status"]),
    )
    assert handle.status() == "RUNNING" and seen[-1] == "RUNNING"

    test = train.head(25)
    remote = mv.run(test, function_name="predict", service_name=SVC)  # Arrow columns
    local = mv.run(test, function_name="predict")
    pd.testing.assert_frame_equal(remote, local)
    # more rows than one request holds: several Arrow requests, joined in order
    many = pd.concat([train] * 3, ignore_index=True)
    pd.testing.assert_frame_equal(
        mv.run(many, function_name="predict", service_name=SVC, request_rows=170),
        mv.run(many, function_name="predict"),
    )
    # a string column Arrow can type: the service names the row and column
    with pytest.raises(SignatureError, match=r"row 0, column 'A': expected DOUBLE.*'1.0'"):
        mv.run(test.head(2).assign(A=["1.0", "x"]), function_name="predict", service_name=SVC)
    # a column Arrow cannot type (mixed objects) goes as JSON rows: the same kind of answer
    with pytest.raises(SignatureError, match=r"row 1.*column 'A'.*'x'"):
        mv.run(test.head(2).assign(A=[1.0, "x"]), function_name="predict", service_name=SVC)

    listed = mv.list_services()
    assert list(listed["status"]) == ["RUNNING"] and list(listed["instances"]) == [2]
    assert listed["inference_endpoint"][0].endswith(".neve.localhost")

    # HTTP through the ingress (path form and host form), with a token
    import httpx

    body = {"data": [[i, float(a), float(b)] for i, (a, b) in enumerate(test.to_numpy())]}
    headers = {"Authorization": f"Bearer {session.create_token('svc_test')}"}
    resp = httpx.post(f"{session.url}/svc/ML.REG.{SVC}/predict", json=body, headers=headers)
    assert resp.status_code == 200, resp.text
    answered = [row[1][local.columns[-1]] for row in resp.json()["data"]]
    np.testing.assert_allclose(answered, local.iloc[:, -1].to_numpy())
    host = listed["inference_endpoint"][0]
    resp = httpx.post(f"{session.url}/predict", json=body, headers={**headers, "Host": host})
    assert resp.status_code == 200, resp.text
    # the supervisor probed the instances all along: no line per probe in the daemon's log
    control_log = (session.account_home / "logs" / "control.log").read_text()
    assert "HTTP Request:" not in control_log
    # DESIGN's line as written: POST <ingress_url>/predict
    [endpoint] = session.sql(f"SHOW ENDPOINTS IN SERVICE {SVC}").collect()
    assert endpoint.ingress_host == host
    resp = httpx.post(f"{endpoint.ingress_url}/predict", json=body, headers=headers)
    assert resp.status_code == 200, resp.text
    assert [row[1][local.columns[-1]] for row in resp.json()["data"]] == answered

    # one Prometheus page for the service: every instance, labelled; the calls above are in it
    from prometheus_client.parser import text_string_to_metric_families

    page = httpx.get(f"{session.url}/api/v1/services/ML/REG/{SVC}/metrics", headers=headers)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(page.text)}
    up = {s.labels["instance"]: s.value for s in families["neve_instance_up"].samples}
    assert up == {"0": 1.0, "1": 1.0}
    served = [
        s
        for s in families["neve_server_requests"].samples
        if s.name.endswith("_total") and s.labels.get("status") == "200"
    ]
    assert {s.labels["instance"] for s in served} <= {"0", "1"}
    assert all(s.labels["service"] == f"ML.REG.{SVC}" for s in served)
    assert sum(s.value for s in served) >= 3  # the three HTTP calls at least

    runner = CliRunner()
    result = runner.invoke(services_cli, ["metrics", f"ml.reg.{SVC}"])
    assert result.exit_code == 0, result.output[:500]
    cli_up = [
        s.labels["instance"]
        for f in text_string_to_metric_families(result.output)
        if f.name == "neve_instance_up"
        for s in f.samples
    ]
    assert sorted(cli_up) == ["0", "1"]
    result = runner.invoke(services_cli, ["list", "--database", "ml"])
    assert result.exit_code == 0, result.output
    assert SVC in result.output and "RUNNING" in result.output
    result = runner.invoke(
        services_cli, ["logs", f"ml.reg.{SVC}", "--instance", "1", "--last", "5"]
    )
    assert result.exit_code == 0 and "neve.server" in result.output, result.output
    # `logs --events -f` as a user runs it: prints the tail, then what happens next
    follower = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "neve.cli.main",
            "--home",
            str(session.account_home),
            "services",
            "logs",
            f"ml.reg.{SVC}",
            "--events",
            "--follow",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        seen = _read_until(follower, "RUNNING", 60)  # the tail: the service came up
        session.sql(f"ALTER SERVICE ml.reg.{SVC} SET COMMENT = 'followed'").collect()
        seen += _read_until(follower, "comment 'followed'", 60)  # appended while following
    finally:
        follower.terminate()
        follower.wait(10)
    assert "RUNNING" in seen and "altered by ADMIN: comment 'followed'" in seen, seen
    result = runner.invoke(services_cli, ["describe", f"ml.reg.{SVC}"])
    assert result.exit_code == 0 and "RUNNING" in result.output, result.output
    result = runner.invoke(services_cli, ["describe", "ml.reg.nope"])
    assert result.exit_code == 1 and "NOPE does not exist" in result.output, result.output
    result = runner.invoke(services_cli, ["scale", f"ml.reg.{SVC}", "--min", "3", "--max", "2"])
    assert result.exit_code == 1 and "MIN_INSTANCES (3) is greater" in result.output

    # Stopping the control plane does not stop the service; the next daemon reattaches to the
    # live instance and restarts the one that died meanwhile.
    instances = handle.describe()["instances"]
    pids = [int(i["pid"]) for i in instances]
    assert daemon.stop(session.account_home)
    assert all(alive(p) for p in pids)
    os.killpg(pids[1], signal.SIGKILL)
    again = mv.run(test, function_name="predict", service_name=SVC)  # starts a new daemon
    pd.testing.assert_frame_equal(again, local)

    def recovered():
        rows = handle.describe()["instances"]
        return rows if all(r["status"] == "READY" for r in rows) else None

    deadline = time.monotonic() + 90
    while (after := recovered()) is None and time.monotonic() < deadline:
        time.sleep(0.3)
    assert after is not None, handle.describe()["instances"]
    assert int(after[0]["pid"]) == pids[0] and after[0]["restart_count"] == 0  # reattached
    assert int(after[1]["pid"]) != pids[1] and after[1]["restart_count"] == 1  # restarted
    pids = [int(i["pid"]) for i in after]

    tree = set().union(*(process_tree(p) for p in pids))
    mv.delete_service(SVC)
    deadline = time.monotonic() + 10
    while any(alive(p) for p in tree) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(p) for p in tree)
    assert mv.list_services().empty


def _read_until(proc: subprocess.Popen, text: str, timeout_s: float) -> str:
    """Lines of ``proc``'s output until one holds ``text`` (a reader thread: no blocking)."""
    found: list[str] = []
    done = threading.Event()

    def read() -> None:
        for line in proc.stdout:
            found.append(line)
            if text in line:
                done.set()
                return

    threading.Thread(target=read, daemon=True).start()
    assert done.wait(timeout_s), f"no {text!r} in {timeout_s} s: {''.join(found)[-2000:]}"
    return "".join(found)
