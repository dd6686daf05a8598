"""Open Inference Protocol clients as they ship: ``tritonclient.http`` against an instance's V2
routes, with its default binary tensor extension (a JSON header, then raw tensor bytes) and
with ``binary_data=False`` (plain JSON), and ``tritonclient.grpc`` against its V2 gRPC port
(raw tensor contents, the client's form, and typed contents); all give the same answers."""

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
grpcclient = pytest.importorskip("tritonclient.grpc")


@pytest.fixture(scope="module")
def server(toolbox_dir: Path) -> Iterator[ServerProcess]:
    srv = serve(toolbox_dir, num_workers=1, model_name="toolbox", grpc_port=0)
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


# -------------------------------------------------------------------------------- V2 over gRPC


@pytest.fixture(scope="module")
def grpc_client(server: ServerProcess) -> Iterator:
    c = grpcclient.InferenceServerClient(url=server.grpc_address)
    yield c
    c.close()


def _grpc_inputs() -> list:
    out = []
    for name, arr, datatype in (
        ("name", np.array([b"ab", "cé".encode(), b"f"], dtype=object), "BYTES"),
        ("x", np.array([1.0, 2.0, 3.5], dtype=np.float64), "FP64"),
        ("n", np.array([1, 2, 3], dtype=np.int64), "INT64"),
    ):
        t = grpcclient.InferInput(name, list(arr.shape), datatype)
        t.set_data_from_numpy(arr)
        out.append(t)
    return out


def test_messages_match_the_protocol_as_clients_define_it() -> None:
    # Every message neve defines has the field numbers and types of the client's own copy.
    from tritonclient.grpc import service_pb2 as theirs

    from neve.server.v2_grpc import grpc_predict_v2_pb2 as ours

    def fields(desc, prefix=""):
        out = {prefix + f.name: (f.number, f.type) for f in desc.fields}
        for nested in desc.nested_types:
            out.update(fields(nested, prefix + nested.name + "."))
        return out

    names = list(ours.DESCRIPTOR.message_types_by_name)
    assert {"ModelInferRequest", "ModelInferResponse", "ModelMetadataResponse"} <= set(names)
    for name in names:
        mine = fields(ours.DESCRIPTOR.message_types_by_name[name])
        theirs_fields = fields(theirs.DESCRIPTOR.message_types_by_name[name])
        assert {k: theirs_fields.get(k) for k in mine} == mine, name


def test_grpc_live_ready_metadata(grpc_client, server: ServerProcess) -> None:
    assert grpc_client.is_server_live() and grpc_client.is_server_ready()
    assert grpc_client.is_model_ready("toolbox") and grpc_client.is_model_ready("predict")
    meta = grpc_client.get_model_metadata("predict", as_json=True)
    assert [i["name"] for i in meta["inputs"]] == ["name", "x", "n"]
    assert {o["name"]: o["datatype"] for o in meta["outputs"]} == {
        "score": "FP64",
        "label": "BYTES",
    }
    assert grpc_client.get_server_metadata(as_json=True)["name"] == "neve"
    with pytest.raises(triton_utils.InferenceServerException) as err:
        grpc_client.get_model_metadata("no_such_method")
    assert err.value.status() == "StatusCode.NOT_FOUND"
    assert "no_such_method" in err.value.message()


def test_grpc_infer_equals_http(grpc_client, client) -> None:
    result = grpc_client.infer("predict", _grpc_inputs(), request_id="r-1")
    np.testing.assert_array_equal(result.as_numpy("score"), [3.0, 6.0, 10.0])
    assert [v.decode() for v in result.as_numpy("label")] == ["AB", "CÉ", "F"]
    assert result.get_response().id == "r-1"
    over_http = client.infer("predict", _inputs(True))
    np.testing.assert_array_equal(result.as_numpy("score"), over_http.as_numpy("score"))


def test_grpc_method_by_parameter_and_requested_outputs(grpc_client) -> None:
    outputs = [grpcclient.InferRequestedOutput("vec")]
    result = grpc_client.infer(
        "toolbox", _grpc_inputs(), outputs=outputs, parameters={"method": "embed"}
    )
    vec = result.as_numpy("vec")
    assert vec.dtype == np.float32 and vec.shape == (3, 3)
    np.testing.assert_array_equal(vec[:, 2], [2, 2, 1])
    assert result.as_numpy("score") is None
    # a tensor input, and gzip on the wire
    t = grpcclient.InferInput("v", [2, 3], "FP64")
    t.set_data_from_numpy(np.array([[3.0, 4.0, 0.0], [1.0, 2.0, 2.0]]))
    normed = grpc_client.infer("norm", [t], compression_algorithm="gzip")
    np.testing.assert_allclose(normed.as_numpy("norm"), [5.0, 3.0])


def test_grpc_typed_contents(server: ServerProcess) -> None:
    # Clients other than tritonclient may send typed contents instead of raw bytes.
    import grpc

    from neve.server.v2_grpc import grpc_predict_v2_pb2 as pb
    from neve.server.v2_grpc import method_path

    request = pb.ModelInferRequest(model_name="predict")
    for name, datatype, field, values in (
        ("name", "BYTES", "bytes_contents", [b"ab", b"x"]),
        ("x", "FP64", "fp64_contents", [1.0, 2.0]),
        ("n", "INT64", "int64_contents", [1, 2]),
    ):
        tensor = request.inputs.add(name=name, datatype=datatype, shape=[2])
        getattr(tensor.contents, field).extend(values)
    with grpc.insecure_channel(server.grpc_address) as channel:
        call = channel.unary_unary(
            method_path("ModelInfer"),
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelInferResponse.FromString,
        )
        answer = call(request, timeout=10)
    assert [o.name for o in answer.outputs] == ["score", "label"]
    score = np.frombuffer(answer.raw_output_contents[0], dtype="<f8")
    np.testing.assert_array_equal(score, [3.0, 6.0])


def test_grpc_errors_are_statuses_naming_the_problem(grpc_client) -> None:
    t = grpcclient.InferInput("x", [3], "FP64")
    t.set_data_from_numpy(np.array([1.0, 2.0, 3.0]))
    with pytest.raises(triton_utils.InferenceServerException) as err:
        grpc_client.infer("predict", [t])
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "do not match the signature" in err.value.message()
    negative = _grpc_inputs()
    negative[1].set_data_from_numpy(np.array([1.0, -2.0, 3.5]))
    with pytest.raises(triton_utils.InferenceServerException) as err:
        grpc_client.infer("fail", negative)
    assert err.value.status() == "StatusCode.INTERNAL"
    assert "x must be non-negative" in err.value.message()
