"""Forecasting with XGBoost: train, log to the registry, run in-process.

    python examples/xgboost_forecast.py          (uses NEVE_HOME, default ~/.neve)

Each step is a function taking and returning the objects later steps need, so more steps
(deploying the model as a service, calling it from SQL and over HTTP) can be added after
``run_in_process`` and called from ``main``.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import xgboost as xgb

import neve

FEATURES = ["a", "b", "c", "d"]


@dataclass
class Forecast:
    session: Any
    registry: Any
    model: xgb.XGBRegressor
    train: pd.DataFrame
    test: pd.DataFrame
    version: Any = None  # the logged ModelVersion


def step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def synthetic_sales(days: int = 730, seed: int = 0) -> pd.DataFrame:
    """Daily sales driven by price (a), promotion (b), weekly season (c, d) and noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(days)
    frame = pd.DataFrame(
        {
            "a": rng.uniform(8.0, 12.0, days),  # price
            "b": rng.integers(0, 2, days).astype(np.float64),  # promotion running
            "c": np.sin(2 * np.pi * t / 7),  # weekly season
            "d": np.cos(2 * np.pi * t / 7),
        }
    )
    frame["sales"] = (
        200.0
        - 9.0 * frame["a"]
        + 35.0 * frame["b"]
        + 20.0 * frame["c"]
        + 5.0 * frame["d"]
        + rng.normal(0.0, 3.0, days)
    )
    return frame


def train_model() -> tuple[xgb.XGBRegressor, pd.DataFrame, pd.DataFrame]:
    step("train an XGBoost forecaster on two years of synthetic daily sales")
    data = synthetic_sales()
    train, test = data.iloc[:-14], data.iloc[-14:]
    model = xgb.XGBRegressor(n_estimators=200, max_depth=4, learning_rate=0.1)
    model.fit(train[FEATURES], train["sales"])
    rmse = float(np.sqrt(np.mean((model.predict(test[FEATURES]) - test["sales"]) ** 2)))
    print(f"trained on {len(train)} days; holdout RMSE over the last 14 days: {rmse:.2f}")
    return model, train, test


def connect_and_log(model: xgb.XGBRegressor, train: pd.DataFrame, test: pd.DataFrame) -> Forecast:
    step("connect and log the model (the database and schema are created if missing)")
    session = neve.connect()
    registry = neve.Registry(session, database_name="ml", schema_name="registry")
    holdout_rmse = float(np.sqrt(np.mean((model.predict(test[FEATURES]) - test["sales"]) ** 2)))
    mv = registry.log_model(
        model,
        model_name="sales_forecast",
        conda_dependencies=["xgboost"],
        sample_input_data=train[FEATURES],
        comment="daily sales from price, promotion and weekday",
        metrics={"holdout_rmse": holdout_rmse},
    )
    print(f"logged {mv.fully_qualified_model_name} version {mv.version_name}")
    print(f"target platforms: {mv.target_platforms}")
    print("dependencies:", ", ".join(mv.dependencies))
    print(pd.DataFrame(mv.show_functions())[["name", "target_method"]].to_string(index=False))
    return Forecast(session, registry, model, train, test, version=mv)


def run_in_process(f: Forecast) -> pd.DataFrame:
    step("run the model in this process (warehouse mode)")
    result = f.version.run(f.test[FEATURES], function_name="predict")
    result["actual"] = f.test["sales"].to_numpy()
    print(result.astype("float64").round(2).to_string(index=False))
    expected = f.model.predict(f.test[FEATURES])
    assert np.allclose(result["output_feature_0"], expected, rtol=1e-5)
    print(f"in-process forecasts match the trained model for {len(result)} days")
    return result


def main() -> int:
    model, train, test = train_model()
    forecast = connect_and_log(model, train, test)
    run_in_process(forecast)
    # Later sections (create_service, SQL service functions, HTTP ingress) go here.
    forecast.session.close()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
