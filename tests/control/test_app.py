"""A running control plane: its files, its lock, and its HTTP surface over real HTTP
(authentication, JSON errors for every kind of bad request, health, OpenAPI, context headers)."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import pytest

import neve
from neve.control import daemon

pytestmark = pytest.mark.e2e  # starts processes: see the Development section


@pytest.fixture(scope="module")
def api(shared_control_plane):
    with httpx.Client(base_url=shared_control_plane.url, timeout=30, trust_env=False) as client:
        yield client


def auth(session) -> dict[str, str]:
    return {"Authorization": f"Bearer {session.token}"}


def test_health_needs_no_token(api, shared_control_plane) -> None:
    body = api.get("/api/v1/health").json()
    info = daemon.read_info(shared_control_plane.account_home)
    assert body["status"] == "ok"
    assert body["pid"] == info["pid"] and body["daemon_id"] == info["daemon_id"]
    assert body["account"] == "local" and body["uptime_s"] >= 0


@pytest.mark.parametrize(
    "headers, fragment",
    [
        ({}, "missing Authorization header"),
        ({"Authorization": "Bearer not-a-token"}, "invalid token"),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, "unsupported Authorization header"),
    ],
)
def test_unauthenticated_calls_get_401_json(api, headers, fragment) -> None:
    resp = api.post("/api/v1/sql", json={"sql": "SHOW DATABASES"}, headers=headers)
    assert resp.status_code == 401
    assert resp.headers["www-authenticate"] == "Bearer"
    body = resp.json()
    assert body["code"] == "UNAUTHENTICATED" and fragment in body["message"]


def test_unknown_routes_are_401_before_login_and_404_after(api, shared_control_plane) -> None:
    assert api.get("/api/v1/nothing-here").status_code == 401  # do not reveal the routes
    resp = api.get("/api/v1/nothing-here", headers=auth(shared_control_plane))
    assert resp.status_code == 404
    assert resp.json() == {
        "code": "NOT_FOUND",
        "message": "no such API route: GET /api/v1/nothing-here",
        "type": "NeveError",
    }
    resp = api.delete("/api/v1/sql", headers=auth(shared_control_plane))
    assert resp.status_code == 405 and resp.json()["code"] == "METHOD_NOT_ALLOWED"


def test_bad_json_and_bad_context_headers_get_400_json(api, shared_control_plane) -> None:
    headers = {**auth(shared_control_plane), "Content-Type": "application/json"}
    resp = api.post("/api/v1/sql", content=b'{"sql": "SHOW', headers=headers)
    assert resp.status_code == 400
    assert resp.json()["code"] == "INVALID_ARGUMENT"
    assert "not valid JSON" in resp.json()["message"]
    resp = api.post(
        "/api/v1/sql",
        json={"sql": "SHOW DATABASES"},
        headers={**auth(shared_control_plane), "X-Neve-Database": "no way"},
    )
    assert resp.status_code == 400
    assert "invalid database name" in resp.json()["message"]


def test_context_headers_set_the_server_side_context(api, shared_control_plane) -> None:
    shared_control_plane.sql("CREATE DATABASE IF NOT EXISTS hdr_db")
    resp = api.get(
        "/api/v1/session",
        headers={
            **auth(shared_control_plane),
            "X-Neve-Role": "sysadmin",
            "X-Neve-Database": "hdr_db",
            "X-Neve-Schema": '"Mixed Case"',
            "X-Request-Id": "req-42",
        },
    )
    assert resp.status_code == 200
    me = resp.json()
    assert (me["user"], me["role"], me["database"], me["schema"]) == (
        "ADMIN",
        "SYSADMIN",
        "HDR_DB",
        "Mixed Case",
    )
    assert me["request_id"] == "req-42"


def test_openapi_document_describes_the_rest_api(api) -> None:
    resp = api.get("/api/v1/openapi.json")  # public: no token
    assert resp.status_code == 200
    doc = resp.json()
    assert doc["openapi"].startswith("3.") and doc["info"]["title"] == "neve control plane"
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    paths = doc["paths"]
    assert "/api/v1/health" not in paths and "/api/v1/openapi.json" not in paths
    sql = paths["/api/v1/sql"]["post"]
    assert sql["summary"] and sql["operationId"] == "run_sql_post"
    login = paths["/api/v1/login"]["post"]
    assert "public" in login["summary"]
    versions = paths["/api/v1/models/{db}/{schema}/{model}/versions"]["get"]
    assert [p["name"] for p in versions["parameters"]] == ["db", "schema", "model"]


def test_second_daemon_for_an_account_exits_at_once(shared_control_plane) -> None:
    home = shared_control_plane.account_home
    before = daemon.read_info(home)
    proc = subprocess.run(
        [sys.executable, "-m", "neve.control", "--home", str(home)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == daemon.ALREADY_RUNNING
    assert f"already serves {home}" in proc.stderr
    assert daemon.read_info(home) == before  # the running daemon's files are untouched
    assert daemon.healthy(before)


def test_control_files(shared_control_plane) -> None:
    home = shared_control_plane.account_home
    info = json.loads((home / daemon.INFO_FILE).read_text())
    assert set(info) >= {"pid", "url", "port", "version", "started_on", "daemon_id"}
    assert info["url"] == f"http://127.0.0.1:{info['port']}" == shared_control_plane.url
    assert info["version"] == neve.__version__
    token_file = home / daemon.TOKEN_FILE
    assert token_file.stat().st_mode & 0o777 == 0o600
    assert token_file.read_text().strip() == shared_control_plane.token
    assert "serving" in (home / "logs" / "control.log").read_text()
