"""Many-model forecasting: one model per store, fitted inside a partitioned method.

    python examples/many_model_forecast.py          (uses NEVE_HOME, default ~/.neve)

``StoreForecaster.forecast`` is a table function (``@neve.partitioned_api``): it receives all
rows of one store, fits that store's trend and weekly pattern, and returns ``horizon`` rows of
forecasts. The same method runs three ways, and the three answers are compared:

1. in this process: ``mv.run(sales, function_name="forecast", partition_column="store_id")``
2. on a service: the same call with ``service_name=``; each store is one instance call
3. from SQL: ``SELECT * FROM sales, TABLE(svc!forecast(...) OVER (PARTITION BY store_id))``,
   and the warehouse form ``TABLE(MODEL(store_forecaster, v1)!forecast(...) OVER (...))``
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

import neve

STORES = 100
DAYS = 56


class StoreForecaster(neve.CustomModel):
    """Per store: a least-squares trend plus a day-of-week offset, ``horizon`` days ahead."""

    @neve.partitioned_api
    def forecast(self, X: pd.DataFrame, *, horizon: int = 7) -> pd.DataFrame:
        day = X["day"].to_numpy(dtype=float)
        sales = X["sales"].to_numpy(dtype=float)
        slope, intercept = np.polyfit(day, sales, 1)
        residual = sales - (slope * day + intercept)
        weekday = pd.Series(residual).groupby(day.astype(int) % 7).mean()
        ahead = np.arange(day.max() + 1, day.max() + 1 + horizon)
        season = weekday.reindex(ahead.astype(int) % 7).fillna(0.0).to_numpy()
        return pd.DataFrame(
            {"day": ahead.astype(np.int64), "forecast": slope * ahead + intercept + season}
        )


def step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def store_sales(stores: int = STORES, days: int = DAYS, seed: int = 7) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frames = []
    for store in range(1, stores + 1):
        day = np.arange(days)
        level, trend = rng.uniform(50, 150), rng.uniform(-0.5, 1.5)
        weekly = rng.uniform(0, 20) * (day % 7 >= 5)
        sales = level + trend * day + weekly + rng.normal(0, 3, days)
        frames.append(pd.DataFrame({"store_id": store, "day": day, "sales": sales}))
    return pd.concat(frames, ignore_index=True).astype({"store_id": np.int64, "day": np.int64})


def ordered(df: pd.DataFrame) -> pd.DataFrame:
    cols = {c.lower(): c for c in df.columns}
    out = df.rename(columns={v: k for k, v in cols.items()})[["store_id", "day", "forecast"]]
    return out.sort_values(["store_id", "day"]).reset_index(drop=True)


def main() -> None:
    t0 = time.perf_counter()
    session = neve.connect()
    reg = neve.Registry(session, database_name="ml", schema_name="registry")
    sales = store_sales()
    print(f"{sales.store_id.nunique()} stores x {DAYS} days = {len(sales)} rows")

    step("log the forecaster (the signature is inferred from one store's rows)")
    mv = reg.log_model(
        StoreForecaster(),
        model_name="store_forecaster",
        version_name="v1",
        sample_input_data=sales[sales.store_id == 1],
        task=neve.Task.TABULAR_REGRESSION,
    )
    for f in mv.show_functions():
        print(f["name"], f["target_method_function_type"], "partitioned:", f["is_partitioned"])
        print("  params:", f["signature"].params)

    step("1. in-process: one call per store")
    local = ordered(mv.run(sales, function_name="forecast", partition_column="store_id"))
    print(local.head(8).to_string(index=False))
    print(f"{len(local)} forecast rows for {local.store_id.nunique()} stores")
    longer = mv.run(
        sales[sales.store_id <= 2],
        function_name="forecast",
        partition_column="store_id",
        params={"horizon": 14},
    )
    print(f"params={{'horizon': 14}}: {len(longer)} rows for 2 stores")

    step("2. on a service: each store is one instance call")
    session.sql(
        "CREATE COMPUTE POOL IF NOT EXISTS forecast_pool MIN_NODES=1 MAX_NODES=1 "
        "INSTANCE_FAMILY='CPU_X64_S'"
    ).collect()
    svc = "store_forecast_svc"
    mv.create_service(
        service_name=svc, service_compute_pool="forecast_pool", max_instances=1, num_workers=2
    )  # no image_repo: the schema's default repository
    remote = ordered(
        mv.run(sales, function_name="forecast", partition_column="store_id", service_name=svc)
    )
    print(f"{len(remote)} forecast rows from the service")
    remote_longer = mv.run(
        sales[sales.store_id <= 2],
        function_name="forecast",
        partition_column="store_id",
        params={"horizon": 14},
        service_name=svc,
    )
    pd.testing.assert_frame_equal(ordered(longer), ordered(remote_longer), check_dtype=False)
    print(f"params={{'horizon': 14}} on the service: {len(remote_longer)} rows, as in-process")

    step("3. from SQL: TABLE(... OVER (PARTITION BY store_id))")
    session.sql("CREATE OR REPLACE TABLE store_sales (store_id BIGINT, day BIGINT, sales DOUBLE)")
    session.write_pandas(sales, "store_sales")
    by_service = ordered(
        session.sql(
            f"SELECT * FROM store_sales, TABLE({svc}!forecast(store_id, day, sales) "
            "OVER (PARTITION BY store_id))"
        ).to_pandas()
    )
    by_model = ordered(
        session.sql(
            "SELECT * FROM store_sales, TABLE(MODEL(store_forecaster, v1)!forecast(store_id, day, "
            "sales) OVER (PARTITION BY store_id))"
        ).to_pandas()
    )
    print(by_model.head(4).to_string(index=False))
    sql_longer = session.sql(
        f"SELECT * FROM (SELECT * FROM store_sales WHERE store_id <= 2), "
        f"TABLE({svc}!forecast(store_id, day, sales, horizon => 14) OVER (PARTITION BY store_id))"
    ).to_pandas()
    pd.testing.assert_frame_equal(ordered(longer), ordered(sql_longer), check_dtype=False)
    print(f"horizon => 14 in SQL: {len(sql_longer)} rows, as in-process")

    step("the three agree")
    for name, other in (("service", remote), ("SQL service", by_service), ("SQL model", by_model)):
        pd.testing.assert_frame_equal(local, other, check_dtype=False, rtol=1e-9)
        print(f"in-process == {name}: {len(other)} rows")
    print("in-process, service and SQL forecasts agree for", local.store_id.nunique(), "stores")

    mv.delete_service(svc)
    print(f"\nfinished in {time.perf_counter() - t0:.1f}s (account: {session.account_home})")


if __name__ == "__main__":
    main()
