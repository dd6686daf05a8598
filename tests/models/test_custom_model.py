"""Custom models: a neve.CustomModel with an artifact file, an artifact directory and sub-models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from torch import nn

import neve
from neve.errors import (
    InvalidArgumentError,
    ModelSerializationError,
    NotSupportedError,
    ObjectNotFoundError,
)
from neve.models import handler_for_model, load_model, save_model


class Doubler(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2


class ThresholdedClassifier(neve.CustomModel):
    """Scores with a sklearn sub-model, labels with a threshold read from an artifact file."""

    def __init__(self, context: neve.ModelContext) -> None:
        super().__init__(context)
        self.threshold = json.loads(Path(context.path("config")).read_text())["threshold"]

    @neve.inference_api
    def predict(self, X: pd.DataFrame) -> pd.DataFrame:
        score = self.context.model("clf").predict_proba(X[["x1", "x2"]].to_numpy())[:, 1]
        labels = Path(self.context.path("labels"), "names.txt").read_text().split()
        return pd.DataFrame(
            {"label": [labels[int(s > self.threshold)] for s in score], "score": score}
        )

    @neve.inference_api
    def doubled(self, X: pd.DataFrame) -> pd.DataFrame:
        with torch.no_grad():
            out = self.context.models["doubler"](torch.tensor(X.to_numpy(np.float32)))
        return pd.DataFrame({"x1_x2": out.sum(dim=1).numpy()})

    def helper(self, X: pd.DataFrame) -> pd.DataFrame:  # not an inference API
        return X


@pytest.fixture(scope="module")
def training() -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(0)
    x = pd.DataFrame({"x1": rng.normal(size=80), "x2": rng.normal(size=80)})
    return x, (x["x1"] + x["x2"] > 0).astype(int).to_numpy()


@pytest.fixture
def custom_model(training, tmp_path: Path) -> ThresholdedClassifier:
    x, y = training
    config = tmp_path / "src" / "config.json"
    config.parent.mkdir()
    config.write_text(json.dumps({"threshold": 0.7}))
    labels = tmp_path / "src" / "labels"
    labels.mkdir()
    (labels / "names.txt").write_text("low high")
    clf = LogisticRegression().fit(x.to_numpy(), y)
    ctx = neve.ModelContext(
        artifacts={"config": str(config)}, models={"clf": clf}, labels=labels, doubler=Doubler()
    )
    return ThresholdedClassifier(ctx)


def test_custom_model_roundtrip(custom_model, training, tmp_path: Path) -> None:
    x, _ = training
    manifest = save_model(custom_model, tmp_path / "m", sample_input=x)
    assert manifest["model_type"] == "custom"
    assert manifest["framework_packages"] == ["scikit-learn", "torch"]
    options = manifest["handler_options"]
    assert set(options["artifacts"]) == {"config", "labels"}
    assert {n: m["model_type"] for n, m in options["models"].items()} == {
        "clf": "sklearn",
        "doubler": "pytorch",
    }

    # Sub-models live in their own directories, not inside the instance's pickle.
    assert b"LogisticRegression" not in (tmp_path / "m" / "model" / "model.pkl").read_bytes()
    assert (tmp_path / "m" / "model" / "models" / "doubler" / "model.pt").exists()

    loaded = load_model(tmp_path / "m")
    assert sorted(loaded.methods) == ["doubled", "predict"]
    sig = loaded.methods["predict"].signature
    assert [(f.name, f.type) for f in sig.outputs] == [("label", "STRING"), ("score", "DOUBLE")]
    # The rebuilt context points into the model directory, not at the original files.
    ctx = loaded.raw.context
    root = (tmp_path / "m").resolve()
    assert Path(ctx.path("config")).resolve().is_relative_to(root)
    assert (Path(ctx.path("labels")) / "names.txt").read_text() == "low high"
    assert isinstance(ctx.model("clf"), LogisticRegression)
    assert loaded.raw.threshold == 0.7

    got = loaded.call("predict", x.iloc[:30])
    want = custom_model.predict(x.iloc[:30])
    assert list(got["label"]) == list(want["label"])
    np.testing.assert_allclose(got["score"], want["score"])
    np.testing.assert_allclose(
        loaded.call("doubled", x.iloc[:5])["x1_x2"], 2 * (x["x1"] + x["x2"]).iloc[:5], rtol=1e-6
    )


@pytest.mark.e2e  # a fresh interpreter loads the model
def test_custom_model_loads_without_its_source(custom_model, training, tmp_path: Path) -> None:
    """The class and the torch sub-model's class were defined here; a fresh process without
    this file on sys.path still loads and runs the model (they were pickled by value)."""
    x, _ = training
    save_model(custom_model, tmp_path / "m", sample_input=x)
    expected = custom_model.predict(x.iloc[:10])
    x.iloc[:10].to_json(tmp_path / "in.json", orient="records")
    script = textwrap.dedent(
        f"""
        import importlib.util
        assert importlib.util.find_spec({__name__!r}) is None, "test source is importable"
        import pandas as pd
        from neve.models import load_model
        model = load_model({str(tmp_path / "m")!r})
        out = model.call("predict", pd.read_json({str(tmp_path / "in.json")!r}, orient="records"))
        out.to_json({str(tmp_path / "out.json")!r}, orient="records")
        print(type(model.raw).__name__, type(model.raw.context.model("doubler")).__name__)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(Path(neve.__file__).parents[1])}
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["ThresholdedClassifier", "Doubler"]
    got = pd.read_json(tmp_path / "out.json", orient="records")
    assert list(got["label"]) == list(expected["label"])
    np.testing.assert_allclose(got["score"], expected["score"])


def test_loading_in_the_same_process_leaves_the_class_alone(
    custom_model, training, tmp_path: Path
) -> None:
    x, _ = training
    save_model(custom_model, tmp_path / "m", sample_input=x)
    predict_before = ThresholdedClassifier.predict
    loaded = load_model(tmp_path / "m")
    assert ThresholdedClassifier.predict is predict_before
    assert type(loaded.raw) is not ThresholdedClassifier  # a fresh copy of the class
    assert type(loaded.raw).__name__ == "ThresholdedClassifier"


def test_model_context_api(tmp_path: Path) -> None:
    artifact = tmp_path / "a.txt"
    artifact.write_text("x")
    ctx = neve.ModelContext(weights=artifact, clf=LogisticRegression())
    assert ctx.path("weights") == str(artifact.resolve())
    assert ctx["weights"] == ctx.artifacts["weights"]
    assert isinstance(ctx["clf"], LogisticRegression) and ctx.model_ref("clf") is ctx.models["clf"]
    with pytest.raises(ObjectNotFoundError, match="'nope'"):
        ctx.path("nope")
    with pytest.raises(InvalidArgumentError, match="does not exist"):
        neve.ModelContext(artifacts={"gone": tmp_path / "missing.bin"})
    with pytest.raises(InvalidArgumentError, match="not valid"):
        neve.ModelContext(artifacts={"../up": artifact})
    with pytest.raises(InvalidArgumentError, match="ModelContext"):
        ThresholdedClassifier({"config": str(artifact)})


class HoldsALock(neve.CustomModel):
    def __init__(self) -> None:
        super().__init__()
        self.guard = threading.Lock()

    @neve.inference_api
    def predict(self, X: pd.DataFrame) -> pd.DataFrame:
        return X


class NoApi(neve.CustomModel):
    def predict(self, X: pd.DataFrame) -> pd.DataFrame:
        return X


class WrapsUnsupported(neve.CustomModel):
    @neve.inference_api
    def predict(self, X: pd.DataFrame) -> pd.DataFrame:
        return X


def test_bad_custom_models_fail_at_save(tmp_path: Path) -> None:
    sample = pd.DataFrame({"a": [1.0, 2.0]})
    with pytest.raises(ModelSerializationError, match=r"HoldsALock.*attribute 'guard'.*lock"):
        save_model(HoldsALock(), tmp_path / "lock", sample_input=sample)
    assert not (tmp_path / "lock").exists()
    with pytest.raises(InvalidArgumentError, match=r"NoApi has no @neve.inference_api"):
        save_model(NoApi(), tmp_path / "noapi", sample_input=sample)
    with pytest.raises(NotSupportedError, match=r"sub-model 'thing'.*unsupported model type"):
        save_model(
            WrapsUnsupported(neve.ModelContext(models={"thing": {"not": "a model"}})),
            tmp_path / "unsupported",
            sample_input=sample,
        )
    with pytest.raises(InvalidArgumentError, match=r"sub-model 'clf'.*not fitted"):
        save_model(
            WrapsUnsupported(neve.ModelContext(clf=LogisticRegression())),
            tmp_path / "unfitted",
            sample_input=sample,
        )


def test_inference_api_needs_an_input_argument() -> None:
    with pytest.raises(InvalidArgumentError, match="must take the input DataFrame"):

        class NoInput(neve.CustomModel):
            @neve.inference_api
            def predict(self) -> pd.DataFrame:
                return pd.DataFrame()


def test_handler_is_found_for_public_api() -> None:
    model = WrapsUnsupported()
    handler = handler_for_model(model)
    assert handler.model_type == "custom" and handler.methods(model) == ["predict"]
