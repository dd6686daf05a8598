"""The attack list: each is rejected with the right status and no call reaches an instance.

"Reached an instance" is measured on the instances themselves: the sum of
``neve_server_requests_total`` over both inference servers' /metrics, before and after.
"""

from __future__ import annotations

import socket
import time
from datetime import UTC, datetime, timedelta

import jwt
import pytest
from sqlalchemy import select

from neve.catalog import models as m
from neve.context import RequestContext, admin_context
from neve.security import keypair
from neve.security.tokens import token_sha256

pytestmark = pytest.mark.e2e  # starts processes: see the Development section

BODY = {"data": [[0, 1.0]]}


@pytest.fixture
def nothing_admitted(admitted):
    """Asserts, after the test, that no request reached either instance."""
    before = admitted()
    yield
    assert admitted() == before, "a rejected request reached a service instance"


def raw_http(port: int, payload: bytes, *, read_timeout: float = 10.0) -> tuple[bytes, float]:
    """Send raw bytes; return (what the server answered until it closed, seconds taken)."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=read_timeout) as sock:
        sock.sendall(payload)
        chunks = []
        try:
            while data := sock.recv(65536):
                chunks.append(data)
        except (TimeoutError, ConnectionResetError):
            pass
    return b"".join(chunks), time.monotonic() - started


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0


# -- authentication ---------------------------------------------------------------------------


@pytest.mark.usefixtures("service", "nothing_admitted")
def test_no_token_and_garbage_tokens_are_401(http):
    for headers in [
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Basic YWRtaW46YWRtaW4="},
        {"Authorization": "Bearer nvs_guessed-token-value"},
        {"Authorization": 'Snowflake Token="nvp_guessed"'},
        {"Authorization": "Bearer " + "x" * 5000},
    ]:
        resp = http.post("/svc/ml.apps.svc/predict", json=BODY, headers=headers)
        assert resp.status_code == 401, (headers, resp.text)
        assert resp.headers["www-authenticate"].startswith("Bearer")
        assert resp.json()["code"] == "UNAUTHENTICATED"


@pytest.mark.usefixtures("service", "nothing_admitted")
def test_forged_and_expired_jwts_are_401(gw_account, callers, http):
    private = keypair.generate_private_key_pem()
    public = keypair.public_key_of(private)
    gw_account.security.create_user(admin_context(), "jwt_user", rsa_public_key=public)
    gw_account.security.grant_role(admin_context(), "caller_role", to_user="jwt_user")
    attacker_key = keypair.generate_private_key_pem()
    now = int(time.time())
    key = keypair.serialization.load_pem_private_key(private.encode(), password=None)
    tokens = {
        "signed by the attacker's key": keypair.make_jwt(
            attacker_key, account="local", user="jwt_user"
        ),
        "expired": jwt.encode(
            {
                "sub": "LOCAL.JWT_USER",
                "iss": "LOCAL.JWT_USER",
                "iat": now - 7200,
                "exp": now - 3600,
            },
            key,
            algorithm="RS256",
        ),
        "claims edited after signing": _swap_payload(
            keypair.make_jwt(private, account="local", user="jwt_user"), user="ADMIN"
        ),
    }
    for label, token in tokens.items():
        resp = http.post(
            "/svc/ml.apps.svc/predict",
            json=BODY,
            headers={"Authorization": f"Bearer {token}", "X-Neve-Role": "caller_role"},
        )
        assert resp.status_code == 401, (label, resp.text)
    # the genuine JWT works (so the rejections above are about the forgery, not the setup)
    good = keypair.make_jwt(private, account="local", user="jwt_user")
    ok = http.post(
        "/api/v1/keypair/verify",
        headers={"Authorization": f"Bearer {good}", "X-Neve-Role": "caller_role"},
    )
    assert ok.status_code == 200 and ok.json()["user"] == "JWT_USER"


def _swap_payload(token: str, *, user: str) -> str:
    import base64

    import orjson

    header, payload, signature = token.split(".")
    claims = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = f"LOCAL.{user}"
    forged = base64.urlsafe_b64encode(orjson.dumps(claims)).rstrip(b"=").decode()
    return f"{header}.{forged}.{signature}"


@pytest.mark.usefixtures("service", "nothing_admitted")
def test_revoked_and_expired_tokens_are_401(gw_account, http):
    login = http.post("/api/v1/login", json={"user": "caller", "password": "caller password"})
    session = login.json()["token"]
    headers = {"Authorization": f"Bearer {session}"}
    pat = http.post("/api/v1/tokens", json={"name": "attack_pat"}, headers=headers).json()["token"]
    assert http.delete("/api/v1/tokens/attack_pat", headers=headers).status_code == 200
    assert http.post("/api/v1/logout", headers=headers).status_code == 200
    for token in (session, pat):
        resp = http.post(
            "/svc/ml.apps.svc/predict", json=BODY, headers={"Authorization": f"Bearer {token}"}
        )
        assert resp.status_code == 401 and "revoked" in resp.json()["message"]

    fresh = http.post("/api/v1/login", json={"user": "caller", "password": "caller password"})
    token = fresh.json()["token"]
    with gw_account.catalog.transaction() as s:
        row = s.scalar(select(m.Token).where(m.Token.token_sha256 == token_sha256(token)))
        row.expires_on = datetime.now(UTC) - timedelta(seconds=1)
    resp = http.post(
        "/svc/ml.apps.svc/predict", json=BODY, headers={"Authorization": f"Bearer {token}"}
    )
    assert resp.status_code == 401 and "expired" in resp.json()["message"]


@pytest.mark.usefixtures("service", "nothing_admitted")
def test_wrong_password_login_is_401(http):
    resp = http.post("/api/v1/login", json={"user": "caller", "password": "not it"})
    assert resp.status_code == 401
    assert resp.json()["message"] == "incorrect user name or password"
    assert http.post("/api/v1/login", content=b"{not json").status_code == 400


# -- authorization ----------------------------------------------------------------------------


@pytest.mark.usefixtures("service", "nothing_admitted")
def test_a_valid_user_without_usage_is_403(callers, http):
    resp = http.post("/svc/ml.apps.svc/predict", json=BODY, headers=callers["outsider"].headers)
    assert resp.status_code == 403
    assert resp.json()["message"] == (
        "insufficient privileges: role OUTSIDER_ROLE needs USAGE on SERVICE ML.APPS.SVC"
    )
    doc = http.get("/svc/ml.apps.svc/openapi.json", headers=callers["outsider"].headers)
    assert doc.status_code == 403


@pytest.mark.usefixtures("service", "nothing_admitted")
def test_role_escalation_attempts_are_refused(callers, http):
    outsider = callers["outsider"].headers
    # asking for a role one was not granted
    resp = http.post(
        "/svc/ml.apps.svc/predict", json=BODY, headers={**outsider, "X-Neve-Role": "ACCOUNTADMIN"}
    )
    assert resp.status_code == 401 and "not granted" in resp.json()["message"]
    # granting oneself a privilege one does not hold
    grant = {
        "privilege": "USAGE",
        "object_type": "SERVICE",
        "object_name": "ML.APPS.SVC",
        "to_role": "outsider_role",
    }
    resp = http.post("/api/v1/grants", json=grant, headers=outsider)
    assert resp.status_code == 403 and "cannot grant USAGE" in resp.json()["message"]
    # granting oneself a role one does not own, taking ownership, making users
    resp = http.post(
        "/api/v1/roles/sysadmin/grants", json={"to_user": "outsider"}, headers=outsider
    )
    assert resp.status_code == 403
    resp = http.post("/api/v1/grants", json=grant | {"privilege": "OWNERSHIP"}, headers=outsider)
    assert resp.status_code == 403
    resp = http.post("/api/v1/users", json={"name": "x", "password": "p" * 10}, headers=outsider)
    assert resp.status_code == 403
    # ... and the service is still refused
    resp = http.post("/svc/ml.apps.svc/predict", json=BODY, headers=outsider)
    assert resp.status_code == 403


# -- path traversal ---------------------------------------------------------------------------


@pytest.mark.usefixtures("service", "nothing_admitted")
def test_path_traversal_in_service_names_and_routes(control, callers):
    auth = f"Authorization: Bearer {callers['admin'].token}\r\n".encode()
    paths = {
        b"/svc/../api/v1/users": 400,
        b"/svc/..%2fapi/predict": 400,
        b"/svc/ml.apps.svc/../../metrics": 400,
        b"/svc/ml.apps.svc/%2e%2e/%2e%2e/metrics": 400,
        b"/svc/ml.apps.svc/..%2f..%2fready": 400,
        b"/svc/ml%2Fapps%2Fsvc/predict": 400,
        b"/svc/ml.apps.svc%00/predict": 400,
        b"/svc/.ml.apps.svc/predict": 400,
        b"/svc/ml..svc/predict": 400,
        b"/svc/ml.apps.svc/metrics": 404,  # the instance's internal routes are not exposed
        b"/svc/ml.apps.svc/ready": 404,
        b"/svc/ml.apps.svc/methods": 404,
        b"/svc/a.b.c.d/predict": 400,
    }
    for path, expected in paths.items():
        request = (
            b"POST " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n" + auth
            + b"Content-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
        )  # fmt: skip
        answer, _ = raw_http(control.port, request)
        assert status_of(answer) == expected, (path, answer[:300])


# -- oversized requests ---------------------------------------------------------------------


@pytest.mark.usefixtures("service", "nothing_admitted")
def test_oversized_headers_are_431(control, callers, http):
    # one big header (arrives whole: the gateway's own check, 8 KiB)
    resp = http.post(
        "/svc/ml.apps.svc/predict",
        json=BODY,
        headers={**callers["admin"].headers, "X-Padding": "a" * 9000},
    )
    assert resp.status_code == 431 and resp.json()["code"] == "HEADERS_TOO_LARGE"
    # many headers
    many = {f"X-H{i}": "v" for i in range(120)}
    resp = http.post(
        "/svc/ml.apps.svc/predict", json=BODY, headers={**callers["admin"].headers, **many}
    )
    assert resp.status_code == 431
    # headers each within the limits, together past http_max_header_bytes (8 KiB here)
    wide = {f"X-W{i}": "w" * 1000 for i in range(9)}
    resp = http.post(
        "/svc/ml.apps.svc/predict", json=BODY, headers={**callers["admin"].headers, **wide}
    )
    assert resp.status_code == 431 and resp.json()["code"] == "HEADERS_TOO_LARGE"
    # a header block that never ends: the HTTP protocol layer stops buffering it
    request = b"POST /svc/ml.apps.svc/predict HTTP/1.1\r\nHost: x\r\n" + b"X-Flood: " + b"a" * 20000
    answer, _ = raw_http(control.port, request)
    assert status_of(answer) == 431, answer[:200]


@pytest.mark.usefixtures("service", "nothing_admitted")
def test_oversized_bodies_are_413(control, callers, http):
    big = b'{"data": [[0, "' + b"a" * 70000 + b'"]]}'  # the limit here is 64 KiB
    resp = http.post(
        "/svc/ml.apps.svc/encode",
        content=big,
        headers={**callers["admin"].headers, "Content-Type": "application/json"},
    )
    assert resp.status_code == 413 and resp.json()["code"] == "PAYLOAD_TOO_LARGE"

    def chunks():  # no Content-Length: the size is only known while reading
        for _ in range(10):
            yield b"a" * 10000

    resp = http.post("/svc/ml.apps.svc/encode", content=chunks(), headers=callers["admin"].headers)
    assert resp.status_code == 413
    # an unauthenticated huge upload is refused before its body is read
    resp = http.post("/svc/ml.apps.svc/encode", content=big)
    assert resp.status_code == 401


# -- slow clients -------------------------------------------------------------------------------


@pytest.mark.usefixtures("service", "nothing_admitted")
def test_slowloris_headers_are_cut_off_with_408(control):
    """Partial headers, then silence: closed after http_header_timeout_secs (1 s here)."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", control.port), timeout=10) as sock:
        sock.sendall(b"POST /svc/ml.apps.svc/predict HTTP/1.1\r\nHost: x\r\n")
        time.sleep(0.5)
        sock.sendall(b"X-Slow: 1\r\n")  # trickling bytes does not extend the deadline
        answer = sock.recv(4096)
        closed = sock.recv(4096) == b""
    assert status_of(answer) == 408 and closed
    assert 0.9 < time.monotonic() - started < 4
    # a connection that sends nothing at all is closed too
    answer, took = raw_http(control.port, b"")
    assert took < 5


@pytest.mark.usefixtures("service", "nothing_admitted")
def test_slow_body_is_cut_off_with_408(control, callers):
    """Headers at once, body trickled: the body must arrive within 1 s here."""
    head = (
        b"POST /svc/ml.apps.svc/predict HTTP/1.1\r\nHost: x\r\n"
        + f"Authorization: Bearer {callers['admin'].token}\r\n".encode()
        + b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    )
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", control.port), timeout=10) as sock:
        sock.sendall(head + b'{"data": ')
        answer = b""
        for _ in range(20):
            try:
                sock.sendall(b" ")
            except OSError:
                break
            sock.settimeout(0.25)
            try:
                answer += sock.recv(4096)
            except TimeoutError:
                continue
            if answer:
                break
        sock.settimeout(5)
        while chunk := sock.recv(4096):  # the rest of the answer, then the server closes
            answer += chunk
    assert status_of(answer) == 408, answer[:200]
    assert b"REQUEST_TIMEOUT" in answer
    assert time.monotonic() - started < 5


@pytest.mark.usefixtures("service")
def test_revocations_apply_at_once_despite_the_gateways_cache(gw_account, http, admitted):
    """Token and grant look-ups are cached briefly; a revocation empties that cache."""
    sec, admin = gw_account.security, admin_context()
    sec.create_role(admin, "short_lived")
    sec.create_user(admin, "temp_user", default_role="short_lived")
    sec.grant_role(admin, "short_lived", to_user="temp_user")
    for kind, name in (("DATABASE", "ML"), ("SCHEMA", "ML.APPS"), ("SERVICE", "ML.APPS.SVC")):
        sec.grant(admin, "USAGE", kind, name, "short_lived")
    temp = RequestContext(user="TEMP_USER", role="SHORT_LIVED")
    pat = sec.create_token(temp, "temp_pat")["token"]
    headers = {"Authorization": f"Bearer {pat}"}
    for _ in range(2):  # the second call is answered from the cache
        assert http.post("/svc/ml.apps.svc/predict", json=BODY, headers=headers).status_code == 200

    before = admitted()
    sec.revoke(admin, "USAGE", "SERVICE", "ML.APPS.SVC", "short_lived")
    assert http.post("/svc/ml.apps.svc/predict", json=BODY, headers=headers).status_code == 403
    sec.grant(admin, "USAGE", "SERVICE", "ML.APPS.SVC", "short_lived")
    assert http.post("/svc/ml.apps.svc/predict", json=BODY, headers=headers).status_code == 200
    sec.revoke_token(temp, "temp_pat")
    assert http.post("/svc/ml.apps.svc/predict", json=BODY, headers=headers).status_code == 401
    assert admitted() == before + 1  # only the call made while USAGE was held again
