"""Console page render times with 100 services (the target: every page under 300 ms).

A temporary account gets catalog rows for 100 RUNNING services with two instances each (no
image build, no process: tests/console/console_rows.py), the control plane app is served by
uvicorn on loopback, and each page is fetched over HTTP, signed in as the admin and as a role
that may see one service, ``--repeat`` times. Prints a table and writes
bench-out/console/page_times.json.

    .venv/bin/python benchmarks/console_pages.py [--services 100] [--repeat 20]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import uvicorn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "console"))

from console_rows import add_services  # noqa: E402

ADMIN_PASSWORD = "Admin-pass-word-1"
ANALYST_PASSWORD = "Analyst-pass-word-1"
PAGES = {
    "overview": "/console",
    "overview filtered": "/console?q=svc_04",
    "service": "/console/services/ML/APPS/SVC_001",
    "metrics page": "/console/services/ML/APPS/SVC_001/metrics",
    "models": "/console/models",
    "model": "/console/models/ML/APPS/SVC_MODEL",
    "sql worksheet": "/console/sql",
}


def serve(app: object) -> tuple[uvicorn.Server, str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True).start()
    while not server.started:
        time.sleep(0.02)
    return server, f"http://127.0.0.1:{sock.getsockname()[1]}"


def timings(client: httpx.Client, path: str, repeat: int) -> list[float]:
    """Milliseconds per fetch; a refusal page (the analyst may not see the model) counts too,
    a server error or a sign-in redirect does not."""
    out = []
    for i in range(repeat + 1):  # the first warms first-use imports and caches
        started = time.perf_counter()
        resp = client.get(path)
        elapsed = (time.perf_counter() - started) * 1000
        if resp.status_code >= 500 or "/login" in str(resp.url):
            raise RuntimeError(f"{path}: {resp.status_code} {resp.text[:200]}")
        if i:
            out.append(elapsed)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()

    from neve.context import admin_context
    from neve.control.account import Account
    from neve.control.app import create_app

    home = tempfile.mkdtemp(prefix="neve-console-bench-")
    os.environ["NEVE_HOME"] = home
    account = Account.open(home)
    account.security.bootstrap(admin_password=ADMIN_PASSWORD)
    add_services(account, args.services)
    for statement in (
        "CREATE ROLE analyst",
        f"CREATE USER ana PASSWORD = '{ANALYST_PASSWORD}' DEFAULT_ROLE = analyst",
        "GRANT ROLE analyst TO USER ana",
        "GRANT USAGE ON DATABASE ml TO ROLE analyst",
        "GRANT USAGE ON SCHEMA ml.apps TO ROLE analyst",
        "GRANT MONITOR ON SERVICE ml.apps.svc_001 TO ROLE analyst",
    ):
        account.sql.execute(admin_context(), statement)
    server, url = serve(create_app(account))
    results: dict[str, dict[str, dict[str, float]]] = {}
    try:
        for user, password in (("admin", ADMIN_PASSWORD), ("ana", ANALYST_PASSWORD)):
            with httpx.Client(base_url=url, trust_env=False, timeout=30) as client:
                client.post("/console/login", data={"user": user, "password": password})
                for name, path in PAGES.items():
                    ms = sorted(timings(client, path, args.repeat))
                    results.setdefault(name, {})[user] = {
                        "median_ms": round(statistics.median(ms), 1),
                        "p95_ms": round(ms[int(0.95 * (len(ms) - 1))], 1),
                        "max_ms": round(ms[-1], 1),
                    }
    finally:
        server.should_exit = True
        account.close()
    print(f"console pages, {args.services} services, {args.repeat} fetches each (ms)")
    print(f"{'page':<20} {'admin median':>13} {'p95':>7} {'analyst median':>15} {'p95':>7}")
    for name, by_user in results.items():
        a, b = by_user["admin"], by_user["ana"]
        print(
            f"{name:<20} {a['median_ms']:>13} {a['p95_ms']:>7} {b['median_ms']:>15} {b['p95_ms']:>7}"
        )
    out = ROOT / "bench-out" / "console" / "page_times.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"services": args.services, "pages": results}, indent=2))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
