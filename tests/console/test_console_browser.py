"""The console in a real headless Chromium (Debian's ``chromium``, driven by Playwright) against
a real control plane daemon and a real service (a uv-built image, an inference-server process):
sign in, the overview, a service's instances, snippets and a log line that arrives after the
page loaded, metrics plots with points, the SQL worksheet, models and build pages, a
low-privilege user refused a suspend, and suspend / resume. Screenshots of every page go to
bench-out/console/."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pandas as pd
import pytest

import neve

pytestmark = pytest.mark.e2e  # starts processes: see the Development section

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = Path(__file__).resolve().parents[2] / "bench-out" / "console"
SERVICE = "/console/services/ML/APPS/ECHO_SVC"
VIEWER_PASSWORD = "Viewer-pass-word-1"
HOSTILE = "<script>document.title='pwned'</script> [/x]"

if not Path(CHROMIUM).exists():
    pytest.skip(
        "no chromium here: apt-get install chromium (.ci/run installs it)", allow_module_level=True
    )
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')"
)


class Echo(neve.CustomModel):
    """``predict``: the length of each note; every note is printed to the instance's log."""

    @neve.inference_api
    def predict(self, X: pd.DataFrame) -> pd.DataFrame:
        for note in X["NOTE"]:
            print(f"model saw note {note}", flush=True)
        return pd.DataFrame({"LENGTH": X["NOTE"].str.len()})


@pytest.fixture(scope="module")
def stack(shared_control_plane) -> Iterator[dict]:
    """The module's daemon (tests/conftest.py stops it and every process of its account) with
    a model, a pool, a repository, a low-privilege user and one running service."""
    session = shared_control_plane
    reg = neve.Registry(session, database_name="ml", schema_name="apps")
    mv = reg.log_model(
        Echo(),
        model_name="echo",
        version_name="v1",
        sample_input_data=pd.DataFrame({"NOTE": ["hello"]}),
        comment=HOSTILE,
    )
    for statement in (
        "CREATE COMPUTE POOL IF NOT EXISTS console_pool MIN_NODES = 1 MAX_NODES = 1 "
        "INSTANCE_FAMILY = 'CPU_X64_S'",
        "CREATE IMAGE REPOSITORY IF NOT EXISTS ml.apps.images",
        "CREATE ROLE viewer",
        f"CREATE USER viewer_user PASSWORD = '{VIEWER_PASSWORD}' DEFAULT_ROLE = viewer",
        "GRANT ROLE viewer TO USER viewer_user",
    ):
        session.sql(statement).collect()
    mv.create_service(
        service_name="echo_svc",
        service_compute_pool="console_pool",
        image_repo="ml.apps.images",
        ingress_enabled=True,
        max_instances=1,
        num_workers=1,
        comment=HOSTILE,
    )
    for statement in (
        "GRANT USAGE ON DATABASE ml TO ROLE viewer",
        "GRANT USAGE ON SCHEMA ml.apps TO ROLE viewer",
        "GRANT MONITOR ON SERVICE ml.apps.echo_svc TO ROLE viewer",
    ):
        session.sql(statement).collect()
    # the daemon and the instance it runs are stopped with shared_control_plane
    yield {"session": session, "url": session.url, "token": session.token}


@pytest.fixture(scope="module")
def browser(stack) -> Iterator:
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def admin(browser, stack) -> Iterator:
    """A page signed in as the admin with the daemon's token (the token sign-in path)."""
    context = browser.new_context(base_url=stack["url"], viewport={"width": 1360, "height": 900})
    page = context.new_page()
    page.set_default_timeout(20_000)
    page.goto("/console")
    assert "/console/login" in page.url  # no session yet
    shot(page, "login")
    page.fill("#token", stack["token"])
    page.click("#sign-in")
    page.wait_for_url(re.compile(r"/console$"))
    yield page
    context.close()


def shot(page, name: str) -> None:
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def ingress_call(stack: dict, url: str, note: str) -> None:
    resp = httpx.post(
        f"{url}/predict",
        json={"data": [[0, note]]},
        headers={"Authorization": f"Bearer {stack['token']}"},
        timeout=30,
        trust_env=False,
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["data"][0][1] == {"LENGTH": len(note)}


def test_overview_after_sign_in(admin) -> None:
    row = admin.locator("#services tr", has_text="ECHO_SVC")
    sync_api.expect(row).to_contain_text("RUNNING")
    sync_api.expect(row).to_contain_text("1 / 1")
    sync_api.expect(row).to_contain_text(HOSTILE)  # shown as text, never run
    assert admin.title() != "pwned"
    sync_api.expect(admin.locator("#pools")).to_contain_text("CONSOLE_POOL")
    sync_api.expect(admin.locator("#repos")).to_contain_text("IMAGES")
    sync_api.expect(admin.locator("#jobs")).to_contain_text("MODEL_BUILD_")
    shot(admin, "overview")
    admin.fill("#q", "nothing-matches-this")  # htmx filters as one types
    sync_api.expect(admin.locator("#services")).to_contain_text("No services you may see.")
    admin.fill("#q", "")
    sync_api.expect(admin.locator("#services")).to_contain_text("ECHO_SVC")


def test_service_page_follows_a_new_log_line(admin, stack) -> None:
    admin.goto(SERVICE)
    sync_api.expect(admin.locator("#instances tbody tr")).to_have_count(1)
    sync_api.expect(admin.locator("#instances")).to_contain_text("READY")
    sync_api.expect(admin.locator("#live")).to_be_visible()
    ingress = admin.locator("#ingress-url").inner_text()
    assert ingress.endswith("/svc/ML.APPS.ECHO_SVC")
    sync_api.expect(admin.locator("#snippet-curl")).to_contain_text(f"{ingress}/predict")
    # the Python snippet works as pasted
    ran = subprocess.run(
        [sys.executable, "-c", admin.locator("#snippet-python").inner_text()],
        env={
            **{k: v for k, v in os.environ.items() if "proxy" not in k.lower()},  # loopback
            "NEVE_TOKEN": stack["token"],
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ran.returncode == 0, ran.stderr
    assert "'LENGTH': 4" in ran.stdout  # the example row's "text"
    note = f"console-{uuid.uuid4().hex[:10]}"
    assert note not in admin.locator("#log").inner_text()
    ingress_call(stack, ingress, note)  # after the page loaded: no reload from here on
    sync_api.expect(admin.locator("#log")).to_contain_text(f"model saw note {note}")
    shot(admin, "service")


def test_metrics_plots_have_points(admin, stack) -> None:
    admin.goto(f"{SERVICE}/metrics")
    ingress = f"{stack['url']}/svc/ML.APPS.ECHO_SVC"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ingress_call(stack, ingress, "load")
        if int(admin.locator("#charts").get_attribute("data-points") or 0) >= 3:
            break
        time.sleep(0.3)
    assert int(admin.locator("#charts").get_attribute("data-points") or 0) >= 3
    sync_api.expect(admin.locator("figure.chart canvas")).to_have_count(7)
    # the requests/s series has a non-zero point for instance 0 (what the plot draws)
    data = admin.evaluate(
        "fetch(document.getElementById('charts').dataset.source).then(r => r.json())"
    )
    assert data["instances"] == ["0"]
    assert max(v or 0 for v in data["series"]["rps"]["0"]) > 0
    assert any(v is not None for v in data["series"]["p50_ms"]["0"])
    shot(admin, "metrics")


def test_sql_worksheet(admin) -> None:
    admin.goto("/console/sql")
    admin.fill("#sql", "SHOW SERVICES IN SCHEMA ml.apps")
    admin.click("#run")
    sync_api.expect(admin.locator("#result-grid")).to_contain_text("ECHO_SVC")
    sync_api.expect(admin.locator("#row-count")).to_contain_text("1 row")
    shot(admin, "sql")
    admin.fill("#sql", "SELECT 1\n  + * FROM")
    admin.locator("#sql").press("Control+Enter")
    sync_api.expect(admin.locator("#sql-position")).to_contain_text("line 2, position")
    sync_api.expect(admin.locator("#sql-error")).to_contain_text("SQL_SYNTAX")


def test_model_and_build_pages(admin) -> None:
    admin.goto("/console/models")
    admin.click("text=ML.APPS.ECHO")
    sync_api.expect(admin.locator("#version-V1")).to_contain_text("NOTE")
    sync_api.expect(admin.locator("#version-V1")).to_contain_text("ECHO_SVC")
    sync_api.expect(admin.locator("#version-V1 dd.comment")).to_have_text(HOSTILE)
    shot(admin, "model")
    admin.goto(f"{SERVICE}?container=model-build")  # the build's log in the log panel
    sync_api.expect(admin.locator("#log")).to_have_text(re.compile(r"\S"))
    sync_api.expect(admin.locator("#live")).to_be_visible()
    admin.click("a[href^='/console/builds/']")
    sync_api.expect(admin.locator("h1")).to_contain_text("MODEL_BUILD_")
    assert admin.locator("#build-log").inner_text().strip()
    shot(admin, "build")


def test_low_privilege_user_is_refused_a_suspend(browser, stack) -> None:
    context = browser.new_context(base_url=stack["url"], viewport={"width": 1360, "height": 900})
    page = context.new_page()
    page.set_default_timeout(20_000)
    page.goto("/console/login")
    page.fill("#user", "viewer_user")
    page.fill("#password", VIEWER_PASSWORD)
    page.click("#sign-in")
    page.wait_for_url(re.compile(r"/console$"))
    sync_api.expect(page.locator("header .role")).to_have_text("VIEWER")
    sync_api.expect(page.locator("#pools")).not_to_contain_text("CONSOLE_POOL")  # no privilege
    page.goto(SERVICE)
    sync_api.expect(page.locator("#instances")).to_contain_text("READY")  # MONITOR: may look
    sync_api.expect(page.locator("#no-actions")).to_be_visible()
    assert page.locator("#suspend").count() == 0
    csrf = page.locator("input[name=csrf]").first.get_attribute("value")
    refused = context.request.post(
        f"{SERVICE}/action",
        form={"action": "suspend", "csrf": csrf},
        headers={"Origin": stack["url"]},
    )
    assert refused.status == 403
    assert "needs OPERATE on SERVICE" in refused.text()
    state = stack["session"].sql("SHOW SERVICES LIKE 'ECHO_SVC' IN SCHEMA ml.apps").collect()
    assert state[0]["status"] == "RUNNING"
    shot(page, "service-low-privilege")
    context.close()


def test_suspend_and_resume(admin) -> None:
    admin.goto(SERVICE)
    admin.click("#suspend")
    sync_api.expect(admin.locator("#message")).to_have_text("Service suspended.")
    sync_api.expect(admin.locator("#svc-status")).to_have_text(re.compile("SUSPEND"))
    admin.click("#resume")
    sync_api.expect(admin.locator("#message")).to_have_text("Service resumed.")
    deadline = time.monotonic() + 90
    while admin.locator("#svc-status").inner_text() != "RUNNING":
        assert time.monotonic() < deadline, "the service did not come back RUNNING"
        time.sleep(1)
        admin.goto(SERVICE)
    sync_api.expect(admin.locator("#instances")).to_contain_text("READY")
    admin.fill("input[name=min_instances]", "0")  # scale: idle may now suspend it
    admin.click("#scale")
    sync_api.expect(admin.locator("#message")).to_have_text("Instance limits changed.")
    sync_api.expect(admin.locator("#instance-counts")).to_contain_text("(min 0, max 1)")
