"""PyTorch ``nn.Module`` (eager or TorchScript); the callable method is ``forward``.

Input mapping: when every input column is a numeric scalar, the columns become one float32
tensor of shape (rows, columns). Otherwise each column becomes one tensor passed positionally
to ``forward`` (a tensor-valued column of shape [d1, ...] gives (rows, d1, ...); integer tensors
stay int64 so token ids work). Output mapping: a tensor (rows,) gives one column, (rows, k) gives
k columns, higher ranks give one tensor-valued column; a tuple/list of tensors gives one column
per element (``output_feature_i``) and a dict (or ``ModelOutput``) one column per key.

Saving: a TorchScript module is saved with ``torch.jit.save``. An eager module is saved whole with
``torch.save`` using cloudpickle, which ships classes defined in scripts, notebooks and test
modules by value; classes from other local modules must be importable where the model is served:
ship them with ``code_paths`` (they are put on ``sys.path`` before loading).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from neve.errors import SignatureError
from neve.models.base import ModelHandler, register_handler
from neve.models.frameworks._util import fresh_pickle_module, pickle_user_code_by_value

MODEL_FILE = "model.pt"


@register_handler
class TorchHandler(ModelHandler):
    model_type = "pytorch"
    threaded_calls = True  # a batch alone uses every core well
    module = "torch"
    packages = ["torch"]
    gpu_capable = True

    @classmethod
    def can_handle(cls, model: Any) -> bool:
        if "torch" not in sys.modules:
            return False
        import torch

        from neve.models.custom import CustomModel

        if not isinstance(model, torch.nn.Module) or isinstance(model, CustomModel):
            return False
        if "sentence_transformers" in sys.modules:
            from sentence_transformers import SentenceTransformer

            return not isinstance(model, SentenceTransformer)
        return True

    @classmethod
    def methods(cls, model: Any) -> list[str]:
        return ["forward"]

    @classmethod
    def save(cls, model: Any, path: Path) -> dict:
        import cloudpickle
        import torch

        path.mkdir(parents=True)
        if isinstance(model, torch.jit.ScriptModule):
            torch.jit.save(model, str(path / MODEL_FILE))
            return {"format": "torchscript"}
        with pickle_user_code_by_value():
            torch.save(model, path / MODEL_FILE, pickle_module=cloudpickle)
        return {"format": "pickle", "class": type(model).__qualname__}

    @classmethod
    def load(cls, path: Path, options: dict, *, device: str = "cpu") -> Any:
        import torch

        file = path / MODEL_FILE
        if options.get("format") == "torchscript":
            model = torch.jit.load(str(file), map_location=device)
        else:
            # Our own file, written by save(): the whole module, so weights_only cannot apply.
            model = torch.load(
                file, map_location=device, weights_only=False, pickle_module=fresh_pickle_module
            )
        return model.to(device).eval()

    @classmethod
    def call(cls, model: Any, method: str, data: pd.DataFrame) -> Any:
        import torch

        device = _device_of(model)
        inputs = [t.to(device) for t in to_tensors(data)]
        # Signature inference calls the caller's own module, maybe still in training mode:
        # run it in eval mode (no dropout, no BatchNorm statistics updates) and restore the mode.
        was_training = model.training
        model.eval()
        try:
            with torch.inference_mode():
                output = getattr(model, method)(*inputs)
        finally:
            model.train(was_training)
        return from_tensors(output)


def to_tensors(data: pd.DataFrame) -> list[Any]:
    """Input columns -> the positional tensors ``forward`` receives (see the module doc)."""
    import torch

    scalar = all(
        pd.api.types.is_numeric_dtype(data[c].dtype) or pd.api.types.is_bool_dtype(data[c].dtype)
        for c in data.columns
    )
    if scalar:
        # torch.tensor copies: pandas (copy-on-write) hands out read-only arrays.
        return [torch.tensor(data.to_numpy(dtype=np.float32))]
    tensors = []
    for col in data.columns:
        values = data[col]
        if pd.api.types.is_numeric_dtype(values.dtype):
            arr = values.to_numpy(dtype=np.float32)
        else:
            arr = np.stack([np.asarray(v) for v in values])
            if arr.dtype.kind in "iu":
                arr = arr.astype(np.int64)
            elif arr.dtype.kind == "f":
                arr = arr.astype(np.float32)
            elif arr.dtype.kind != "b":
                raise SignatureError(
                    f"method 'forward': column {col!r} holds {arr.dtype} values; a PyTorch "
                    "model takes numbers"
                )
        tensors.append(torch.tensor(arr))
    return tensors


def from_tensors(output: Any) -> Any:
    """A ``forward`` result -> an array, or a dict of arrays (one output column each)."""
    import torch

    if isinstance(output, torch.Tensor):
        return output.detach().cpu().numpy()
    if isinstance(output, dict):  # includes transformers' ModelOutput
        return {str(k): from_tensors(v) for k, v in output.items() if v is not None}
    if isinstance(output, list | tuple):
        return {f"output_feature_{i}": from_tensors(v) for i, v in enumerate(output)}
    return np.asarray(output)


def _device_of(model: Any) -> Any:
    import torch

    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")
