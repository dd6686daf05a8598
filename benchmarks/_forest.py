"""The model the SQL and Python service benchmarks share, so their figures compare.

A scikit-learn RandomForestRegressor (50 trees, depth 8, ``N_FEATURES`` float features named
``F0``..``F19``) fitted on 2,000 seeded rows: heavy enough that scoring, not the wire, is most of
a row's cost in-process.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

N_FEATURES = 20
COLUMNS = [f"F{i}" for i in range(N_FEATURES)]


def feature_rows(n: int, seed: int = 1) -> pd.DataFrame:
    """``n`` seeded rows of ``COLUMNS`` to score."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame(rng.normal(size=(n, N_FEATURES)), columns=COLUMNS)


def forest_model(seed: int = 0) -> tuple[object, pd.DataFrame]:
    """A fitted RandomForestRegressor over ``COLUMNS`` (target: the row sum) and 100 of its
    training rows (the sample input to log it with)."""
    from sklearn.ensemble import RandomForestRegressor

    rng = np.random.default_rng(seed)
    train = pd.DataFrame(rng.normal(size=(2000, N_FEATURES)), columns=COLUMNS)
    model = RandomForestRegressor(n_estimators=50, max_depth=8, n_jobs=1, random_state=seed)
    return model.fit(train, train.sum(axis=1)), train.head(100)
