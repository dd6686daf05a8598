"""Built-in handlers. Each module registers its handler; importing a framework happens lazily.

Handlers claim disjoint types, so registration order does not matter: the sklearn handler leaves
XGBoost/LightGBM wrappers to theirs, and the PyTorch handler leaves ``SentenceTransformer``
(also an ``nn.Module``) to the sentence-transformers handler.
"""

from neve.models.frameworks import (  # noqa: F401
    custom,
    huggingface,
    lightgbm,
    sentence_transformers,
    sklearn,
    torch,
    xgboost,
)
