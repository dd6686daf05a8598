"""sentence-transformers ``SentenceTransformer``: the callable method is ``encode``.

Input is one STRING column (whatever its name); the output is one column, ``output_feature_0``,
whose values are embedding vectors (signature ``FLOAT`` with shape ``[dim]``, 384 for
all-MiniLM-L6-v2). Saved with ``model.save(dir)`` and loaded from that directory, never from the
Hugging Face Hub.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from neve.errors import SignatureError
from neve.models.base import ModelHandler, register_handler

OUTPUT_NAME = "output_feature_0"
DEFAULT_BATCH_SIZE = 32


@register_handler
class SentenceTransformerHandler(ModelHandler):
    model_type = "sentence_transformers"
    threaded_calls = True  # a batch alone uses every core well
    module = "sentence_transformers"
    packages = ["sentence-transformers", "transformers", "torch"]
    gpu_capable = True

    @classmethod
    def can_handle(cls, model: Any) -> bool:
        if "sentence_transformers" not in sys.modules:
            return False
        from sentence_transformers import SentenceTransformer

        return isinstance(model, SentenceTransformer)

    @classmethod
    def methods(cls, model: Any) -> list[str]:
        return ["encode"]

    @classmethod
    def save(cls, model: Any, path: Path) -> dict:
        model.save(str(path), create_model_card=False)
        return {"batch_size": DEFAULT_BATCH_SIZE}

    @classmethod
    def load(cls, path: Path, options: dict, *, device: str = "cpu") -> Any:
        # The directory holds every file the model needs; never reach for the Hub.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(str(path), device=device, local_files_only=True)
        # a plain attribute (not a parameter or sub-module) on the torch module
        vars(model)["_neve_batch_size"] = int(options.get("batch_size", DEFAULT_BATCH_SIZE))
        return model

    @classmethod
    def call(cls, model: Any, method: str, data: pd.DataFrame) -> Any:
        if len(data.columns) != 1:
            raise SignatureError(
                f"method 'encode' takes one STRING column of sentences, got columns "
                f"{list(data.columns)}"
            )
        column = str(data.columns[0])
        sentences = data.iloc[:, 0].tolist()
        for row, sentence in enumerate(sentences):
            if not isinstance(sentence, str):
                raise SignatureError(
                    f"method 'encode': row {row}, column {column!r}: expected STRING, got "
                    f"{type(sentence).__name__} {sentence!r}"
                )
        embeddings = model.encode(
            sentences,
            batch_size=getattr(model, "_neve_batch_size", DEFAULT_BATCH_SIZE),
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return pd.DataFrame({OUTPUT_NAME: list(embeddings)})
