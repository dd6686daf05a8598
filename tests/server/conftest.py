"""Fixtures for the inference-server tests: small real models saved once per session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from server_helpers import TOOLBOX_SAMPLE, Toolbox, Tracker, serve

from neve.models import FeatureSpec, ModelSignature, save_model
from neve.server import ServerProcess


@pytest.fixture(scope="session")
def linear_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """scikit-learn LinearRegression fitted to y = a + 2b + 3c + 0.5 (exact predictions)."""
    from sklearn.linear_model import LinearRegression

    rng = np.random.default_rng(0)
    X = pd.DataFrame(rng.random((64, 3)), columns=["a", "b", "c"])
    y = X["a"] + 2 * X["b"] + 3 * X["c"] + 0.5
    path = tmp_path_factory.mktemp("linear") / "model"
    save_model(
        LinearRegression().fit(X, y),
        path,
        sample_input=X,
        method_options={"predict": {"max_batch_size": 16}},
    )
    return path


@pytest.fixture(scope="session")
def toolbox_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("toolbox") / "model"
    vector_sig = ModelSignature(
        inputs=[FeatureSpec("v", "DOUBLE", [3])], outputs=[FeatureSpec("norm", "DOUBLE")]
    )
    save_model(
        Toolbox(),
        path,
        sample_input=TOOLBOX_SAMPLE,
        target_methods=["predict", "predict_proba", "embed", "norm", "fail", "slow"],
        signatures={"norm": vector_sig},
    )
    return path


@pytest.fixture(scope="session")
def tracker_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tracker") / "model"
    save_model(Tracker(), path, sample_input=TOOLBOX_SAMPLE, target_methods=["track", "crash"])
    return path


@pytest.fixture
def serve_and_stop() -> Iterator:
    started: list[ServerProcess] = []

    def _serve(model_dir: Path, **opts: object) -> ServerProcess:
        server = serve(model_dir, **opts)
        started.append(server)
        return server

    yield _serve
    for server in started:
        server.stop()
