"""Models and helpers shared by the inference-server tests (fixtures live in conftest.py).

Model classes defined here travel by value inside the pickle (this module exists only in the
test tree), so the server subprocess loads them without importing the tests.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil

import neve
from neve.server import ServerProcess, start_server


class Toolbox(neve.CustomModel):
    """One model with a method for every behaviour the server must handle."""

    delay_s = 0.1

    @neve.inference_api
    def predict(self, X: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame(
            {"score": X["x"].to_numpy() * 2 + X["n"].to_numpy(), "label": X["name"].str.upper()}
        )

    @neve.inference_api
    def predict_proba(self, X: pd.DataFrame) -> pd.DataFrame:
        p = 1.0 / (1.0 + np.exp(-X["x"].to_numpy(dtype=float)))
        return pd.DataFrame({"p0": 1.0 - p, "p1": p})

    @neve.inference_api
    def embed(self, X: pd.DataFrame) -> pd.DataFrame:
        vectors = [
            np.array([x, n, len(s)], dtype=np.float32)
            for s, x, n in zip(X["name"], X["x"], X["n"], strict=True)
        ]
        return pd.DataFrame({"vec": vectors})

    @neve.inference_api
    def norm(self, X: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame({"norm": np.linalg.norm(np.stack(list(X["v"])), axis=1)})

    @neve.inference_api
    def fail(self, X: pd.DataFrame) -> pd.DataFrame:
        if (X["x"] < 0).any():
            raise ValueError("boom: x must be non-negative")
        return pd.DataFrame({"y": X["x"]})

    @neve.inference_api
    def slow(self, X: pd.DataFrame) -> pd.DataFrame:
        time.sleep(self.delay_s)  # one sleep per batch: a model with a fixed cost per call
        return pd.DataFrame({"y": X["x"].to_numpy() * 10})


#: Workers append one line per ``Tracker.track`` call here: pid, start, end, rows.
TRACK_ENV = "NEVE_TEST_TRACK_FILE"


class Tracker(neve.CustomModel):
    """Batches that tell the test which worker computed them, when, and how many rows."""

    @neve.inference_api
    def track(self, X: pd.DataFrame) -> pd.DataFrame:
        started = time.time()
        time.sleep(float(X["x"].max()) / 1000.0)  # x: milliseconds this batch takes
        path = os.environ.get(TRACK_ENV)
        if path:
            with open(path, "a") as fh:
                fh.write(f"{os.getpid()} {started} {time.time()} {len(X)}\n")
        return pd.DataFrame({"y": X["x"].to_numpy() * 10})

    @neve.inference_api
    def crash(self, X: pd.DataFrame) -> pd.DataFrame:
        if (X["x"] < 0).any():
            os._exit(17)  # the worker process dies mid-batch
        return pd.DataFrame({"y": X["x"]})


def tracked_batches(path: Path, offset: int = 0) -> list[tuple[int, float, float, int]]:
    """The batches ``Tracker.track`` recorded after ``offset`` bytes of its file."""
    if not path.exists():
        return []
    lines = path.read_text()[offset:].splitlines()
    return [(int(p), float(s), float(e), int(n)) for p, s, e, n in (ln.split() for ln in lines)]


def max_overlap(batches: list[tuple[int, float, float, int]]) -> int:
    """The most batches computing at the same moment."""
    events = sorted([(s, 1) for _, s, _, _ in batches] + [(e, -1) for _, _, e, _ in batches])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


TOOLBOX_SAMPLE = pd.DataFrame(
    {"name": ["ab", "cde", "f"], "x": [0.5, 1.5, 2.5], "n": np.array([1, 2, 3], dtype=np.int64)}
)


def linear_truth(a: float, b: float, c: float) -> float:
    return a + 2 * b + 3 * c + 0.5


def serve(model_dir: Path, *, all_workers: bool = False, **opts: object) -> ServerProcess:
    server = start_server(model_dir, **opts)  # type: ignore[arg-type]
    try:
        server.wait_ready(timeout=120, all_workers=all_workers)
    except BaseException:
        server.stop()
        raise
    return server


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of a process and all its descendants."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total


def metric_value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels`` in a /metrics page."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total
