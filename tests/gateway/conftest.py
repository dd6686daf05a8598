"""One account, two real inference servers and one HTTP server for all gateway tests.

Expensive pieces are session-scoped: two ``python -m neve.server`` processes serving the
``Scorer`` model (the service's two instances) and the control app (security routes + gateway)
on uvicorn with the daemon's options and deliberately small limits so that limit tests are
fast.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from gateway_harness import (
    INGRESS_HOST,
    ThreadServer,
    add_service,
    save_scorer,
    serve_control,
)

from neve.config import load_settings
from neve.context import admin_context

LIMITS = {
    "http_header_timeout_secs": 1.0,
    "http_keep_alive_secs": 2,
    "http_max_header_bytes": 8192,
    "ingress_max_body_bytes": 65536,
    "ingress_body_timeout_secs": 1.0,
    "ingress_wake_timeout_secs": 2,
}


@pytest.fixture(scope="session")
def gw_account(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    from neve.control.account import Account

    home = tmp_path_factory.mktemp("gateway-home")
    (home / "settings.toml").write_text("".join(f"{k} = {v!r}\n" for k, v in LIMITS.items()))
    account = Account(load_settings(home))
    account.security.bootstrap()
    yield account
    account.close()


@pytest.fixture(scope="session")
def scorer_dir(tmp_path_factory: pytest.TempPathFactory):
    return tmp_path_factory.mktemp("scorer") / "model"


@pytest.fixture(scope="session")
def signatures(scorer_dir) -> dict:
    """The Scorer model saved to ``scorer_dir``; its signatures as the catalog stores them."""
    return save_scorer(scorer_dir)


@pytest.fixture(scope="session")
def backends(scorer_dir, signatures) -> Iterator[list]:
    """Two inference servers (one worker each): the service's instances."""
    from neve.server.launch import start_server

    servers = []
    try:
        for _ in range(2):
            servers.append(start_server(scorer_dir, num_workers=1, max_queue_rows=4))
        for server in servers:
            server.wait_ready(90)
        yield servers
    finally:
        for server in servers:
            server.stop()


@pytest.fixture(scope="session")
def gateway(gw_account):
    from neve.dataplane.targets import CatalogIngressTargets
    from neve.gateway.access import LocalAccess
    from neve.gateway.app import Gateway

    # The catalog-backed targets: the services here are rows this test made, with no
    # ServiceManager behind them to start or resume processes.
    targets = CatalogIngressTargets(gw_account.catalog, poll_interval_s=0.05)
    access = LocalAccess(gw_account.catalog, gw_account.security, targets)
    return Gateway(settings=gw_account.settings, access=access)


@pytest.fixture(scope="session")
def control(gw_account, gateway) -> Iterator[ThreadServer]:
    server = serve_control(gw_account, gateway)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def base_url(control) -> str:
    return f"http://127.0.0.1:{control.port}"


@pytest.fixture(scope="session")
def service(gw_account, backends, signatures) -> int:
    """ML.APPS.SVC: ingress on, two ready instances, owned by SYSADMIN."""
    return add_service(
        gw_account,
        "SVC",
        [(b.host, b.port) for b in backends],
        signatures=signatures,
        ingress_host=INGRESS_HOST,
    )


@dataclass
class Caller:
    user: str
    role: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@pytest.fixture(scope="session")
def callers(gw_account, service) -> dict[str, Caller]:
    """admin; caller (USAGE on db, schema, service); outsider (USAGE on db and schema only)."""
    sec = gw_account.security
    admin = admin_context()
    out = {"admin": Caller("ADMIN", "ACCOUNTADMIN", sec.local_admin_token())}
    for name, usage_on_service in (("caller", True), ("outsider", False)):
        role = f"{name}_role"
        sec.create_role(admin, role)
        sec.create_user(admin, name, password=f"{name} password", default_role=role)
        sec.grant_role(admin, role, to_user=name)
        sec.grant(admin, "USAGE", "DATABASE", "ML", role)
        sec.grant(admin, "USAGE", "SCHEMA", "ML.APPS", role)
        if usage_on_service:
            sec.grant(admin, "USAGE", "SERVICE", "ML.APPS.SVC", role)
        out[name] = Caller(name.upper(), role.upper(), sec.login(name, f"{name} password"))
    return out


@pytest.fixture
def http(base_url) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, trust_env=False, timeout=30) as client:
        yield client


@pytest.fixture
def admitted(backends):
    """``admitted()``: requests the two instances have answered so far (from /metrics)."""
    from gateway_harness import server_requests

    return lambda: sum(server_requests(b.url) for b in backends)
