"""Rows/s of a SQL service function vs the warehouse model function on the same model.

    .venv/bin/python benchmarks/sql_service_function.py [--rows 1000000] [--num-workers N]

Trains a RandomForestRegressor (50 trees, depth 8, 20 features: the model of the server
benchmark), logs it, deploys it as a service on a local compute pool (the image is built with
uv, or reused), writes a table of ``--rows`` random rows and times, on the same table:

- ``SELECT sum(MODEL(rf, v1)!predict(F0, ..., F19)) FROM t``  (in-process, vectorized)
- ``SELECT sum(rf_svc_predict(F0, ..., F19)) FROM t``         (the service, batched over HTTP)

and prints rows/s of each and their ratio (target: service >= 0.5x the model function). The two
results are compared on the first rows as well. Two more lines show what the wire format costs
without DuckDB: the same rows sent by ``ServiceManager.invoke_arrow`` (Arrow IPC columns, what
service functions use) and by ``ServiceManager.invoke`` (JSON rows, the format of the
service-function protocol); ``--no-wire`` skips them. Everything runs in a temporary NEVE_HOME that is
removed afterwards (pass --home to keep it and reuse the built image).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _forest import COLUMNS as columns  # noqa: E402
from _forest import feature_rows, forest_model  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument(
        "--num-workers", type=int, default=os.cpu_count(), help="server workers (default: cpus)"
    )
    parser.add_argument("--instances", type=int, default=1)
    parser.add_argument("--max-batch-rows", type=int, default=None)
    parser.add_argument("--repeat", type=int, default=2, help="timed runs of each query (best)")
    parser.add_argument("--home", default=None, help="NEVE_HOME to use (default: a temp dir)")
    parser.add_argument(
        "--no-wire", action="store_true", help="skip the invoke lines (Arrow vs JSON, no SQL)"
    )
    args = parser.parse_args()

    home = Path(args.home) if args.home else Path(tempfile.mkdtemp(prefix="neve-bench-sql-"))
    os.environ["NEVE_HOME"] = str(home)

    from neve.context import admin_context
    from neve.control.account import Account
    from neve.models import save_model

    model, sample = forest_model()

    account = Account.open(str(home))
    account.security.bootstrap()
    ctx = admin_context()
    sql = account.sql
    try:
        ctx = ctx.with_(**sql.execute(ctx, "CREATE DATABASE IF NOT EXISTS bench").ctx_changes)
        sql.execute(
            ctx,
            "CREATE COMPUTE POOL IF NOT EXISTS bench_pool MIN_NODES = 1 MAX_NODES = 1 "
            "INSTANCE_FAMILY = 'CPU_X64_M'",
        )
        sql.execute(ctx, "CREATE IMAGE REPOSITORY IF NOT EXISTS bench.public.images")
        if not sql.execute(ctx, "SHOW MODELS LIKE 'RF'").rows:  # logged already (--home reused)
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "rf"
                save_model(model, path, sample_input=sample)
                account.registry.log_model(
                    ctx,
                    "BENCH",
                    "PUBLIC",
                    "RF",
                    "V1",
                    path,
                    conda_dependencies=["scikit-learn"],
                )
        t0 = time.perf_counter()
        account.services.create_service(
            ctx,
            model="BENCH.PUBLIC.RF",
            version="V1",
            service_name="RF_SVC",
            compute_pool="BENCH_POOL",
            image_repo="BENCH.PUBLIC.IMAGES",
            max_instances=args.instances,
            num_workers=args.num_workers,
            max_batch_rows=args.max_batch_rows,
        )
        print(f"service ready in {time.perf_counter() - t0:.1f} s (image build or reuse + start)")

        data = feature_rows(args.rows)
        data.insert(0, "ID", np.arange(args.rows))
        sql.write_table(ctx, "T", pa.Table.from_pandas(data), overwrite=True)
        cols = ", ".join(columns)

        # same answers first (on a slice), then timings
        model_rows = sql.execute(
            ctx, f"SELECT MODEL(rf, v1)!predict({cols}) FROM t WHERE id < 2000 ORDER BY id"
        ).rows
        service_rows = sql.execute(
            ctx, f"SELECT rf_svc_predict({cols}) FROM t WHERE id < 2000 ORDER BY id"
        ).rows
        np.testing.assert_allclose(
            np.array(service_rows, dtype=float), np.array(model_rows, dtype=float), rtol=1e-9
        )

        def best(query: str) -> float:
            times = []
            for _ in range(args.repeat):
                start = time.perf_counter()
                sql.execute(ctx, query)
                times.append(time.perf_counter() - start)
            return min(times)

        model_s = best(f"SELECT sum(MODEL(rf, v1)!predict({cols})) FROM t")
        service_s = best(f"SELECT sum(rf_svc_predict({cols})) FROM t")
        wire: list[tuple[str, float]] = []
        if not args.no_wire:
            services = account.services
            table = pa.Table.from_pandas(data[columns], preserve_index=False)
            rows = [[i, *r] for i, r in enumerate(data[columns].to_numpy().tolist())]
            start = time.perf_counter()
            services.invoke_arrow(ctx, "BENCH.PUBLIC.RF_SVC", "predict", table)
            wire.append(("invoke, Arrow columns (no SQL)", time.perf_counter() - start))
            start = time.perf_counter()
            services.invoke(ctx, "BENCH.PUBLIC.RF_SVC", "predict", rows)
            wire.append(("invoke, JSON rows (no SQL)", time.perf_counter() - start))
        model_rate = args.rows / model_s
        service_rate = args.rows / service_s
        print(
            f"rows: {args.rows:,}  cpus: {os.cpu_count()}  server workers: {args.num_workers}  "
            f"instances: {args.instances}  python: {sys.version.split()[0]}"
        )
        print(f"{'path':<34}{'seconds':>10}{'rows/s':>14}")
        print(f"{'warehouse model function':<34}{model_s:>10.2f}{model_rate:>14,.0f}")
        print(f"{'service function':<34}{service_s:>10.2f}{service_rate:>14,.0f}")
        for label, seconds in wire:
            print(f"{label:<34}{seconds:>10.2f}{args.rows / seconds:>14,.0f}")
        ratio = service_rate / model_rate
        print(f"service / model function: {ratio:.2f}x (target >= 0.50x)")
        if wire:
            print(f"invoke Arrow / JSON: {wire[1][1] / wire[0][1]:.2f}x")
        return 0
    finally:
        try:
            account.services.drop_service(ctx, "BENCH.PUBLIC.RF_SVC", if_exists=True)
        finally:
            account.close()
            if not args.home:
                shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
