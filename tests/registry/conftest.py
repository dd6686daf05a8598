"""Fixtures for registry tests: a small real scikit-learn model, saved model directories."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LinearRegression

from neve.context import admin_context
from neve.models import save_model


@pytest.fixture(scope="module")
def features() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({"a": rng.normal(size=40), "b": rng.normal(size=40)})


@pytest.fixture(scope="module")
def regressor(features: pd.DataFrame) -> LinearRegression:
    target = 3.0 * features["a"] - 2.0 * features["b"] + 0.5
    return LinearRegression().fit(features, target)


@pytest.fixture
def admin():
    return admin_context()


@pytest.fixture
def registry(account):
    account.security.bootstrap()
    return account.registry


@pytest.fixture
def saved(tmp_path: Path, regressor, features):
    """A factory of saved model directories (a new one per call, as each log consumes one)."""
    count = 0

    def make(**kwargs) -> Path:
        nonlocal count
        count += 1
        path = tmp_path / f"saved-{count}"
        save_model(regressor, path, sample_input=features, **kwargs)
        return path

    return make
