"""The console in process: the control plane app (``create_app``) over Starlette's test client,
with catalog rows for 100 services. Sign-in, cookies, CSRF, escaping, privileges, the worksheet,
the metrics arithmetic; the browser tests (test_console_browser.py) drive the same pages in
Chromium against a real service."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from console_rows import add_services
from starlette.testclient import TestClient

from neve.console import metrics_history as mh
from neve.context import admin_context
from neve.identifiers import QualifiedName

ADMIN_PASSWORD = "Admin-pass-word-1"
ANALYST_PASSWORD = "Analyst-pass-word-1"
HOSTILE = "<script>alert('x')</script> [/x] & \"q\""


@pytest.fixture(scope="module")
def account(tmp_path_factory) -> Iterator:
    from neve.control.account import Account

    home = tmp_path_factory.mktemp("console-home")
    acct = Account.open(str(home))
    acct.security.bootstrap(admin_password=ADMIN_PASSWORD)
    add_services(acct, 99)
    add_services(acct, 1, prefix="ODD", comment=HOSTILE)
    ctx = admin_context()
    for statement in (
        "CREATE ROLE analyst",
        f"CREATE USER ana PASSWORD = '{ANALYST_PASSWORD}' DEFAULT_ROLE = analyst",
        "GRANT ROLE analyst TO USER ana",
        "GRANT USAGE ON DATABASE ml TO ROLE analyst",
        "GRANT USAGE ON SCHEMA ml.apps TO ROLE analyst",
        "GRANT MONITOR ON SERVICE ml.apps.svc_001 TO ROLE analyst",
    ):
        acct.sql.execute(ctx, statement)
    yield acct
    acct.close()


def client_for(account) -> TestClient:
    from neve.control.app import create_app

    return TestClient(create_app(account), base_url="http://testserver")


def signed_in(account, user: str = "admin", password: str = ADMIN_PASSWORD) -> TestClient:
    client = client_for(account)
    resp = client.post(
        "/console/login", data={"user": user, "password": password}, follow_redirects=False
    )
    assert resp.status_code == 303, resp.text
    return client


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf" value="([0-9a-f]+)"', html).group(1)


@pytest.fixture(scope="module")
def admin(account) -> TestClient:
    return signed_in(account)


def test_pages_need_a_session(account) -> None:
    client = client_for(account)
    resp = client.get("/console/services/ML/APPS/SVC_001?instance=0", follow_redirects=False)
    assert resp.status_code == 303
    assert resp.headers["location"] == (
        "/console/login?next=%2Fconsole%2Fservices%2FML%2FAPPS%2FSVC_001%3Finstance%3D0"
    )
    logs = client.get("/console/services/ML/APPS/SVC_001/logs?offset=0")
    assert logs.status_code == 401 and logs.json()["code"] == "UNAUTHENTICATED"
    forged = client.get("/console", cookies={"neve_console": "nvs_forged"}, follow_redirects=False)
    assert forged.status_code == 303 and "/console/login" in forged.headers["location"]
    # the REST API is untouched: still a 401 JSON without a bearer token
    assert client.get("/api/v1/services").status_code == 401
    lost = client.get("/console/no/such/page")
    assert lost.status_code == 404 and "no such console page" in lost.text


def test_password_sign_in_sets_a_strict_http_only_cookie(account) -> None:
    client = client_for(account)
    bad = client.post("/console/login", data={"user": "admin", "password": "nope-nope-nope"})
    assert bad.status_code == 401 and "incorrect user name or password" in bad.text
    resp = client.post(
        "/console/login",
        data={"user": "admin", "password": ADMIN_PASSWORD, "next": "https://evil.example/"},
        follow_redirects=False,
    )
    assert resp.status_code == 303
    assert resp.headers["location"] == "/console"  # never off-site after signing in
    cookie = resp.headers["set-cookie"]
    assert cookie.startswith("neve_console=nvs_")
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/console" in cookie
    page = client.get("/console")
    assert page.status_code == 200
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"


def test_token_sign_in_and_sign_out(account) -> None:
    pat = account.security.create_token(admin_context(), "console_pat")["token"]
    client = client_for(account)
    resp = client.post("/console/login", data={"token": pat}, follow_redirects=False)
    assert resp.status_code == 303
    page = client.get("/console")
    assert page.status_code == 200 and "ACCOUNTADMIN" in page.text
    out = client.post("/console/logout", data={"csrf": csrf_of(page.text)}, follow_redirects=False)
    assert out.status_code == 303 and out.headers["location"] == "/console/login"
    # signing out of a token session leaves the programmatic token valid
    assert account.security.authenticate_token(pat).user == "ADMIN"
    session = signed_in(account)
    token = session.cookies["neve_console"]
    page = session.get("/console")
    session.post("/console/logout", data={"csrf": csrf_of(page.text)})
    with pytest.raises(Exception, match="revoked"):
        account.security.authenticate_token(token)  # a password session's token is revoked


def test_posts_need_the_session_csrf_token(account, admin) -> None:
    page = admin.get("/console/sql")
    csrf = csrf_of(page.text)
    assert admin.post("/console/sql", data={"sql": "SHOW ROLES"}).status_code == 403
    assert admin.post("/console/sql", data={"sql": "SHOW ROLES", "csrf": "0" * 64}).status_code == (
        403
    )
    other = signed_in(account)
    other_csrf = csrf_of(other.get("/console/sql").text)
    assert other_csrf != csrf  # per session
    assert admin.post(
        "/console/sql", data={"sql": "SHOW ROLES", "csrf": other_csrf}
    ).status_code == (403)
    cross = admin.post(
        "/console/sql",
        data={"sql": "SHOW ROLES", "csrf": csrf},
        headers={"Origin": "https://evil.example"},
    )
    assert cross.status_code == 403
    ok = admin.post("/console/sql", data={"sql": "SHOW ROLES"}, headers={"X-CSRF-Token": csrf})
    assert ok.status_code == 200 and "ANALYST" in ok.text


def test_user_text_is_escaped_everywhere(admin) -> None:
    for path in ("/console", "/console/services/ML/APPS/ODD_000", "/console?q=odd"):
        html = admin.get(path).text
        assert "<script>alert" not in html, path
        assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; [/x] &amp; &#34;q&#34;" in html, (
            path
        )
    resp = admin.get("/console/models?q=%3Cscript%3E")
    assert 'value="&lt;script&gt;"' in resp.text and "<script>" not in resp.text.split("</head>")[1]


def test_overview_lists_100_services_and_filters(admin) -> None:
    html = admin.get("/console").text
    assert len(re.findall(r'href="/console/services/ML/APPS/(?:SVC|ODD)_\d{3}"', html)) == 100
    assert "CPU_POOL" in html and "APPS" in html
    narrowed = admin.get("/console?q=svc_04").text
    assert len(re.findall(r'href="/console/services/ML/APPS/SVC_04\d"', narrowed)) == 10
    assert "SVC_050" not in narrowed
    assert "No services you may see." in admin.get("/console?status=SUSPENDED").text


def test_a_low_privilege_role_sees_and_does_less(account, admin) -> None:
    ana = signed_in(account, "ana", ANALYST_PASSWORD)
    html = ana.get("/console").text
    assert re.findall(r'href="/console/services/[^"]+"', html) == [
        'href="/console/services/ML/APPS/SVC_001"'
    ]
    page = ana.get("/console/services/ML/APPS/SVC_001")
    assert page.status_code == 200
    assert 'id="suspend"' not in page.text and "may not suspend" in page.text
    assert 'id="suspend"' in admin.get("/console/services/ML/APPS/SVC_001").text
    refused = ana.post(
        "/console/services/ML/APPS/SVC_001/action",
        data={"action": "suspend", "csrf": csrf_of(page.text)},
    )
    assert refused.status_code == 403
    assert "needs OPERATE on" in refused.text
    desc = account.services.describe_service(admin_context(), "ML.APPS.SVC_001")
    assert desc["status"] == "RUNNING"
    hidden = ana.get("/console/services/ML/APPS/SVC_002")
    assert hidden.status_code == 404 or "insufficient privileges" in hidden.text
    assert ana.get("/console/services/ML/APPS/SVC_002/logs?offset=0").status_code == 403


def test_log_follow_reads_from_an_offset(account, admin) -> None:
    log = account.services.logs.instance_log(QualifiedName("ML", "APPS", "SVC_003"), 0)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("first line\n")
    url = "/console/services/ML/APPS/SVC_003/logs?instance=0&container=model-inference"
    start = admin.get(f"{url}&offset=-1").json()
    assert start == {"text": "", "offset": len("first line\n")}
    page = admin.get("/console/services/ML/APPS/SVC_003").text
    assert "first line" in page and f'data-offset="{start["offset"]}"' in page
    with log.open("a") as fh:
        fh.write("second <b>line</b>\n")
    assert admin.get(f"{url}&offset={start['offset']}").json()["text"] == "second <b>line</b>\n"
    build = admin.get("/console/services/ML/APPS/SVC_003/logs?container=model-build&offset=0")
    assert build.status_code == 400 and "has no build job" in build.json()["message"]


def test_worksheet_grid_and_error_position(admin) -> None:
    csrf = csrf_of(admin.get("/console/sql").text)
    resp = admin.post(
        "/console/sql",
        data={"sql": "SELECT 1 AS one, 'a<b' AS two", "csrf": csrf},
    )
    assert resp.status_code == 200
    grid = re.search(r'<table class="grid" id="result-grid">.*?</table>', resp.text, re.S).group(0)
    assert "<th" in grid and ">ONE<" in grid.upper() and "a&lt;b" in grid
    err = admin.post("/console/sql", data={"sql": "SHOW ROLES;\nSELECT 1 +* FROM", "csrf": csrf})
    assert err.status_code == 400
    assert "line 2, position" in err.text
    assert re.search(r"SELECT 1 \+\* FROM\n\s*\^", err.text)
    use = admin.post("/console/sql", data={"sql": "USE DATABASE ml", "csrf": csrf})
    assert 'id="database" value="ML"' in use.text  # the worksheet keeps the USE


def test_models_and_static_assets(admin) -> None:
    html = admin.get("/console/models/ML/APPS/SVC_MODEL").text
    assert "predict" in html and "A DOUBLE, B DOUBLE" in html
    assert "SVC_000" in html  # services using the version
    static = Path(__file__).parents[2] / "src/neve/console/static/vendor"
    for asset in ("htmx-2.0.11.min.js", "uPlot-1.6.32.iife.min.js"):
        resp = admin.get(f"/console/static/vendor/{asset}")
        assert resp.status_code == 200 and len(resp.content) > 10_000
    assert (static / "htmx-2.0.11.LICENSE").read_text().startswith("Zero-Clause BSD")
    assert "MIT" in (static / "uPlot-1.6.32.LICENSE").read_text()


def test_metric_names_are_the_inference_servers() -> None:
    from prometheus_client.metrics import MetricWrapperBase

    from neve.server import metrics as server_metrics

    families = {
        c.describe()[0].name
        for c in vars(server_metrics).values()
        if isinstance(c, MetricWrapperBase)
    }
    assert len(families) >= 4
    for name in (mh.REQUESTS, mh.ROWS, mh.LATENCY, mh.QUEUE_ROWS):
        assert name in families


PAGE_1 = """\
neve_server_requests_total{method="predict",status="200",service="S",instance="0"} 10
neve_server_requests_total{method="predict",status="429",service="S",instance="0"} 0
neve_server_rows_total{method="predict",service="S",instance="0"} 100
neve_server_request_latency_seconds_bucket{method="predict",le="0.01",service="S",instance="0"} 5
neve_server_request_latency_seconds_bucket{method="predict",le="0.1",service="S",instance="0"} 10
neve_server_request_latency_seconds_bucket{method="predict",le="+Inf",service="S",instance="0"} 10
neve_server_queue_rows{method="predict",service="S",instance="0"} 0
"""
PAGE_2 = (
    PAGE_1.replace('"200",service="S",instance="0"} 10', '"200",service="S",instance="0"} 30')
    .replace('"429",service="S",instance="0"} 0', '"429",service="S",instance="0"} 4')
    .replace('instance="0"} 100', 'instance="0"} 300')
    .replace('le="0.01",service="S",instance="0"} 5', 'le="0.01",service="S",instance="0"} 15')
    .replace('le="0.1",service="S",instance="0"} 10', 'le="0.1",service="S",instance="0"} 34')
    .replace('le="+Inf",service="S",instance="0"} 10', 'le="+Inf",service="S",instance="0"} 34')
    .replace('neve_server_queue_rows{method="predict",service="S",instance="0"} 0', "X")
    .replace("X", 'neve_server_queue_rows{method="predict",service="S",instance="0"} 7')
)


def test_metrics_history_turns_counters_into_rates_and_quantiles() -> None:
    pages = iter([PAGE_1, PAGE_2])
    now = [1000.0]
    history = mh.MetricsHistory(
        lambda ctx, svc: next(pages).encode(), interval_s=3600, clock=lambda: now[0]
    )
    history.watch(admin_context(), "S")  # the first scrape is the baseline: no point yet
    assert history.series("S", 300)["t"] == []
    now[0] += 2.0
    history.sample("S")
    data = history.series("S", 300)
    assert data["t"] == [1002.0] and data["instances"] == ["0"]
    s = {key: values["0"][0] for key, values in data["series"].items()}
    assert s["rps"] == pytest.approx(24 / 2)  # 20 OK + 4 refused in 2 s
    assert s["rows_s"] == pytest.approx(100)
    assert s["r429_s"] == pytest.approx(2) and s["r503_s"] == 0
    assert s["queue"] == 7
    # 24 new observations: 10 under 10 ms, 14 between 10 and 100 ms
    assert s["p50_ms"] == pytest.approx(10 + 90 * (12 - 10) / 14)
    assert s["p99_ms"] == pytest.approx(10 + 90 * (0.99 * 24 - 10) / 14)
    now[0] += 400
    assert history.series("S", 300)["t"] == []  # out of the 5-minute window
    assert history.series("S", 3600)["t"] == [1002.0]


def test_running_services_are_sampled_before_anyone_watches() -> None:
    """A plot opened later still has its history: the background pass samples every running
    service (with its own context), keeps it while it runs, and forgets it once it stops."""
    pages = iter([PAGE_1, PAGE_2])
    now = [1000.0]
    running = [(admin_context(), "S")]
    history = mh.MetricsHistory(
        lambda ctx, svc: next(pages).encode(),
        interval_s=3600,
        idle_s=60,
        clock=lambda: now[0],
        running=lambda: list(running),
        background_interval_s=10,
    )
    history.sample_running()  # baseline
    now[0] += 10
    history.sample_running()
    assert history.series("S", 300)["t"] == [1010.0]  # a point nobody asked for
    running.clear()
    history.sample_running()  # stopped and nobody watching: forgotten
    assert history.series("S", 300)["t"] == []
