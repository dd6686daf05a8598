"""Shared pieces of the gateway tests: a model, a threaded uvicorn server, catalog rows, counters.

The HTTP app served here is the control plane's own (``neve.control.app.create_app``: REST API,
SQL endpoint, ingress gateway behind ``IngressDispatch``) on the uvicorn options the daemon
uses (``neve.gateway.limits.uvicorn_options``). Model classes defined here travel by value inside
the pickle, so the inference server subprocess loads them without importing the tests.
"""

from __future__ import annotations

import socket
import threading
import time
import urllib.request
from typing import Any

import numpy as np
import pandas as pd
import uvicorn

import neve
from neve.catalog import models as m
from neve.control.app import create_app
from neve.gateway.app import Gateway, IngressDispatch
from neve.gateway.limits import uvicorn_options

INGRESS_HOST = "k3x9q2-local.neve.localhost"


class Scorer(neve.CustomModel):
    """``predict``: score = 2x + 1; ``encode``: a tiny 'embedding' of a sentence; ``slow``."""

    @neve.inference_api
    def predict(self, X: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame({"score": X["x"].to_numpy() * 2.0 + 1.0})

    @neve.inference_api
    def encode(self, X: pd.DataFrame) -> pd.DataFrame:
        vectors = [
            np.array([len(s), s.count(" ") + 1, sum(map(ord, s)) % 97], dtype=np.float32)
            for s in X["text"]
        ]
        return pd.DataFrame({"embedding": vectors})

    @neve.inference_api
    def slow(self, X: pd.DataFrame) -> pd.DataFrame:
        time.sleep(0.3)
        return pd.DataFrame({"y": X["x"].to_numpy()})


SAMPLE = pd.DataFrame({"x": [0.5, 1.5], "text": ["a sentence", "another one"]})
SIGNATURES_FROM = {
    "predict": SAMPLE[["x"]],
    "encode": SAMPLE[["text"]],
    "slow": SAMPLE[["x"]],
}


def save_scorer(path) -> dict:
    """Save ``Scorer`` with one signature per method; return them as stored in the catalog."""
    from neve.models import save_model
    from neve.models.signature import infer_signature

    model = Scorer()
    signatures = {
        name: infer_signature(sample, getattr(model, name)(sample))
        for name, sample in SIGNATURES_FROM.items()
    }
    save_model(model, path, signatures=signatures)
    return {name: sig.to_dict() for name, sig in signatures.items()}


class GatewayLifespan:
    """The control plane app, closing the gateway's connection pool when the server stops."""

    def __init__(self, app: Any, gateway: Gateway) -> None:
        self.app = app
        self.gateway = gateway

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.gateway.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return


def control_app(account: Any, gateway: Gateway) -> GatewayLifespan:
    """The real control plane app (REST API + SQL + ingress) with ``gateway`` as its ingress.

    The tests' services are catalog rows pointing at servers the tests started, so the gateway
    here resolves them with ``CatalogIngressTargets`` instead of the ServiceManager (which would
    try to start processes for them).
    """
    app = create_app(account, gateway=gateway)
    assert [m for m in app.user_middleware if m.cls is IngressDispatch], "it carries the ingress"
    return GatewayLifespan(app, gateway)


class ThreadServer:
    """uvicorn on a free loopback port, in a thread of the test process."""

    def __init__(self, app: Any, **options: Any) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", access_log=False, **options)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    def start(self) -> ThreadServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("test HTTP server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)
        self.sock.close()


def serve_control(account: Any, gateway: Gateway, **extra_options: Any) -> ThreadServer:
    options = uvicorn_options(account.settings) | extra_options
    return ThreadServer(control_app(account, gateway), **options).start()


def free_port() -> int:
    """A port nothing listens on (for an instance row that must refuse connections)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_requests(url: str) -> float:
    """Requests an inference server answered on its method routes, from its /metrics."""
    text = urllib.request.urlopen(f"{url}/metrics", timeout=5).read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("neve_server_requests_total{")
    )


def add_service(
    account: Any,
    name: str,
    instances: list[tuple[str, int]],
    *,
    signatures: dict | None,
    status: str = "RUNNING",
    ingress_host: str | None = None,
    ingress_enabled: bool = True,
    owner_role: str = "SYSADMIN",
) -> int:
    """A service row in ML.APPS (created if needed) with READY instance rows; returns its id."""
    from sqlalchemy import select

    with account.catalog.transaction() as s:
        db = s.scalar(select(m.Database).where(m.Database.name == "ML"))
        if db is None:
            db = m.Database(name="ML", owner_role="SYSADMIN")
            s.add(db)
            s.flush()
            s.add(m.Schema(database_id=db.id, name="APPS", owner_role="SYSADMIN"))
            s.add(
                m.ComputePool(
                    name="CPU_POOL",
                    instance_family="CPU_X64_S",
                    min_nodes=1,
                    max_nodes=2,
                    owner_role="SYSADMIN",
                )
            )
            s.flush()
        sch = s.scalar(select(m.Schema).where(m.Schema.database_id == db.id))
        pool = s.scalar(select(m.ComputePool))
        version_id = None
        if signatures is not None:
            model = m.Model(schema_id=sch.id, name=f"{name}_MODEL", owner_role=owner_role)
            s.add(model)
            s.flush()
            version = m.ModelVersion(
                model_id=model.id,
                name="V1",
                model_type="custom",
                artifact_uri="(test)",
                artifact_sha256="0" * 64,
                python_version="3.11",
                signatures=signatures,
            )
            s.add(version)
            s.flush()
            version_id = version.id
        svc = m.Service(
            schema_id=sch.id,
            name=name,
            pool_id=pool.id,
            model_version_id=version_id,
            status=status,
            ingress_enabled=ingress_enabled,
            ingress_host=ingress_host,
            owner_role=owner_role,
        )
        s.add(svc)
        s.flush()
        for index, (host, port) in enumerate(instances):
            s.add(
                m.ServiceInstance(
                    service_id=svc.id, instance_index=index, status="READY", host=host, port=port
                )
            )
        return svc.id


def set_instances(account: Any, service_id: int, instances: list[tuple[str, int]], status: str):
    """Replace a service's instance rows and status (what a resume does to the catalog)."""
    from sqlalchemy import delete

    with account.catalog.transaction() as s:
        s.execute(delete(m.ServiceInstance).where(m.ServiceInstance.service_id == service_id))
        for index, (host, port) in enumerate(instances):
            s.add(
                m.ServiceInstance(
                    service_id=service_id,
                    instance_index=index,
                    status="READY",
                    host=host,
                    port=port,
                )
            )
        s.get(m.Service, service_id).status = status
