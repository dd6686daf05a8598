"""The server runs in model environments that hold only its own few packages.

A real server is started with an import hook (``sitecustomize`` on PYTHONPATH, so it is active
in the supervisor and in every spawned worker) that refuses the control-plane packages and
records every attempt. Serving requests must work and must not even try to import them.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import httpx
import orjson
import pyarrow as pa
import pytest
from server_helpers import serve

pytestmark = pytest.mark.e2e  # starts processes: see the Development section

# (not "rich": scikit-learn itself probes for it, optionally)
FORBIDDEN = ("sqlalchemy", "httpx", "duckdb", "typer", "alembic", "sqlglot", "ray", "psycopg")


def test_serving_never_imports_control_plane_packages(linear_dir: Path, tmp_path: Path) -> None:
    hook_dir = tmp_path / "hook"
    hook_dir.mkdir()
    attempts = tmp_path / "attempts.txt"
    (hook_dir / "sitecustomize.py").write_text(
        textwrap.dedent(
            f"""
            import os, sys

            FORBIDDEN = {FORBIDDEN!r}

            class Refuse:
                def find_spec(self, name, path=None, target=None):
                    if name.split(".")[0] in FORBIDDEN:
                        with open({str(attempts)!r}, "a") as fh:
                            fh.write(f"{{os.getpid()}} {{name}}\\n")
                        raise ImportError(f"{{name}} is not installed in a model environment")
                    return None

            sys.meta_path.insert(0, Refuse())
            """
        )
    )
    server = serve(linear_dir, num_workers=1, env={"PYTHONPATH": str(hook_dir)})
    try:
        body = orjson.dumps({"data": [[0, 1.0, 2.0, 3.0]]})
        assert httpx.post(f"{server.url}/predict", content=body).status_code == 200
        v2 = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP64", "data": [1, 2, 3]}]}
        assert httpx.post(f"{server.url}/v2/models/model/infer", json=v2).status_code == 200
        table = pa.table({"a": [1.0], "b": [2.0], "c": [3.0]})
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        arrow = {"content-type": "application/vnd.apache.arrow.stream"}
        resp = httpx.post(
            f"{server.url}/predict", content=sink.getvalue().to_pybytes(), headers=arrow
        )
        assert resp.status_code == 200, resp.text
        assert httpx.get(f"{server.url}/metrics").status_code == 200
        assert httpx.get(f"{server.url}/methods").status_code == 200
    finally:
        server.stop()
    tried = attempts.read_text() if attempts.exists() else ""
    assert tried == "", f"the server tried to import: {tried}"
