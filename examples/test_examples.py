"""Run each example as a user would (a subprocess, on its own fresh NEVE_HOME) and check its output.

Each example connects with ``neve.connect()``, which starts a control plane daemon for the
account directory; the test stops it afterwards.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from account_processes import stop_account_processes

pytestmark = pytest.mark.e2e  # starts processes: see the Development section

EXAMPLES = Path(__file__).resolve().parent


def run_example(name: str, home: Path, timeout: float = 240) -> str:

    env = {**os.environ, "NEVE_HOME": str(home), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    try:
        proc = subprocess.run(
            [sys.executable, str(EXAMPLES / name)],
            env=env,
            cwd=EXAMPLES.parent,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    finally:
        stop_account_processes(home)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{name} failed ({proc.returncode}):\n{output[-4000:]}"
    return proc.stdout


@pytest.mark.slow
def test_xgboost_forecast(tmp_path: Path) -> None:
    out = run_example("xgboost_forecast.py", tmp_path / "home")
    assert "logged ML.REGISTRY.SALES_FORECAST version V1" in out
    assert "target platforms: ['WAREHOUSE', 'SERVICE']" in out
    assert "xgboost==" in out and "PREDICT" in out
    assert "in-process forecasts match the trained model for 14 days" in out
    assert "output_feature_0" in out and "actual" in out


@pytest.mark.slow
def test_sentence_embeddings(tmp_path: Path) -> None:
    out = run_example("sentence_embeddings.py", tmp_path / "home")
    assert "logged ML.REGISTRY.MINILM_EMBEDDINGS version V1" in out
    assert "4 sentences -> embedding dimension: 384" in out
    assert "ENCODE" in out
    assert "in-process embeddings match the original model" in out


@pytest.mark.slow
def test_many_model_forecast(tmp_path: Path) -> None:
    out = run_example("many_model_forecast.py", tmp_path / "home")
    assert "100 stores x 56 days = 5600 rows" in out
    assert "FORECAST TABLE_FUNCTION partitioned: True" in out
    assert "700 forecast rows for 100 stores" in out
    assert "params={'horizon': 14}: 28 rows for 2 stores" in out
    assert "params={'horizon': 14} on the service: 28 rows, as in-process" in out
    assert "horizon => 14 in SQL: 28 rows, as in-process" in out
    for form in ("service", "SQL service", "SQL model"):
        assert f"in-process == {form}: 700 rows" in out
    assert "in-process, service and SQL forecasts agree for 100 stores" in out
