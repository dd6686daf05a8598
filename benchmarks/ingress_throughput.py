"""Ingress throughput: direct to the instance vs through the ingress proxy (a model service and
a service from its specification) vs MLflow, one run.

    .venv/bin/python benchmarks/ingress_throughput.py [--duration 5] [--skip-mlflow] [--quick]
        [--skip-custom] [--rounds 4] [--control]

What it does:

1. starts a real control plane on a temporary NEVE_HOME (its ingress proxies too: the
   ``ingress_proxies`` default), logs the shared RandomForestRegressor (``_forest.py``: 50
   trees, depth 8, 20 features) and deploys it as a 1-instance service with ingress and the
   default worker count, plus a 1-instance, 1-worker service for the overload cell;
2. measures, with the closed-loop client of ``loadgen.py`` (``dataframe_split`` bodies encoded
   once, the same bytes everywhere), req/s, rows/s and p50/p99 at batch 1 x concurrency 16 and
   batch 1000 x concurrency 4: straight to the instance's server (``POST /predict``) and through
   the ingress proxy (``POST <ingress_url>/predict`` with a bearer token), alternating per cell
   in ``--rounds`` rounds (A B B A: a machine whose speed drifts during the run favours neither;
   ingress / direct is the median of the rounds' ratios);
   custom: a service created from the model service's specification (``DESCRIBE SERVICE``'s
   ``spec``, unchanged: the same image, workers and resources, 1 instance) is measured through
   the ingress beside it, the two alternating per cell in ``--rounds`` rounds of ``--duration``
   seconds each, in A B B A order (so both see the same machine load; the merged rounds are one
   row each, custom / model is the median of the rounds' ratios), then dropped. For both, the
   CPU time of the data plane (the proxies, the service's server and its workers) per answered
   request is measured too: on a shared machine req/s moves with other work, CPU per request
   less. ``--control`` adds a second model service of the same version to the rotation (row
   ``model2``): what two identical services differ by on this machine, the noise floor;
3. MLflow 3 (``mlflow models serve``, 2 workers, from a throwaway venv under ``bench-out/``, as
   ``server_throughput.py`` builds it) on the same model and bodies;
4. overload: the 1-worker service's capacity is measured (batch 1000, concurrency 2, direct),
   then requests of 1000 rows are sent open-loop through the ingress at 10x that rate for
   ``--overload-secs``: every answer's status, whether each 429/503 carries ``Retry-After``,
   transport errors, the p99 wait of the served requests, and whether the instance and the
   proxies are still up;
5. prints one table with ingress / direct and ingress / MLflow ratios, checks the targets
   (ingress >= 0.8x direct at both cells; the custom service within 5% of the model service
   through the ingress at both cells, in rows/s and in data-plane CPU per request; ingress p99
   < 100 ms at batch 1 / c16; under 10x
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
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
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
    # custom rows: the median over rounds of custom / model rows/s, each round's pair measured
    # back to back (steadier than the ratio of the merged rows when the machine's load moves)
    vs_model: float | None = None
    # the data plane's CPU time per answered request (the proxies and the service's instance
    # with its workers), and for custom rows the median over rounds of custom / model
    cpu_ms_per_req: float | None = None
    cpu_vs_model: float | None = None
    # the ingress proxies' own CPU time per answered request (their share of the above)
    proxy_cpu_ms_per_req: float | None = None
    # ingress rows: the median over rounds of ingress / direct, each round's pair measured back
    # to back (direct and the ingress alternate: a machine whose speed drifts during the run
    # favours neither)
    vs_direct: float | None = None


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


def to_cell(label: str, batch: int, conc: int, res: LoadResult) -> Cell:
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
    return cell


def run_cell(
    port: int, path: str, batch: int, conc: int, duration: float, headers: dict[str, str] | None
) -> LoadResult:
    return load(
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


def merged(results: list[LoadResult]) -> LoadResult:
    """Several measurements of one cell as one: the requests answered over the time spent."""
    out = LoadResult(results[0].concurrency, results[0].rows_per_request, 0.0)
    for res in results:
        out.seconds += res.seconds
        out.ok += res.ok
        out.errors += res.errors
        out.latencies += res.latencies
        for status, n in res.statuses.items():
            out.statuses[status] = out.statuses.get(status, 0) + n
    return out


def measure(
    label: str,
    port: int,
    path: str,
    duration: float,
    headers: dict[str, str] | None = None,
    cells: tuple[tuple[int, int], ...] = CELLS,
) -> list[Cell]:
    return [
        to_cell(label, batch, conc, run_cell(port, path, batch, conc, duration, headers))
        for batch, conc in cells
    ]


@dataclass
class Target:
    label: str
    port: int
    path: str
    headers: dict[str, str] | None = None
    #: the data-plane processes whose CPU time a request costs (none: not measured)
    pids: list[int] = field(default_factory=list)
    #: the proxies among them (their own CPU per request is reported too)
    proxy_pids: list[int] = field(default_factory=list)


def process_trees(pids: list[int]) -> list[Any]:
    import psutil

    procs = []
    for pid in pids:
        try:
            root = psutil.Process(pid)
            procs += [root, *root.children(recursive=True)]
        except psutil.Error:
            continue
    return procs


def cpu_seconds(procs: list[Any]) -> float:
    import psutil

    total = 0.0
    for proc in procs:
        try:
            times = proc.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            continue
    return total


def measure_alternating(targets: list[Target], duration: float, rounds: int) -> list[Cell]:
    """Each cell measured on every target in turn, ``rounds`` times ``duration`` s each, the
    order reversed every other round (A B B A ...), merged per target: machine load that comes
    and goes falls on all of them alike. Each round's req/s is printed too, and the CPU time
    the target's data-plane processes spent per answered request (less sensitive than req/s to
    other work on a shared machine: it counts the work, not the wait for a core)."""
    cells = []
    procs = {t.label: process_trees(t.pids) for t in targets}
    proxy_procs = {t.label: process_trees(t.proxy_pids) for t in targets}
    for batch, conc in CELLS:
        runs: dict[str, list[LoadResult]] = {t.label: [] for t in targets}
        cpu: dict[str, list[float]] = {t.label: [] for t in targets}
        proxy_cpu: dict[str, float] = {t.label: 0.0 for t in targets}
        for k in range(rounds):
            order = targets if k % 2 == 0 else targets[::-1]
            for t in order:
                before = cpu_seconds(procs[t.label])
                proxy_before = cpu_seconds(proxy_procs[t.label])
                runs[t.label].append(run_cell(t.port, t.path, batch, conc, duration, t.headers))
                cpu[t.label].append(cpu_seconds(procs[t.label]) - before)
                proxy_cpu[t.label] += cpu_seconds(proxy_procs[t.label]) - proxy_before
            if len(targets) > 1:
                print(
                    f"    round {k + 1}: "
                    + ", ".join(
                        f"{t.label} {runs[t.label][-1].requests_per_s:.1f} req/s "
                        f"{per_request_ms(cpu[t.label][-1], runs[t.label][-1].ok):.2f} CPU ms/req"
                        for t in order
                    ),
                    flush=True,
                )
        row = {}
        for t in targets:
            total = merged(runs[t.label])
            row[t.label] = to_cell(t.label, batch, conc, total)
            if procs[t.label]:
                row[t.label].cpu_ms_per_req = per_request_ms(sum(cpu[t.label]), total.ok)
            if proxy_procs[t.label]:
                row[t.label].proxy_cpu_ms_per_req = per_request_ms(proxy_cpu[t.label], total.ok)
        base = "ingress"  # the model service through the ingress
        if "direct" in runs:
            pairs = round_ratios(runs[base], runs["direct"])
            row[base].vs_direct = statistics.median(pairs) if pairs else None
            print(
                f"  ingress / direct rows/s: {', '.join(f'{p:.3f}' for p in pairs)} by round, "
                f"median {row[base].vs_direct or 0:.3f}x",
                flush=True,
            )
        for t in targets:
            if t.label in (base, "direct"):
                continue
            pairs = round_ratios(runs[t.label], runs[base])
            cpu_pairs = [
                per_request_ms(cc, c.ok) / per_request_ms(ci, i.ok)
                for c, cc, i, ci in zip(
                    runs[t.label], cpu[t.label], runs[base], cpu[base], strict=True
                )
                if c.ok and i.ok and ci > 0
            ]
            cell = row[t.label]
            cell.vs_model = statistics.median(pairs) if pairs else None
            cell.cpu_vs_model = statistics.median(cpu_pairs) if cpu_pairs else None
            print(
                f"  {t.label} / model rows/s: {', '.join(f'{p:.3f}' for p in pairs)} by round, "
                f"median {cell.vs_model or 0:.3f}x (merged "
                f"{ratio(cell.rows_per_s, row[base].rows_per_s)}); CPU per request: "
                f"{', '.join(f'{p:.3f}' for p in cpu_pairs)}, median {cell.cpu_vs_model or 0:.3f}x",
                flush=True,
            )
        cells += row.values()
    return cells


def round_ratios(runs: list[LoadResult], baseline: list[LoadResult]) -> list[float]:
    """rows/s of each round over the baseline's in the same round (measured back to back)."""
    return [
        r.rows_per_s / b.rows_per_s for r, b in zip(runs, baseline, strict=True) if b.rows_per_s
    ]


def per_request_ms(cpu_s: float, ok: int) -> float:
    return cpu_s * 1000 / ok if ok else float("nan")


def instance_pids(session: Any, service: str) -> list[int]:
    return [int(i["pid"]) for i in session.describe_service(service)["instances"] if i["pid"]]


def create_custom_copy(session: Any, model_service: str, name: str) -> None:
    """A service from the model service's specification, unchanged (1 instance)."""
    spec = session.describe_service(model_service)["spec"]
    session.create_service(
        name, compute_pool="bench_pool", spec=spec, min_instances=1, max_instances=1
    )


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
    return f"{a / b:.3f}x" if b else ""


def report(cells: list[Cell], over: dict[str, Any] | None) -> list[str]:
    by = {(c.path, c.batch, c.concurrency): c for c in cells}
    lines = [
        "| path | batch | conc | req/s | rows/s | p50 ms | p99 ms | vs direct | vs MLflow "
        "| vs model service | CPU ms/req | proxy CPU ms/req | CPU vs model service |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in cells:
        direct = by.get(("direct", c.batch, c.concurrency))
        mlflow = by.get(("mlflow", c.batch, c.concurrency))
        vs_direct = (
            f"{c.vs_direct:.3f}x (paired)"
            if c.vs_direct is not None
            else ratio(c.rows_per_s, direct.rows_per_s if direct else None)
        )
        lines.append(
            f"| {c.path} | {c.batch} | {c.concurrency} | {c.requests_per_s:.1f} | "
            f"{c.rows_per_s:,.0f} | {c.p50_ms:.1f} | {c.p99_ms:.1f} | "
            f"{vs_direct} | "
            f"{ratio(c.rows_per_s, mlflow.rows_per_s if mlflow else None)} | "
            f"{f'{c.vs_model:.3f}x' if c.vs_model is not None else ''} | "
            f"{f'{c.cpu_ms_per_req:.2f}' if c.cpu_ms_per_req is not None else ''} | "
            f"{f'{c.proxy_cpu_ms_per_req:.2f}' if c.proxy_cpu_ms_per_req is not None else ''} | "
            f"{f'{c.cpu_vs_model:.3f}x' if c.cpu_vs_model is not None else ''} |"
        )
    checks = []
    for batch, conc in CELLS:
        ing, dire = by.get(("ingress", batch, conc)), by.get(("direct", batch, conc))
        if ing and dire:
            r = ing.rows_per_s / dire.rows_per_s if dire.rows_per_s else 0.0
            how = "merged rounds"
            if ing.vs_direct is not None:
                r, how = ing.vs_direct, "median of the rounds' pairs"
            checks.append(
                (
                    f"ingress >= 0.8x direct at batch {batch} / c{conc}",
                    r >= 0.8,
                    f"{r:.2f}x, {how}",
                )
            )
    for batch, conc in CELLS:
        cust = by.get(("custom", batch, conc))
        if cust and cust.vs_model is not None:
            r = cust.vs_model
            checks.append(
                (
                    f"custom service within 5% of the model service at batch {batch} / c{conc}",
                    abs(r - 1.0) <= 0.05,
                    f"custom / model {r:.3f}x, median of the rounds",
                )
            )
        if cust and cust.cpu_vs_model is not None:
            r = cust.cpu_vs_model
            checks.append(
                (
                    f"custom service's data-plane CPU per request within 5% of the model "
                    f"service's at batch {batch} / c{conc}",
                    abs(r - 1.0) <= 0.05,
                    f"custom / model {r:.3f}x, median of the rounds",
                )
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
    parser.add_argument(
        "--skip-custom", action="store_true", help="no service from the model's specification"
    )
    parser.add_argument(
        "--rounds", type=int, default=4, help="alternations of model and custom per cell"
    )
    parser.add_argument(
        "--control",
        action="store_true",
        help="a second model service of the same version in the rotation (row model2): how "
        "far two identical services differ on this machine",
    )
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
    from neve.dataplane.proxies import ingress_info, proxy_count, proxy_records, stop_proxies

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
        auth = {"Authorization": f"Bearer {token}"}
        proxies = [r.pid for r in proxy_records(home)]
        through = [
            Target(
                "direct",
                instance_port(handle),
                "/predict",
                None,
                instance_pids(session, "bench.public.rf_svc"),
            ),
            Target(
                "ingress",
                int(info["port"]),
                "/svc/BENCH.PUBLIC.RF_SVC/predict",
                auth,
                proxies + instance_pids(session, "bench.public.rf_svc"),
                proxies,
            ),
        ]
        if not args.skip_custom:
            create_custom_copy(session, "bench.public.rf_svc", "bench.public.rf_copy")
            through.append(
                Target(
                    "custom",
                    int(info["port"]),
                    "/svc/BENCH.PUBLIC.RF_COPY/predict",
                    auth,
                    proxies + instance_pids(session, "bench.public.rf_copy"),
                    proxies,
                )
            )
            # the same image and settings, only the kind of service differs
            print("custom service RF_COPY from RF_SVC's specification is RUNNING", flush=True)
        if args.control:
            mv.create_service(
                service_name="RF_SVC2",
                service_compute_pool="bench_pool",
                image_repo="images",
                max_instances=1,
                ingress_enabled=True,
            )
            through.append(
                Target(
                    "model2",
                    int(info["port"]),
                    "/svc/BENCH.PUBLIC.RF_SVC2/predict",
                    auth,
                    proxies + instance_pids(session, "bench.public.rf_svc2"),
                    proxies,
                )
            )
        rounds = max(1, args.rounds)
        cells += measure_alternating(through, args.duration, rounds)
        for name in ("rf_copy", "rf_svc2"):
            session.sql(f"DROP SERVICE IF EXISTS bench.public.{name}").collect()
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
