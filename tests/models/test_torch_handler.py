"""PyTorch handler: eager and TorchScript modules trained here, saved, loaded on CPU, called."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from neve.errors import SignatureError
from neve.models import load_model, save_model


class Regressor(nn.Module):
    """Defined in the test module: saved by value, so it loads without this file."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(n_in, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, n_out)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SequencePooler(nn.Module):
    """Takes one tensor-valued column (rows, 2, 3) and returns a tuple of two outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.proj(x)  # (rows, 2, 2)
        return h.mean(dim=1), h.sum(dim=(1, 2))


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 30) -> nn.Module:
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(steps):
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
    return model  # left in training mode on purpose: serving must use eval mode


@pytest.fixture(scope="module")
def data() -> tuple[pd.DataFrame, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    x = torch.randn(64, 4)
    y = torch.cat([x @ torch.tensor([[1.0], [-2.0], [0.5], [0.0]]), x[:, :2]], dim=1)
    return pd.DataFrame(x.numpy().astype(np.float64), columns=["f1", "f2", "f3", "f4"]), x, y


def test_eager_module_roundtrip(data, tmp_path: Path) -> None:
    df, x, y = data
    model = train(Regressor(4, 3), x, y)
    manifest = save_model(model, tmp_path / "m", sample_input=df)
    assert model.training, "saving must not change the caller's module mode"
    assert manifest["model_type"] == "pytorch" and manifest["gpu_capable"] is True
    assert manifest["handler_options"]["format"] == "pickle"
    assert manifest["framework_packages"] == ["torch"]

    loaded = load_model(tmp_path / "m", device="cpu")
    assert list(loaded.methods) == ["forward"]
    assert loaded.raw.training is False
    assert all(p.device.type == "cpu" for p in loaded.raw.parameters())
    sig = loaded.methods["forward"].signature
    assert [(f.name, f.type) for f in sig.inputs] == [(c, "DOUBLE") for c in df.columns]
    assert sig.output_names == ["output_feature_0", "output_feature_1", "output_feature_2"]

    out = loaded.call("forward", df.iloc[:20])
    model.eval()
    with torch.no_grad():
        expected = model(x[:20]).numpy()
    np.testing.assert_allclose(out.to_numpy(), expected, rtol=1e-5, atol=1e-6)


def test_torchscript_module(data, tmp_path: Path) -> None:
    df, x, y = data
    model = torch.jit.script(train(Regressor(4, 3), x, y).eval())
    manifest = save_model(model, tmp_path / "m", sample_input=df)
    assert manifest["handler_options"] == {"format": "torchscript"}
    loaded = load_model(tmp_path / "m")
    assert isinstance(loaded.raw, torch.jit.ScriptModule)
    with torch.no_grad():
        expected = model(x[:10]).numpy()
    np.testing.assert_allclose(loaded.call("forward", df.iloc[:10]).to_numpy(), expected, rtol=1e-5)


def test_tensor_column_in_tuple_out(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = SequencePooler().eval()
    batch = np.random.default_rng(0).normal(size=(6, 2, 3)).astype(np.float32)
    sample = pd.DataFrame({"seq": list(batch)})
    save_model(model, tmp_path / "m", sample_input=sample)
    loaded = load_model(tmp_path / "m")

    sig = loaded.methods["forward"].signature
    assert [(f.name, f.type, f.shape) for f in sig.inputs] == [("seq", "FLOAT", [2, 3])]
    assert [(f.name, f.shape) for f in sig.outputs] == [
        ("output_feature_0", [2]),
        ("output_feature_1", None),
    ]
    # Values arrive as JSON lists from HTTP/SQL callers: lists work as well as arrays.
    out = loaded.call("forward", pd.DataFrame({"seq": [b.tolist() for b in batch]}))
    with torch.no_grad():
        mean, total = model(torch.from_numpy(batch))
    np.testing.assert_allclose(np.stack(out["output_feature_0"]), mean.numpy(), rtol=1e-5)
    np.testing.assert_allclose(out["output_feature_1"], total.numpy(), rtol=1e-5)


def test_non_numeric_column_is_a_signature_error(tmp_path: Path) -> None:
    torch.manual_seed(2)
    model = SequencePooler().eval()
    sample = pd.DataFrame({"seq": list(np.zeros((2, 2, 3), dtype=np.float32))})
    save_model(model, tmp_path / "m", sample_input=sample)
    loaded = load_model(tmp_path / "m")
    with pytest.raises(SignatureError, match="'seq'"):
        loaded.call("forward", pd.DataFrame({"seq": [["a", "b", "c"], ["d", "e", "f"]]}))
