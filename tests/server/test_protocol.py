"""Every request form, every route and every error answer of a real server process."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pyarrow as pa
import pytest
from server_helpers import metric_value, serve

from neve.errors import PayloadTooLargeError, SignatureError, error_from_dict
from neve.server import ServerProcess

pytestmark = pytest.mark.e2e  # starts processes: see the Development section

MAX_BODY = 64 * 1024


@pytest.fixture(scope="module")
def server(toolbox_dir: Path) -> Iterator[ServerProcess]:
    srv = serve(
        toolbox_dir,
        num_workers=1,
        max_body_bytes=MAX_BODY,
        max_queue_rows=500,
        batch_timeout_ms=30,  # long enough that concurrent requests share a batch
        model_name="toolbox",
    )
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


def post(http: httpx.Client, path: str, body: object) -> httpx.Response:
    return http.post(path, content=orjson.dumps(body), headers={"content-type": "application/json"})


def assert_error(resp: httpx.Response, status: int, code: str, *fragments: str) -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/json"
    body = resp.json()
    assert body["code"] == code, body
    for fragment in fragments:
        assert fragment in body["message"], (fragment, body["message"])
    return body


# ------------------------------------------------------------------ request forms


def test_flat_rows_answer_by_index_with_output_names(http: httpx.Client) -> None:
    resp = post(http, "/predict", {"data": [[7, "ab", 1.5, 2], [3, "xyz", -1.0, 10]]})
    assert resp.status_code == 200, resp.text
    assert resp.json() == {
        "data": [[7, {"score": 5.0, "label": "AB"}], [3, {"score": 8.0, "label": "XYZ"}]]
    }


def test_wide_rows_match_names_case_insensitively(http: httpx.Client) -> None:
    rows = [[0, {"NAME": "q", "X": 1.0, "N": 1}], [1, {"name": "rs", "x": 0.25, "n": 0}]]
    resp = post(http, "/predict", {"data": rows})
    assert resp.json()["data"] == [
        [0, {"score": 3.0, "label": "Q"}],
        [1, {"score": 0.5, "label": "RS"}],
    ]


def test_dataframe_split_and_records(http: httpx.Client) -> None:
    split = {
        "columns": ["n", "x", "name"],
        "data": [[1, 2.0, "a"], [2, 0.0, "b"]],
        "index": [10, 11],
    }
    resp = post(http, "/predict", {"dataframe_split": split})
    assert resp.json()["data"] == [
        [10, {"score": 5.0, "label": "A"}],
        [11, {"score": 2.0, "label": "B"}],
    ]
    records = [{"name": "a", "x": 1.0, "n": 0, "ignored": True}, {"name": "b", "x": 2.0, "n": 1}]
    resp = post(http, "/predict", {"dataframe_records": records})
    assert resp.json()["data"] == [
        [0, {"score": 2.0, "label": "A"}],
        [1, {"score": 5.0, "label": "B"}],
    ]


def test_alias_route_multi_output_and_lower_case(http: httpx.Client) -> None:
    for path in ("/predict-proba", "/predict_proba", "/PREDICT_PROBA"):
        resp = post(http, path, {"data": [[0, "a", 0.0, 1]]})
        assert resp.status_code == 200, (path, resp.text)
        assert resp.json()["data"] == [[0, {"p0": 0.5, "p1": 0.5}]]


def test_vector_output_is_a_json_list_and_vector_input(http: httpx.Client) -> None:
    resp = post(http, "/embed", {"data": [[0, "abcd", 1.5, 3]]})
    assert resp.json()["data"] == [[0, {"vec": [1.5, 3.0, 4.0]}]]
    resp = post(http, "/norm", {"data": [[0, [3.0, 4.0, 0.0]], [1, [0, 0, 2]]]})
    assert resp.json()["data"] == [[0, {"norm": 5.0}], [1, {"norm": 2.0}]]


def test_empty_data_answers_no_rows(http: httpx.Client) -> None:
    assert post(http, "/predict", {"data": []}).json() == {"data": []}


# ------------------------------------------------------------------ Arrow IPC (columnar)

ARROW = "application/vnd.apache.arrow.stream"


def arrow_body(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def post_arrow(http: httpx.Client, path: str, table: pa.Table) -> httpx.Response:
    return http.post(path, content=arrow_body(table), headers={"content-type": ARROW})


def read_arrow(resp: httpx.Response) -> pa.Table:
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == ARROW
    return pa.ipc.open_stream(resp.content).read_all()


def test_arrow_columns_in_and_out_equal_the_json_answer(http: httpx.Client) -> None:
    # upper-case names (as SQL sends them), an extra column, a float32 x and int32 n: all fine
    table = pa.table(
        {
            "N": pa.array([2, 10, 0], pa.int32()),
            "NAME": ["ab", "xyz", "q"],
            "X": pa.array([1.5, -1.0, 0.25], pa.float32()),
            "EXTRA": [True, False, True],
        }
    )
    out = read_arrow(post_arrow(http, "/predict", table))
    assert out.column_names == ["score", "label"]
    assert out.column("score").to_pylist() == [5.0, 8.0, 0.5]
    assert out.column("label").to_pylist() == ["AB", "XYZ", "Q"]
    rows = [[0, "ab", 1.5, 2], [1, "xyz", -1.0, 10], [2, "q", 0.25, 0]]
    as_json = post(http, "/predict", {"data": rows}).json()["data"]
    assert [r[1]["score"] for r in as_json] == out.column("score").to_pylist()
    # a vector output comes back as a list column; a vector input is read from one
    vec = read_arrow(post_arrow(http, "/embed", table)).column("vec")
    assert pa.types.is_list(vec.type)
    assert vec.to_pylist() == [[1.5, 2.0, 2.0], [-1.0, 10.0, 3.0], [0.25, 0.0, 1.0]]
    norm = read_arrow(post_arrow(http, "/norm", pa.table({"v": [[3.0, 4.0, 0.0], [0, 0, 2.0]]})))
    assert norm.column("norm").to_pylist() == [5.0, 2.0]
    empty = read_arrow(post_arrow(http, "/predict", table.slice(0, 0)))
    assert empty.num_rows == 0 and empty.column_names == ["score", "label"]


def test_arrow_errors_name_the_column_row_and_format(http: httpx.Client) -> None:
    resp = post_arrow(http, "/predict", pa.table({"name": ["a"], "x": [1.0]}))
    assert_error(resp, 400, "SIGNATURE_MISMATCH", "Arrow input", "missing column(s) ['n']")
    bad_n = pa.table({"name": ["a", "b"], "x": [1.0, 2.0], "n": [1.0, 2.5]})
    assert_error(post_arrow(http, "/predict", bad_n), 400, "SIGNATURE_MISMATCH", "row 1", "whole")
    bools = pa.table({"name": ["a"], "x": [True], "n": [1]})
    assert_error(post_arrow(http, "/predict", bools), 400, "SIGNATURE_MISMATCH", "column 'x'")
    wrong = pa.table({"name": [1], "x": [1.0], "n": [1]})
    assert_error(post_arrow(http, "/predict", wrong), 400, "SIGNATURE_MISMATCH", "column 'name'")
    short = pa.table({"v": [[1.0, 2.0]]})
    assert_error(post_arrow(http, "/norm", short), 400, "SIGNATURE_MISMATCH", "shape [3]")
    garbage = http.post("/predict", content=b"not arrow", headers={"content-type": ARROW})
    assert_error(garbage, 400, "INVALID_ARROW", "not an Arrow IPC stream")
    v2 = http.post("/v2/models/predict/infer", content=b"x", headers={"content-type": ARROW})
    assert_error(v2, 415, "UNSUPPORTED_MEDIA_TYPE", "JSON only")
    failing = pa.table({"name": ["a"], "x": [-1.0], "n": [1]})
    assert_error(post_arrow(http, "/fail", failing), 500, "MODEL_ERROR", "boom")


def test_open_inference_protocol(http: httpx.Client) -> None:
    body = {
        "id": "req-1",
        "inputs": [
            {"name": "name", "shape": [2], "datatype": "BYTES", "data": ["ab", "c"]},
            {"name": "x", "shape": [2], "datatype": "FP64", "data": [1.0, 2.0]},
            {"name": "n", "shape": [2], "datatype": "INT64", "data": [1, 2]},
        ],
    }
    resp = post(http, "/v2/models/predict/infer", body)
    assert resp.status_code == 200, resp.text
    out = resp.json()
    assert out["id"] == "req-1"
    by_name = {o["name"]: o for o in out["outputs"]}
    assert by_name["score"] == {
        "name": "score",
        "datatype": "FP64",
        "shape": [2],
        "data": [3.0, 6.0],
    }
    assert by_name["label"]["data"] == ["AB", "C"]

    # The served model's name routes to the method named in parameters (default: predict).
    body["parameters"] = {"method": "embed"}
    body["outputs"] = [{"name": "vec"}]
    out = post(http, "/v2/models/toolbox/infer", body).json()
    assert out["outputs"] == [
        {"name": "vec", "datatype": "FP32", "shape": [2, 3], "data": [1, 1, 2, 2, 2, 1]}
    ]

    meta = http.get("/v2/models/predict").json()
    assert [i["name"] for i in meta["inputs"]] == ["name", "x", "n"]
    assert meta["outputs"][0] == {"name": "score", "datatype": "FP64", "shape": [-1]}
    assert http.get("/v2/health/live").json() == {"live": True}
    assert http.get("/v2/health/ready").json() == {"ready": True}
    assert http.get("/v2/models/toolbox/ready").json()["ready"] is True
    assert http.get("/v2").json()["name"] == "neve"


def test_v2_matrix_input_and_errors(http: httpx.Client) -> None:
    body = {"inputs": [{"name": "m", "shape": [1, 3], "datatype": "FP64", "data": [[3, 4, 0]]}]}
    out = post(http, "/v2/models/norm/infer", body).json()
    assert out["outputs"][0]["data"] == [5.0]
    resp = post(
        http, "/v2/models/predict/infer", {"inputs": [{"name": "zzz", "shape": [1], "data": [1]}]}
    )
    assert_error(resp, 400, "SIGNATURE_MISMATCH", "do not match the signature", "name")
    assert resp.json()["error"] == resp.json()["message"]  # the V2 spelling of the message
    resp = post(http, "/v2/models/nosuch/infer", body)
    assert_error(resp, 404, "NOT_FOUND", "nosuch")


def test_health_ready_methods_metrics(http: httpx.Client, server: ServerProcess) -> None:
    assert http.get("/health").json()["status"] == "alive"
    ready = http.get("/ready").json()
    assert ready["status"] == "ready" and ready["model_type"] == "custom"
    assert ready["pid"] == server.pid  # the front answers; the workers compute
    workers = http.get("/workers").json()["workers"]
    assert [w["pid"] for w in workers] == server.worker_pids() and workers[0]["ready"]
    methods = http.get("/methods").json()["methods"]
    assert sorted(methods) == ["embed", "fail", "norm", "predict", "predict_proba", "slow"]
    assert methods["predict_proba"]["routes"] == ["/predict_proba", "/predict-proba"]
    assert [f["name"] for f in methods["predict"]["signature"]["inputs"]] == ["name", "x", "n"]
    post(http, "/predict", {"data": [[0, "a", 1.0, 1], [1, "b", 2.0, 2]]})
    page = http.get("/metrics")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/plain")
    text = page.text
    assert metric_value(text, "neve_server_requests_total", method="predict", status="200") >= 1
    assert metric_value(text, "neve_server_rows_total", method="predict") >= 2
    assert metric_value(text, "neve_server_request_latency_seconds_count", method="predict") >= 1
    assert metric_value(text, "neve_server_batch_rows_count", method="predict") >= 1
    assert "neve_server_queue_rows" in text


# ------------------------------------------------------------------ errors


def test_malformed_json_and_missing_data(http: httpx.Client) -> None:
    resp = http.post(
        "/predict", content=b'{"data": [[0, "a", 1.0', headers={"content-type": "application/json"}
    )
    assert_error(resp, 400, "INVALID_JSON", "not valid JSON")
    assert_error(post(http, "/predict", {"rows": []}), 400, "MISSING_DATA", '"data"', "rows")
    assert_error(post(http, "/predict", [1, 2]), 400, "INVALID_REQUEST", "JSON object")
    assert_error(post(http, "/predict", {"data": {"a": 1}}), 400, "INVALID_REQUEST", "list of rows")


def test_wrong_arity_names_the_row(http: httpx.Client) -> None:
    resp = post(http, "/predict", {"data": [[0, "a", 1.0, 1], [5, "b", 2.0]]})
    body = assert_error(
        resp, 400, "SIGNATURE_MISMATCH", "row 1 (index 5)", "2 argument(s)", "3 argument(s)"
    )
    assert isinstance(error_from_dict(body), SignatureError)


def test_wrong_type_names_row_and_column(http: httpx.Client) -> None:
    resp = post(http, "/predict", {"data": [[0, "a", 1.0, 1], [1, "b", "oops", 2]]})
    assert_error(resp, 400, "SIGNATURE_MISMATCH", "row 1", "column 'x'", "DOUBLE", "'oops'")
    resp = post(http, "/predict", {"data": [[0, 42, 1.0, 1]]})
    assert_error(resp, 400, "SIGNATURE_MISMATCH", "row 0", "column 'name'", "STRING")
    resp = post(http, "/predict", {"data": [[0, "a", 1.0, 1.5]]})
    assert_error(resp, 400, "SIGNATURE_MISMATCH", "column 'n'", "INT64", "whole number")
    resp = post(http, "/predict", {"data": [[0, {"name": "a", "x": 1.0}]]})
    assert_error(resp, 400, "SIGNATURE_MISMATCH", "row 0 (index 0)", "missing column 'n'")
    resp = post(http, "/norm", {"data": [[0, [1.0, 2.0]]]})
    assert_error(resp, 400, "SIGNATURE_MISMATCH", "column 'v'", "shape [3]")
    resp = post(http, "/predict", {"dataframe_split": {"columns": ["x"], "data": [[1.0]]}})
    assert_error(resp, 400, "SIGNATURE_MISMATCH", "missing column(s) ['name', 'n']")


def test_the_time_a_body_takes_to_arrive_counts_against_the_budget(http: httpx.Client) -> None:
    """X-Neve-Timeout (what a proxy passes) covers receiving the body too: a body that takes
    longer than the budget to arrive is refused, though the queue is empty."""
    body = orjson.dumps({"data": [[0, "a", 1.0, 1]]})

    def trickled():
        for k in range(0, len(body), 4):  # 8 parts, 0.4 s in all
            time.sleep(0.05)
            yield body[k : k + 4]

    for budget, status in (("0.2", 503), ("30", 200)):
        resp = http.post(
            "/predict",
            content=trickled(),
            headers={"content-type": "application/json", "x-neve-timeout": budget},
        )
        assert resp.status_code == status, resp.text
    assert_error(
        http.post("/predict", content=trickled(), headers={"x-neve-timeout": "0.2"}),
        503,
        "QUEUE_TIMEOUT",
    )


def test_unknown_method_and_route(http: httpx.Client) -> None:
    assert_error(post(http, "/nosuch", {"data": []}), 404, "NOT_FOUND", "'nosuch'", "predict")
    assert_error(http.get("/a/b/c"), 404, "NOT_FOUND")
    assert_error(http.get("/predict"), 405, "METHOD_NOT_ALLOWED")


def test_oversized_body_and_row_count(http: httpx.Client) -> None:
    big = {"data": [[i, "x" * 100, 1.0, 1] for i in range(1000)]}  # > 64 KiB
    body = assert_error(post(http, "/predict", big), 413, "PAYLOAD_TOO_LARGE", str(MAX_BODY))
    assert isinstance(error_from_dict(body), PayloadTooLargeError)
    many = {"data": [[i, "", 1.0, 1] for i in range(501)]}  # more rows than the queue holds
    assert_error(post(http, "/predict", many), 413, "PAYLOAD_TOO_LARGE", "501 rows", "500")

    def chunked() -> Iterator[bytes]:  # no Content-Length: the limit applies while reading
        for _ in range(100):
            yield b" " * 1024

    resp = http.post("/predict", content=chunked(), headers={"content-type": "application/json"})
    assert_error(resp, 413, "PAYLOAD_TOO_LARGE")
    assert post(http, "/predict", {"data": [[0, "a", 1.0, 1]]}).status_code == 200


def test_model_exception_is_500_and_worker_keeps_serving(
    http: httpx.Client, server: ServerProcess
) -> None:
    pids = server.worker_pids()
    resp = post(http, "/fail", {"data": [[0, "a", -1.0, 1]]})
    assert_error(resp, 500, "MODEL_ERROR", "ValueError", "boom: x must be non-negative")
    assert post(http, "/fail", {"data": [[0, "a", 2.0, 1]]}).json()["data"] == [[0, {"y": 2.0}]]
    assert server.worker_pids() == pids  # the same worker, still serving
    assert http.get("/workers").json()["restarts"] == 0


async def _concurrent_fail_and_ok(url: str) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        bad = {"data": [[0, "a", -1.0, 1]]}
        good = [{"data": [[i, "a", float(i), 1]]} for i in range(1, 6)]
        return await asyncio.gather(
            *(client.post("/fail", content=orjson.dumps(b)) for b in [bad, *good])
        )


def test_failing_request_does_not_fail_its_batch_neighbours(server: ServerProcess) -> None:
    responses = asyncio.run(_concurrent_fail_and_ok(server.url))
    assert responses[0].status_code == 500
    for i, resp in enumerate(responses[1:], start=1):
        assert resp.status_code == 200, resp.text
        assert resp.json()["data"] == [[i, {"y": float(i)}]]
