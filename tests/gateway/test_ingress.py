"""The ingress gateway end to end: real servers behind it, real tokens, real HTTP."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import threading
import time

import httpx
import pyarrow as pa
import pytest
from gateway_harness import INGRESS_HOST, add_service, free_port, server_requests, set_instances

from neve.catalog import models as m
from neve.context import admin_context
from neve.security import keypair

pytestmark = pytest.mark.e2e  # starts processes: see the Development section


def test_seed_style_client_gets_a_token_and_calls_encode(base_url, service, callers, http):
    """Obtain a token with a password, POST rows to <ingress>/encode, get vectors back."""
    login = http.post("/api/v1/login", json={"user": "caller", "password": "caller password"})
    assert login.status_code == 200, login.text
    token = login.json()["token"]
    resp = httpx.post(
        f"{base_url}/svc/ml.apps.svc/encode",
        json={"data": [[0, "a sentence"], [1, "two words here"]]},
        headers={"Authorization": f"Bearer {token}"},
        trust_env=False,
    )
    assert resp.status_code == 200, resp.text
    rows = resp.json()["data"]
    assert [r[0] for r in rows] == [0, 1]
    assert rows[0][1]["embedding"] == [10.0, 2.0, float(sum(map(ord, "a sentence")) % 97)]
    assert rows[1][1]["embedding"][:2] == [14.0, 3.0]


def test_host_form_path_forms_and_header_forms(gw_account, service, callers, http):
    caller = callers["caller"]
    body = {"data": [[0, 1.0], [1, 2.5]]}
    expected = [[0, {"score": 3.0}], [1, {"score": 6.0}]]
    token = caller.token
    cases = [
        ("/predict", {"Host": INGRESS_HOST + ":443", "Authorization": f"Bearer {token}"}),
        ("/svc/ML.APPS.SVC/predict", {"Authorization": f'Snowflake Token="{token}"'}),
        (  # bare service name resolved in the caller's current database and schema
            "/svc/svc/predict",
            {"Authorization": f"Bearer {token}", "X-Neve-Database": "ml", "X-Neve-Schema": "apps"},
        ),
        ("/svc/apps.svc/predict", {"Authorization": f"Bearer {token}", "X-Neve-Database": "ml"}),
    ]
    for path, headers in cases:
        resp = http.post(path, json=body, headers=headers)
        assert resp.status_code == 200, (path, resp.text)
        assert resp.json()["data"] == expected
    # the call was recorded for auto-suspend (written off the request path)
    with gw_account.catalog.transaction() as s:
        deadline = time.monotonic() + 5
        while s.get(m.Service, service).last_request_on is None and time.monotonic() < deadline:
            time.sleep(0.05)
            s.expire_all()
        assert s.get(m.Service, service).last_request_on is not None


def test_arrow_columns_pass_through_the_ingress(service, callers, http):
    """An HTTP client may send an Arrow IPC stream of columns and get one back."""
    table = pa.table({"X": [1.0, 2.5]})  # upper-case as SQL sends it
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    arrow = "application/vnd.apache.arrow.stream"
    resp = http.post(
        "/svc/ml.apps.svc/predict",
        content=sink.getvalue().to_pybytes(),
        headers={"Authorization": f"Bearer {callers['caller'].token}", "Content-Type": arrow},
    )
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == arrow
    assert pa.ipc.open_stream(resp.content).read_all().to_pydict() == {"score": [3.0, 6.0]}


def test_keypair_jwt_and_programmatic_access_token(gw_account, service, callers, http):
    sec = gw_account.security
    private = keypair.generate_private_key_pem()
    admin = admin_context()
    sec.create_user(admin, "robot", rsa_public_key=keypair.public_key_of(private))
    sec.grant_role(admin, "caller_role", to_user="robot")
    jwt_token = keypair.make_jwt(private, account="local", user="robot")
    headers = {"Authorization": f"Bearer {jwt_token}", "X-Neve-Role": "caller_role"}
    who = http.post("/api/v1/keypair/verify", headers=headers)
    assert who.json()["user"] == "ROBOT" and who.json()["role"] == "CALLER_ROLE"
    resp = http.post("/svc/ml.apps.svc/predict", json={"data": [[0, 1.0]]}, headers=headers)
    assert resp.status_code == 200, resp.text

    pat = http.post("/api/v1/tokens", json={"name": "ci", "days_to_expiry": 1}, headers=headers)
    assert pat.status_code == 201, pat.text
    pat_headers = {"Authorization": f"Bearer {pat.json()['token']}", "X-Neve-Role": "caller_role"}
    listed = http.get("/api/v1/tokens", headers=pat_headers).json()
    assert [(t["name"], t["status"]) for t in listed] == [("CI", "ACTIVE")]
    assert http.post("/svc/ml.apps.svc/predict", json={"data": [[0, 1.0]]}, headers=pat_headers)
    assert http.delete("/api/v1/tokens/ci", headers=headers).status_code == 200
    denied = http.post("/svc/ml.apps.svc/predict", json={"data": [[0, 1.0]]}, headers=pat_headers)
    assert denied.status_code == 401 and "revoked" in denied.json()["message"]


def test_request_ids_are_kept_or_made_and_logged(service, callers, http, caplog):
    caplog.set_level(logging.INFO, logger="neve.gateway")
    headers = callers["caller"].headers
    given = http.post(
        "/svc/ml.apps.svc/predict",
        json={"data": [[0, 1.0]]},
        headers={**headers, "X-Request-Id": "trace-abc-123"},
    )
    made = http.post("/svc/ml.apps.svc/predict", json={"data": [[0, 1.0]]}, headers=headers)
    refused = http.post("/svc/ml.apps.svc/predict", json={"data": [[0, 1.0]]})
    assert given.headers["x-request-id"] == "trace-abc-123"
    assert len(made.headers["x-request-id"]) == 32
    assert refused.status_code == 401 and refused.headers["x-request-id"]
    ids = ["trace-abc-123", made.headers["x-request-id"], refused.headers["x-request-id"]]
    deadline = time.monotonic() + 5  # the line is written once the answer has been sent
    while not all(f"request_id={rid}" in caplog.text for rid in ids):
        assert time.monotonic() < deadline, caplog.text
        time.sleep(0.05)
    assert "service=ML.APPS.SVC" in caplog.text and "status=200" in caplog.text


def test_least_outstanding_spreads_load_over_both_instances(service, backends, callers, http):
    before = [server_requests(b.url) for b in backends]
    for i in range(12):
        resp = http.post(
            "/svc/ml.apps.svc/predict",
            json={"data": [[0, float(i)]]},
            headers=callers["caller"].headers,
        )
        assert resp.status_code == 200
    served = [server_requests(b.url) - x for b, x in zip(backends, before, strict=True)]
    assert sum(served) == 12
    assert min(served) >= 4, served  # idle instances take turns


def test_concurrent_requests_go_to_the_instance_with_fewer_in_flight(
    gateway, service, backends, callers, base_url
):
    """While one slow call occupies an instance, the next calls go to the other one."""
    headers = callers["caller"].headers
    before = [server_requests(b.url) for b in backends]

    async def scenario() -> list[int]:
        async with httpx.AsyncClient(base_url=base_url, trust_env=False, timeout=30) as client:
            slow = asyncio.create_task(
                client.post("/svc/ml.apps.svc/slow", json={"data": [[0, 1.0]]}, headers=headers)
            )
            deadline = time.monotonic() + 5
            while not gateway.balancer.outstanding:  # the slow call is in flight on one instance
                assert time.monotonic() < deadline
                await asyncio.sleep(0.005)
            quick = [
                await client.post(
                    "/svc/ml.apps.svc/predict", json={"data": [[0, 1.0]]}, headers=headers
                )
                for _ in range(3)
            ]
            return [(await slow).status_code, *(r.status_code for r in quick)]

    assert asyncio.run(scenario()) == [200] * 4
    served = [server_requests(b.url) - x for b, x in zip(backends, before, strict=True)]
    assert sorted(served) == [1, 3], served  # slow on one, all quick calls on the other


def test_a_dead_instance_is_retried_on_another(gw_account, backends, signatures, callers, http):
    dead = ("127.0.0.1", free_port())
    add_service(
        gw_account, "FLAKY", [dead, (backends[0].host, backends[0].port)], signatures=signatures
    )
    gw_account.security.grant(admin_context(), "USAGE", "SERVICE", "ML.APPS.FLAKY", "caller_role")
    for _ in range(4):
        resp = http.post(
            "/svc/ml.apps.flaky/predict",
            json={"data": [[0, 2.0]]},
            headers=callers["caller"].headers,
        )
        assert resp.status_code == 200 and resp.json()["data"] == [[0, {"score": 5.0}]]
    # no instance reachable at all: 503 with Retry-After, after trying each
    add_service(gw_account, "GONE", [dead], signatures=signatures)
    resp = http.post(
        "/svc/ml.apps.gone/predict", json={"data": [[0, 2.0]]}, headers=callers["admin"].headers
    )
    assert resp.status_code == 503 and resp.headers["retry-after"]
    assert "could be reached" in resp.json()["message"]


def test_429_from_an_instance_passes_through_with_retry_after(service, callers, base_url):
    """Each instance queues at most 4 rows: a burst of slow calls overflows both."""
    headers = callers["caller"].headers

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=base_url, trust_env=False, timeout=30) as client:
            return await asyncio.gather(
                *(
                    client.post(
                        "/svc/ml.apps.svc/slow",
                        json={"data": [[i, 1.0] for i in range(3)]},
                        headers=headers,
                    )
                    for _ in range(8)
                )
            )

    responses = asyncio.run(burst())
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) <= {200, 429} and 200 in statuses and 429 in statuses, statuses
    for r in responses:
        if r.status_code == 429:
            assert int(r.headers["retry-after"]) >= 1
            assert r.headers["x-request-id"]


def test_a_full_service_is_refused_before_the_body_is_read(
    service, callers, base_url, gateway, backends
):
    """While every instance's last answer was 429 (queue full), the ingress refuses at once:
    a request whose body never comes still gets its 429 with Retry-After. Once an instance
    answers again, requests go through."""
    headers = callers["caller"].headers
    instances = [(b.host, b.port) for b in backends]
    port = int(base_url.rsplit(":", 1)[1])
    probe = (
        "POST /svc/ml.apps.svc/slow HTTP/1.1\r\nhost: 127.0.0.1\r\n"
        f"authorization: {headers['Authorization']}\r\ncontent-type: application/json\r\n"
        "content-length: 1000\r\n\r\n"  # promised, never sent
    ).encode()

    async def attempt(client: httpx.AsyncClient) -> bytes | None:
        body = {"data": [[i, 1.0] for i in range(3)]}
        burst = [
            asyncio.create_task(client.post("/svc/ml.apps.svc/slow", json=body, headers=headers))
            for _ in range(8)
        ]
        head = None
        try:
            # both instances full: each queues 4 rows, a 3-row call computes for 0.3 s
            deadline = time.monotonic() + 0.25
            while time.monotonic() < deadline:
                if gateway.router.shed_retry_after(instances, time.monotonic()) is not None:
                    break
                await asyncio.sleep(0.005)
            else:
                return None
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(probe)
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2.0)
            except TimeoutError:
                head = None  # waiting for the body: not refused early (or the queues moved)
            writer.close()
        finally:
            answers = await asyncio.gather(*burst)
        assert {r.status_code for r in answers} <= {200, 429}
        return head

    async def scenario() -> tuple[bytes | None, int]:
        async with httpx.AsyncClient(base_url=base_url, trust_env=False, timeout=30) as client:
            head = None
            for _ in range(3):  # the queues may move between the check and the probe
                head = await attempt(client)
                if head is not None:
                    break
            after = await client.post(
                "/svc/ml.apps.svc/slow", json={"data": [[0, 1.0]]}, headers=headers
            )
            return head, after.status_code

    head, after = asyncio.run(scenario())
    assert head is not None, "the ingress waited for the body of a request to a full service"
    lines = head.decode("latin-1").lower().split("\r\n")
    assert lines[0].startswith("http/1.1 429"), lines[0]
    assert any(line.startswith("retry-after: ") and int(line[13:]) >= 1 for line in lines)
    assert after == 200  # the instances answered since: nothing stays refused


def test_a_suspended_service_is_woken_and_the_request_held(
    gw_account, backends, signatures, callers, http
):
    sid = add_service(gw_account, "SLEEPY", [], signatures=signatures, status="SUSPENDED")
    gw_account.security.grant(admin_context(), "USAGE", "SERVICE", "ML.APPS.SLEEPY", "caller_role")

    def resume_later() -> None:  # what the ServiceManager's resume does to the catalog
        time.sleep(0.6)
        set_instances(gw_account, sid, [(backends[1].host, backends[1].port)], "RUNNING")

    threading.Thread(target=resume_later, daemon=True).start()
    started = time.monotonic()
    resp = http.post(
        "/svc/ml.apps.sleepy/predict", json={"data": [[0, 1.0]]}, headers=callers["caller"].headers
    )
    assert resp.status_code == 200, resp.text
    assert time.monotonic() - started >= 0.5  # it was held, not refused

    # one that never becomes ready: bounded wait (ingress_wake_timeout_secs=2), then 503
    add_service(gw_account, "COMATOSE", [], signatures=signatures, status="SUSPENDED")
    started = time.monotonic()
    resp = http.post(
        "/svc/ml.apps.comatose/predict", json={"data": [[0, 1.0]]}, headers=callers["admin"].headers
    )
    assert resp.status_code == 503 and resp.headers["retry-after"]
    assert 1.8 < time.monotonic() - started < 8
    assert "not ready after 2 s" in resp.json()["message"]


def test_methods_routes_and_openapi(service, callers, http, signatures):
    headers = callers["caller"].headers
    unknown = http.post("/svc/ml.apps.svc/nope", json={"data": []}, headers=headers)
    assert unknown.status_code == 404
    assert "no method 'nope'; methods: encode, predict, slow" in unknown.json()["message"]
    dashed = http.post("/svc/ml.apps.svc/PREDICT", json={"data": [[0, 0.0]]}, headers=headers)
    assert dashed.status_code == 200

    doc = http.get("/svc/ml.apps.svc/openapi.json", headers=headers)
    assert doc.status_code == 200
    spec = doc.json()
    assert spec["openapi"] == "3.1.0" and set(spec["paths"]) == {"/encode", "/predict", "/slow"}
    encode = spec["paths"]["/encode"]["post"]
    row = encode["requestBody"]["content"]["application/json"]["schema"]["properties"]["data"]
    assert row["items"]["prefixItems"][1]["title"] == "text"
    out = encode["responses"]["200"]["content"]["application/json"]["schema"]
    embedding = out["properties"]["data"]["items"]["prefixItems"][1]["properties"]["embedding"]
    assert embedding["minItems"] == embedding["maxItems"] == 3
    arrow = "application/vnd.apache.arrow.stream"
    assert (
        arrow in encode["requestBody"]["content"] and arrow in encode["responses"]["200"]["content"]
    )
    assert spec["servers"][0]["url"].endswith("/svc/ML.APPS.SVC")
    host_doc = http.get("/openapi.json", headers={**headers, "Host": INGRESS_HOST})
    assert host_doc.json()["servers"][0]["url"] == f"http://{INGRESS_HOST}"
    assert http.get("/svc/ml.apps.svc/openapi.json").status_code == 401


def test_services_without_ingress_are_not_reachable(
    gw_account, backends, signatures, callers, http
):
    add_service(
        gw_account,
        "PRIVATE",
        [(backends[0].host, backends[0].port)],
        signatures=signatures,
        ingress_enabled=False,
    )
    resp = http.post(
        "/svc/ml.apps.private/predict", json={"data": [[0, 1.0]]}, headers=callers["admin"].headers
    )
    assert resp.status_code == 404 and "ingress_enabled=False" in resp.json()["message"]
    unknown_host = http.post(
        "/predict",
        json={"data": []},
        headers={**callers["admin"].headers, "Host": "zz-local.neve.localhost"},
    )
    assert unknown_host.status_code == 404


def test_tls_when_a_certificate_is_configured(gw_account, gateway, service, callers, tmp_path):
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    from gateway_harness import ThreadServer, control_app

    from neve.gateway.limits import uvicorn_options

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    tls = gw_account.settings.tls
    tls.certfile, tls.keyfile = str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")
    try:
        options = uvicorn_options(gw_account.settings)
    finally:
        tls.certfile = tls.keyfile = None
    assert options["ssl_certfile"].endswith("cert.pem")
    from neve.dataplane.targets import CatalogIngressTargets
    from neve.gateway.access import LocalAccess
    from neve.gateway.app import Gateway

    targets = CatalogIngressTargets(gw_account.catalog)
    tls_gateway = Gateway(
        settings=gw_account.settings,
        access=LocalAccess(gw_account.catalog, gw_account.security, targets),
    )
    server = ThreadServer(control_app(gw_account, tls_gateway), **options).start()
    try:
        url = f"https://127.0.0.1:{server.port}/svc/ml.apps.svc/predict"
        resp = httpx.post(
            url,
            json={"data": [[0, 1.0]]},
            headers=callers["caller"].headers,
            verify=str(tmp_path / "cert.pem"),
            trust_env=False,
        )
        assert resp.status_code == 200 and resp.json()["data"] == [[0, {"score": 3.0}]]
        with pytest.raises(httpx.HTTPError):  # plain HTTP is not served on the TLS port
            httpx.post(url.replace("https", "http"), json={}, trust_env=False, timeout=5)
    finally:
        server.stop()
