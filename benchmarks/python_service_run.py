"""Rows/s of ``mv.run`` on a service (Arrow IPC columns) vs JSON rows vs the in-process run.

    .venv/bin/python benchmarks/python_service_run.py [--rows 200000] [--num-workers N]

The user's path from Python: ``neve.connect(home)`` starts a real control-plane daemon on a
temporary NEVE_HOME, ``neve.Registry(session, ...).log_model`` logs the model of the server
benchmark (a RandomForestRegressor, 50 trees, depth 8, 20 features), ``session.sql`` creates a
compute pool and an image repository, and ``mv.create_service`` deploys it (1 instance,
``--num-workers`` server workers; the image is built with uv, or reused with --home). Then the
same ``--rows`` random rows are timed (best of ``--repeat``) three ways:

- ``mv.run(df, function_name="predict", service_name=...)``: the client sends Arrow IPC
  columns to the control plane (``neve.client.services.ServiceMixin._run_on_service``), which
  sends them on to the service; on a client without Arrow support this line is JSON rows;
- JSON rows to the same route, ``POST /api/v1/services/<db>/<schema>/<name>/invoke/predict``
  with ``{"data": [[i, f0, ..., f19], ...]}`` in requests of 10,000 rows (the client's request
  size), authenticated as the client's transport is (its base URL, bearer token and context
  headers); the time covers building the rows from the DataFrame and reading the answers,
  as a JSON client must: the baseline of the JSON service-function format;
- ``mv.run(df, function_name="predict")``: the model in this process (warehouse mode).

The three results are compared on a slice, and a table prints seconds and rows/s of each with
the ratios Arrow / JSON and Arrow / in-process. The service is dropped and the daemon stopped
at the end; the temporary NEVE_HOME is removed unless --home is given (pass it to reuse the
built image on the next run).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote as url_quote

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _forest import COLUMNS as columns  # noqa: E402
from _forest import feature_rows, forest_model  # noqa: E402

N_FEATURES = 20
SERVICE = "RF_SVC"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument(
        "--num-workers", type=int, default=os.cpu_count(), help="server workers (default: cpus)"
    )
    parser.add_argument("--repeat", type=int, default=2, help="timed runs of each path (best)")
    parser.add_argument("--home", default=None, help="NEVE_HOME to use (default: a temp dir)")
    args = parser.parse_args()

    home = Path(args.home) if args.home else Path(tempfile.mkdtemp(prefix="neve-bench-run-"))
    home.mkdir(parents=True, exist_ok=True)
    os.environ["NEVE_HOME"] = str(home)
    import httpx
    import orjson
    import psutil

    import neve
    from neve.client import services as client_services
    from neve.control import daemon
    from neve.errors import ObjectNotFoundError
    from neve.identifiers import quote

    model, sample = forest_model()

    session = neve.connect(str(home))
    info = daemon.read_info(home) or {}
    daemon_env = psutil.Process(int(info["pid"])).environ() if info.get("pid") else {}
    # Which code runs: this process's neve, and what the daemon (a subprocess) imports from.
    print(f"neve: {neve.__file__}")
    print(f"daemon pid {info.get('pid')}  PYTHONPATH={daemon_env.get('PYTHONPATH', '')!r}")
    try:
        session.sql(
            "CREATE COMPUTE POOL IF NOT EXISTS bench_pool MIN_NODES = 1 MAX_NODES = 1 "
            "INSTANCE_FAMILY = 'CPU_X64_M'"
        ).collect()
        registry = neve.Registry(session, database_name="bench", schema_name="public")
        try:  # logged already (--home reused)
            mv = registry.get_model("RF").version("V1")
        except ObjectNotFoundError:
            mv = registry.log_model(
                model,
                model_name="RF",
                version_name="V1",
                conda_dependencies=["scikit-learn"],
                sample_input_data=sample,
            )
        session.sql("CREATE IMAGE REPOSITORY IF NOT EXISTS bench.public.images").collect()
        t0 = time.perf_counter()
        mv.create_service(
            service_name=SERVICE,
            service_compute_pool="bench_pool",
            image_repo="images",
            max_instances=1,
            num_workers=args.num_workers,
        )
        print(f"service ready in {time.perf_counter() - t0:.1f} s (image build or reuse + start)")

        data = feature_rows(args.rows)

        # JSON rows, sent as the client's transport sends them: same URL, token and context
        # headers, orjson bodies, no pooled connections, never through a proxy.
        route = (
            "/api/v1/services/"
            + "/".join(url_quote(quote(p), safe="") for p in ("BENCH", "PUBLIC", SERVICE))
            + "/invoke/predict"
        )
        http = httpx.Client(
            base_url=session.url,
            headers={"Authorization": f"Bearer {session.token}"},
            timeout=httpx.Timeout(600.0, connect=10.0),
            limits=httpx.Limits(max_keepalive_connections=0),
            trust_env=False,
            verify=False,
        )
        request_rows = client_services.DEFAULT_REQUEST_ROWS

        def run_json(frame: pd.DataFrame) -> np.ndarray:
            values = frame[columns].to_numpy().tolist()
            out: list[float] = []
            for start in range(0, len(values), request_rows):
                rows = [
                    [i, *row]
                    for i, row in enumerate(values[start : start + request_rows], start=start)
                ]
                resp = http.post(
                    route,
                    content=orjson.dumps({"data": rows, "timeout_s": 300.0}),
                    headers={"Content-Type": "application/json", **session.context_headers()},
                )
                if resp.status_code != 200:
                    raise RuntimeError(f"JSON invoke failed: HTTP {resp.status_code} {resp.text}")
                out.extend(
                    next(iter(answer.values())) for _i, answer in orjson.loads(resp.content)["data"]
                )
            return np.asarray(out, dtype=float)

        def run_service(frame: pd.DataFrame) -> np.ndarray:
            out = mv.run(frame, function_name="predict", service_name=SERVICE)
            return out.iloc[:, -1].to_numpy(dtype=float)

        def run_local(frame: pd.DataFrame) -> np.ndarray:
            out = mv.run(frame, function_name="predict")
            return out.iloc[:, -1].to_numpy(dtype=float)

        client_format = (
            "Arrow IPC"
            if hasattr(client_services.ServiceMixin, "_invoke_arrow")
            else "JSON rows (old client)"
        )
        paths: list[tuple[str, Callable[[pd.DataFrame], np.ndarray]]] = [
            (f"mv.run, service ({client_format})", run_service),
            ("JSON rows to the same route", run_json),
            ("mv.run, in-process", run_local),
        ]
        # same answers first (this also warms up: model download/load, instance workers)
        check = data.head(2000)
        expected = run_local(check)
        for label, run in paths[:2]:
            np.testing.assert_allclose(run(check), expected, rtol=1e-9, err_msg=label)

        seconds: list[float] = []
        results: list[np.ndarray] = []
        for _label, run in paths:
            times = []
            for _ in range(args.repeat):
                start = time.perf_counter()
                result = run(data)
                times.append(time.perf_counter() - start)
            seconds.append(min(times))
            results.append(result)
        http.close()
        # the timed answers too: every path gave all rows, equal on a slice of the end
        for (label, _run), result in zip(paths, results, strict=True):
            assert len(result) == args.rows, f"{label}: {len(result)} rows"
            np.testing.assert_allclose(
                result[-5000:], results[-1][-5000:], rtol=1e-9, err_msg=label
            )

        print(
            f"rows: {args.rows:,}  request rows: {request_rows:,}  cpus: {os.cpu_count()}  "
            f"server workers: {args.num_workers}  instances: 1  python: {sys.version.split()[0]}"
        )
        print(f"{'path':<44}{'seconds':>10}{'rows/s':>14}")
        for (label, _run), secs in zip(paths, seconds, strict=True):
            print(f"{label:<44}{secs:>10.2f}{args.rows / secs:>14,.0f}")
        service_s, json_s, local_s = seconds
        print(f"mv.run service / JSON rows: {json_s / service_s:.2f}x (rows/s)")
        print(f"mv.run service / in-process: {local_s / service_s:.2f}x (rows/s)")
        return 0
    finally:
        try:
            session.sql(f"DROP SERVICE IF EXISTS bench.public.{SERVICE}").collect()
        finally:
            session.close()
            daemon.stop(home)
            if not args.home:
                shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
