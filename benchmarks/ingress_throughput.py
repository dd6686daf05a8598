"""Ingress throughput: direct to the instance vs through the ingress proxy vs MLflow, one run.

    .venv/bin/python benchmarks/ingress_throughput.py [--duration 5] [--skip-mlflow] [--quick]

What it does:

1. starts a real control plane on a temporary NEVE_HOME (its ingress proxies too: the
   ``ingress_proxies`` default), logs the shared RandomForestRegressor (``_forest.py``: 50
   trees, depth 8, 20 features) and deploys it as a 1-instance service with ingress and the
   default worker count, plus a 1-instance, 1-worker service for the overload cell;
2. measures, with the closed-loop client of ``loadgen.py`` (``dataframe_split`` bodies encoded
   once, the same bytes everywhere), req/s, rows/s and p50/p99 at batch 1 x concurrency 16 and
   batch 1000 x concurrency 4: straight to the instance's server (``POST /predict``) and through
   the ingress proxy (``POST <ingress_url>/predict`` with a bearer token);
3. MLflow 3 (``mlflow models serve``, 2 workers, from a throwaway venv under ``bench-out/``, as
   ``server_throughput.py`` builds it) on the same model and bodies;
4. overload: the 1-worker service's capacity is measured (batch 1000, concurrency 2, direct),
   then requests of 1000 rows are sent open-loop through the ingress at 10x that rate for
   ``--overload-secs``: every answer's status, whether each 429/503 carries ``Retry-After``,
   transport errors, the p99 wait of the served requests, and whether the instance and the
   proxies are still up;
5. prints one table with ingress / direct and ingress / MLflow ratios, checks the targets
   (ingress >= 0.8x direct at both cells; ingress p99 < 100 ms at batch 1 / c16; under 10x
   overload the served p99 within the queue timeout plus one batch and 100% of refusals with
   Retry-After), and writes ``bench-out/ingress_throughput/results.json``.

The machine may be shared (the load generator, the proxy, the instance and MLflow compete for
the same cores): the figures are as good as the CPU time the run got; the load average is
printed at the start and the end.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _forest import feature_rows, forest_model  # noqa: E402
from loadgen import LoadResult, load, open_loop  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench-out" / "ingress_throughput"
HOST = "127.0.0.1"
CELLS = ((1, 16), (1000, 4))
QUEUE_TIMEOUT_S = 10.0  # the instance's default queue timeout and ingress_queue_timeout_secs


@dataclass
class Cell:
    path: str
    batch: int
    concurrency: int
    requests_per_s: float
    rows_per_s: float
    p50_ms: float
    p99_ms: float
    ok: int
    errors: int
    statuses: dict


def bodies(batch: int, count: int = 8) -> list[bytes]:
    out = []
    for k in range(count):
        frame = feature_rows(batch, seed=k + 1)
        out.append(
            orjson.dumps(
                {"dataframe_split": {"columns": list(frame.columns), "data": frame.values.tolist()}}
            )
        )
    return out


def measure(
    label: str,
    port: int,
    path: str,
    duration: float,
    headers: dict[str, str] | None = None,
    cells: tuple[tuple[int, int], ...] = CELLS,
) -> list[Cell]:
    results = []
    for batch, conc in cells:
        res: LoadResult = load(
            HOST,
            port,
            path,
            bodies(batch),
            concurrency=conc,
            rows_per_request=batch,
            duration_s=duration,
            warmup_s=min(1.0, duration / 5),
            headers=headers,
        )
        cell = Cell(
            label,
            batch,
            conc,
            res.requests_per_s,
            res.rows_per_s,
            res.percentile(0.5) * 1000,
            res.percentile(0.99) * 1000,
            res.ok,
            res.errors,
            dict(res.statuses),
        )
        print(
            f"  {label:<8} batch {batch:>5} conc {conc:>3}: {cell.requests_per_s:8.1f} req/s "
            f"{cell.rows_per_s:10.0f} rows/s  p50 {cell.p50_ms:7.1f} ms  p99 {cell.p99_ms:7.1f} ms"
            + (f"  errors {res.errors} {res.statuses}" if res.errors else ""),
            flush=True,
        )
        results.append(cell)
    return results


def instance_port(handle: Any) -> int:
    [inst] = handle.describe()["instances"]
    return int(inst["port"])


def run_mlflow(model: Any, duration: float) -> list[Cell]:
    from server_throughput import MlflowServer, mlflow_save, mlflow_venv

    venv = mlflow_venv(OUT, with_st=False)
    obj = OUT / "forest.pkl"
    obj.write_bytes(pickle.dumps(model))
    example = OUT / "example.json"
    example.write_text(feature_rows(3).to_json(orient="split", index=False))
    dest = OUT / "mlflow-forest"
    mlflow_save(venv, "sklearn", obj, dest, example)
    server = MlflowServer(venv, dest, workers=2, log=OUT / "mlflow.log")
    try:
        return measure("mlflow", server.port, "/invocations", duration)
    finally:
        server.stop()


def overload(session: Any, mv: Any, token: str, seconds: float, duration: float) -> dict[str, Any]:
    import psutil

    from neve.dataplane.proxies import ingress_info, proxy_records

    handle = mv.create_service(
        service_name="RF_ONE",
        service_compute_pool="bench_pool",
        image_repo="images",
        max_instances=1,
        num_workers=1,
        ingress_enabled=True,
    )
    port = instance_port(handle)
    [capacity] = measure("capacity", port, "/predict", duration, cells=((1000, 2),))
    batch_s = 1000 / max(capacity.rows_per_s, 1.0)
    rate = 10 * capacity.requests_per_s
    info = ingress_info(session.account_home)
    assert info is not None
    print(f"  open loop through the ingress: {rate:.1f} req/s of 1000 rows for {seconds:g} s")
    res = open_loop(
        HOST,
        int(info["port"]),
        "/svc/BENCH.PUBLIC.RF_ONE/predict",
        bodies(1000),
        rate_per_s=rate,
        duration_s=seconds,
        headers={"Authorization": f"Bearer {token}"},
    )
    pids = [int(i["pid"]) for i in handle.describe()["instances"]]
    proxies = proxy_records(session.account_home)
    up = all(psutil.pid_exists(p) for p in pids) and all(psutil.pid_exists(r.pid) for r in proxies)
    p99 = res.percentile(0.99)
    out = {
        "capacity_req_s": capacity.requests_per_s,
        "rate_req_s": rate,
        "seconds": seconds,
        "statuses": res.statuses,
        "transport_errors": res.transport_errors,
        "refusals": res.refusals,
        "refusals_with_retry_after": res.refusals_with_retry_after,
        "served_p50_s": res.percentile(0.5),
        "served_p99_s": p99,
        "bound_s": QUEUE_TIMEOUT_S + batch_s,
        "instance_and_proxies_up": up,
    }
    print(
        f"  answers {res.statuses}, transport errors {res.transport_errors}, refusals with "
        f"Retry-After {res.refusals_with_retry_after}/{res.refusals}, served p99 {p99:.2f} s "
        f"(bound {out['bound_s']:.2f} s), instance and proxies up: {up}",
        flush=True,
    )
    return out


def ratio(a: float, b: float | None) -> str:
    return f"{a / b:.2f}x" if b else ""


def report(cells: list[Cell], over: dict[str, Any] | None) -> list[str]:
    by = {(c.path, c.batch, c.concurrency): c for c in cells}
    lines = [
        "| path | batch | conc | req/s | rows/s | p50 ms | p99 ms | vs direct | vs MLflow |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in cells:
        direct = by.get(("direct", c.batch, c.concurrency))
        mlflow = by.get(("mlflow", c.batch, c.concurrency))
        lines.append(
            f"| {c.path} | {c.batch} | {c.concurrency} | {c.requests_per_s:.1f} | "
            f"{c.rows_per_s:,.0f} | {c.p50_ms:.1f} | {c.p99_ms:.1f} | "
            f"{ratio(c.rows_per_s, direct.rows_per_s if direct else None)} | "
            f"{ratio(c.rows_per_s, mlflow.rows_per_s if mlflow else None)} |"
        )
    checks = []
    for batch, conc in CELLS:
        ing, dire = by.get(("ingress", batch, conc)), by.get(("direct", batch, conc))
        if ing and dire:
            r = ing.rows_per_s / dire.rows_per_s if dire.rows_per_s else 0.0
            checks.append(
                (f"ingress >= 0.8x direct at batch {batch} / c{conc}", r >= 0.8, f"{r:.2f}x")
            )
    ing = by.get(("ingress", 1, 16))
    if ing:
        checks.append(
            ("ingress p99 < 100 ms at batch 1 / c16", ing.p99_ms < 100, f"{ing.p99_ms:.1f} ms")
        )
    if over:
        checks.append(
            (
                "10x overload: served p99 within queue timeout + one batch",
                over["served_p99_s"] <= over["bound_s"],
                f"{over['served_p99_s']:.2f} s <= {over['bound_s']:.2f} s",
            )
        )
        all_ra = over["refusals_with_retry_after"] == over["refusals"]
        checks.append(
            (
                "10x overload: 100% of refusals carry Retry-After",
                all_ra,
                f"{over['refusals_with_retry_after']}/{over['refusals']}",
            )
        )
        checks.append(
            (
                "10x overload: no transport errors, instance and proxies up",
                over["transport_errors"] == 0 and over["instance_and_proxies_up"],
                f"{over['transport_errors']} errors",
            )
        )
    lines.append("")
    lines += [f"- {'PASS' if ok else 'MISS'}: {name} ({value})" for name, ok, value in checks]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per cell")
    parser.add_argument("--overload-secs", type=float, default=6.0)
    parser.add_argument("--skip-mlflow", action="store_true")
    parser.add_argument("--skip-overload", action="store_true")
    parser.add_argument("--quick", action="store_true", help="2 s cells, 3 s overload")
    args = parser.parse_args()
    if args.quick:
        args.duration, args.overload_secs = 2.0, 3.0
    OUT.mkdir(parents=True, exist_ok=True)
    print(f"load average at start: {os.getloadavg()} on {os.cpu_count()} cpus", flush=True)

    home = Path(tempfile.mkdtemp(prefix="neve-bench-ingress-"))
    os.environ["NEVE_HOME"] = str(home)
    import neve
    from neve.control import daemon
    from neve.dataplane.proxies import ingress_info, proxy_count, stop_proxies

    model, sample = forest_model()
    session = neve.connect(str(home))
    cells: list[Cell] = []
    over = None
    try:
        session.sql(
            "CREATE COMPUTE POOL bench_pool MIN_NODES = 1 MAX_NODES = 1 "
            "INSTANCE_FAMILY = 'CPU_X64_M'"
        ).collect()
        mv = neve.Registry(session, database_name="bench", schema_name="public").log_model(
            model,
            model_name="RF",
            version_name="V1",
            conda_dependencies=["scikit-learn"],
            sample_input_data=sample,
        )
        session.sql("CREATE IMAGE REPOSITORY bench.public.images").collect()
        handle = mv.create_service(
            service_name="RF_SVC",
            service_compute_pool="bench_pool",
            image_repo="images",
            max_instances=1,
            ingress_enabled=True,
        )
        token = session.create_token("bench")
        info = None
        deadline = time.monotonic() + 60
        while info is None and time.monotonic() < deadline:
            info = ingress_info(home)
            time.sleep(0.2)
        if info is None:
            raise RuntimeError("the ingress proxies did not start")
        print(
            f"instance port {instance_port(handle)}, ingress {info['url']} "
            f"({proxy_count(session_settings(home))} proxies)",
            flush=True,
        )
        cells += measure("direct", instance_port(handle), "/predict", args.duration)
        cells += measure(
            "ingress",
            int(info["port"]),
            "/svc/BENCH.PUBLIC.RF_SVC/predict",
            args.duration,
            headers={"Authorization": f"Bearer {token}"},
        )
        if not args.skip_mlflow:
            cells += run_mlflow(model, args.duration)
        if not args.skip_overload:
            over = overload(session, mv, token, args.overload_secs, args.duration)
    finally:
        session.close()
        daemon.stop(home)
        stop_proxies(home)
        _kill_instances(home)
        shutil.rmtree(home, ignore_errors=True)
    lines = report(cells, over)
    print()
    print("\n".join(lines))
    print(f"\nload average at the end: {os.getloadavg()} (other work competes for the cores)")
    (OUT / "results.json").write_text(
        json.dumps({"cells": [asdict(c) for c in cells], "overload": over}, indent=2) + "\n"
    )
    return 0


def session_settings(home: Path) -> Any:
    from neve.config import load_settings

    return load_settings(home)


def _kill_instances(home: Path) -> None:
    """Instances outlive the daemon on purpose: stop what this run started."""
    import psutil

    needle = str(home)
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(needle in part for part in proc.info["cmdline"] or []) or proc.environ().get(
                "NEVE_HOME", ""
            ).startswith(needle):
                proc.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue


if __name__ == "__main__":
    pd.set_option("display.width", 200)
    sys.exit(main())
