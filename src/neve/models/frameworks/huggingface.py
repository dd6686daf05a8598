"""Hugging Face ``transformers`` pipelines (text-classification, feature-extraction, ...).

A pipeline is called as ``pipeline(inputs)``; neve exposes that call as the method ``predict``
for every task, so routes and SQL functions look the same as for other models
(``/predict``, ``<service>_predict``).

Input: one column gives a list of its values (the usual case: sentences); several columns give
a list of row dicts (e.g. ``text`` + ``text_pair``, ``question`` + ``context``).
Output, per input row: a dict (or a list holding exactly one dict, as text generation returns)
becomes one column per key (``label``, ``score``; nested values as JSON strings); a nested list of
numbers becomes one tensor-valued column ``output_feature_0`` (feature-extraction gives a
``[tokens, hidden]`` array per row, signature shape ``[-1, hidden]``); a list of several dicts
(e.g. ``top_k=None`` scores, token classification) becomes a JSON string in
``output_feature_0``; a scalar becomes ``output_feature_0``.

Saved with ``pipeline.save_pretrained(dir)`` plus the task and the pipeline's call parameters
(e.g. ``top_k``); loaded with ``transformers.pipeline(task, model=dir)``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from neve.models.base import ModelHandler, register_handler

METHOD = "predict"
OUTPUT_NAME = "output_feature_0"


@register_handler
class HuggingFacePipelineHandler(ModelHandler):
    model_type = "huggingface_pipeline"
    threaded_calls = True  # a batch alone uses every core well
    module = "transformers"
    packages = ["transformers", "torch"]
    gpu_capable = True

    @classmethod
    def can_handle(cls, model: Any) -> bool:
        if "transformers" not in sys.modules:
            return False
        from transformers import Pipeline

        return isinstance(model, Pipeline)

    @classmethod
    def methods(cls, model: Any) -> list[str]:
        return [METHOD]

    @classmethod
    def extra_packages(cls, model: Any) -> list[str]:
        # Slow SentencePiece tokenizers (T5, XLM-R, ...) hold an ``sp_model`` and need the
        # sentencepiece distribution at load time; fast (Rust) tokenizers do not.
        if getattr(getattr(model, "tokenizer", None), "sp_model", None) is not None:
            return ["sentencepiece"]
        return []

    @classmethod
    def save(cls, model: Any, path: Path) -> dict:
        model.save_pretrained(str(path))
        return {"task": model.task, "pipeline_kwargs": _call_parameters(model)}

    @classmethod
    def load(cls, path: Path, options: dict, *, device: str = "cpu") -> Any:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import transformers

        pipe = transformers.pipeline(
            options["task"], model=str(path), device=device, **options.get("pipeline_kwargs", {})
        )
        pipe.model.eval()
        return pipe

    @classmethod
    def call(cls, model: Any, method: str, data: pd.DataFrame) -> Any:
        if len(data.columns) == 1:
            inputs: list = [_python(v) for v in data.iloc[:, 0]]
        else:
            inputs = [
                {str(k): _python(v) for k, v in row.items()} for row in data.to_dict("records")
            ]
        outputs = model(inputs)
        if not isinstance(outputs, list) or len(outputs) != len(inputs):
            outputs = [outputs]  # some tasks return a bare result for a single input
        return outputs_to_frame(outputs)


def outputs_to_frame(outputs: list) -> pd.DataFrame:
    """One pipeline result per input row -> output columns (see the module doc)."""
    if outputs and all(
        isinstance(o, list) and len(o) == 1 and isinstance(o[0], dict) for o in outputs
    ):
        outputs = [o[0] for o in outputs]  # one candidate per row (text generation, top_k=1)
    if all(isinstance(o, dict) for o in outputs):
        return pd.DataFrame.from_records([{k: _cell(v) for k, v in o.items()} for o in outputs])
    return pd.DataFrame({OUTPUT_NAME: [_value(o) for o in outputs]})


def _value(output: Any) -> Any:
    if _holds_dicts(output):
        return json.dumps(_jsonable(output))
    if isinstance(output, list | tuple | np.ndarray) or _is_tensor(output):
        try:
            arr = np.asarray(
                output.detach().cpu() if _is_tensor(output) else output, dtype=np.float32
            )
        except (TypeError, ValueError):  # not numbers (e.g. a list of strings)
            return json.dumps(_jsonable(output))
        # Pipelines keep a batch axis of size 1 per input: drop it.
        return arr[0] if arr.ndim > 1 and arr.shape[0] == 1 else arr
    return _python(output)


def _call_parameters(pipe: Any) -> dict:
    # Parameters given when the pipeline was built (top_k, function_to_apply, ...) live in
    # these three dicts; keep the JSON-serializable public ones so the reload behaves the same.
    params: dict = {}
    for attr in ("_preprocess_params", "_forward_params", "_postprocess_params"):
        for key, value in (getattr(pipe, attr, None) or {}).items():
            if key.startswith("_"):
                continue
            try:
                json.dumps(value)
            except TypeError:
                continue
            params[key] = value
    return params


def _holds_dicts(value: Any) -> bool:
    if isinstance(value, dict):
        return True
    if isinstance(value, list | tuple):
        return any(_holds_dicts(v) for v in value)
    return False


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray) or _is_tensor(value):
        return _jsonable(value.tolist())
    return _python(value)


def _cell(value: Any) -> Any:
    if isinstance(value, dict | list | tuple):
        return json.dumps(_jsonable(value))
    return _python(value)


def _python(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _is_tensor(value: Any) -> bool:
    return type(value).__module__.startswith("torch") and hasattr(value, "detach")
