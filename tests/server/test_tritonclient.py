"""Open Inference Protocol clients as they ship: ``tritonclient.http`` against an instance's V2
routes, with its default binary tensor extension (a JSON header, then raw tensor bytes) and
with ``binary_data=False`` (plain JSON); both give the same answers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from server_helpers import serve

from neve.server import ServerProcess

pytestmark = pytest.mark.e2e  # starts processes: see the Development section

httpclient = pytest.importorskip("tritonclient.http")
triton_utils = pytest.importorskip("tritonclient.utils")


@pytest.fixture(scope="module")
def server(toolbox_dir: Path) -> Iterator[ServerProcess]:
    srv = serve(toolbox_dir, num_workers=1, model_name="toolbox")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator:
    c = httpclient.InferenceServerClient(url=server.url.removeprefix("http://"))
    yield c
    c.close()


def _inputs(binary: bool) -> list:
    names = np.array([b"ab", "cé".encode(), b"f"], dtype=object)
    x = np.array([1.0, 2.0, 3.5], dtype=np.float64)
    n = np.array([1, 2, 3], dtype=np.int64)
    out = []
    for name, arr, datatype in (("name", names, "BYTES"), ("x", x, "FP64"), ("n", n, "INT64")):
        t = httpclient.InferInput(name, list(arr.shape), datatype)
        t.set_data_from_numpy(arr, binary_data=binary)
        out.append(t)
    return out


def test_live_ready_metadata(client) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("toolbox") and client.is_model_ready("predict")
    meta = client.get_model_metadata("predict")
    assert [i["name"] for i in meta["inputs"]] == ["name", "x", "n"]
    assert {o["name"]: o["datatype"] for o in meta["outputs"]} == {
        "score": "FP64",
        "label": "BYTES",
    }


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_default_outputs(client, binary: bool) -> None:
    # No outputs named: the client asks for every output in binary form (binary_data_output).
    result = client.infer("predict", _inputs(binary))
    np.testing.assert_array_equal(result.as_numpy("score"), [3.0, 6.0, 10.0])
    assert [v.decode() for v in result.as_numpy("label")] == ["AB", "CÉ", "F"]


@pytest.mark.parametrize("binary_out", [True, False], ids=["binary-out", "json-out"])
def test_requested_outputs_binary_or_json(client, binary_out: bool) -> None:
    outputs = [httpclient.InferRequestedOutput("vec", binary_data=binary_out)]
    result = client.infer("toolbox", _inputs(True), outputs=outputs, parameters={"method": "embed"})
    vec = result.as_numpy("vec")
    assert vec.dtype == np.float32 and vec.shape == (3, 3)
    np.testing.assert_array_equal(vec[:, 0], [1.0, 2.0, 3.5])
    np.testing.assert_array_equal(vec[:, 2], [2, 2, 1])  # string lengths: "cé" is 2 characters
    # Only the requested output comes back.
    assert result.as_numpy("score") is None
    raw = result.get_response()
    assert [o["name"] for o in raw["outputs"]] == ["vec"]
    assert ("binary_data_size" in raw["outputs"][0].get("parameters", {})) is binary_out


def test_tensor_input_and_compressed_request(client) -> None:
    t = httpclient.InferInput("v", [2, 3], "FP64")
    t.set_data_from_numpy(np.array([[3.0, 4.0, 0.0], [1.0, 2.0, 2.0]]))
    result = client.infer("norm", [t], request_compression_algorithm="gzip")
    np.testing.assert_allclose(result.as_numpy("norm"), [5.0, 3.0])


def test_bad_binary_requests_are_4xx_naming_the_problem(client, server: ServerProcess) -> None:
    import httpx

    t = httpclient.InferInput("x", [3], "FP64")
    t.set_data_from_numpy(np.array([1.0, 2.0, 3.0]))
    with pytest.raises(triton_utils.InferenceServerException) as err:
        client.infer("predict", [t])
    assert "do not match the signature" in str(err.value)

    header = b'{"inputs":[{"name":"x","shape":[2],"datatype":"FP64","parameters":{"binary_data_size":16}}]}'
    for body, length, fragment in (
        (header + b"\0" * 8, len(header), "runs past"),
        (header + b"\0" * 24, len(header), "after the last binary input"),
        (header + b"\0" * 16, len(header) + 500, "the body has"),
        (b"{" + header, len(header) + 1, "not a valid JSON header"),
    ):
        resp = httpx.post(
            f"{server.url}/v2/models/norm/infer",
            content=body,
            headers={"Inference-Header-Content-Length": str(length)},
        )
        assert resp.status_code == 400, resp.text
        assert fragment in resp.json()["error"]
