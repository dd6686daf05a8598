"""Service calls written as for snowflake-ml-python, on a real service: ``create_service``
without ``image_repo`` (the schema's default repository), ``run(..., service_name=, params=)``,
method parameters over the HTTP ingress, and ``tritonclient.http`` through the ingress in
binary and JSON modes."""

from __future__ import annotations

import httpx
import numpy as np
import pandas as pd
import pytest
from account_processes import daemon_session

import neve

pytestmark = pytest.mark.e2e  # starts processes: see the Development section

SVC = "SCALER_SVC"


class Scaler(neve.CustomModel):
    @neve.inference_api
    def predict(self, X: pd.DataFrame, *, scale: float = 1.0) -> pd.DataFrame:
        return pd.DataFrame({"y": X["a"] * scale})


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    with daemon_session(tmp_path_factory.mktemp("compat-svc-home")) as sess:
        yield sess


def test_service_calls_as_reference_code_writes_them(session) -> None:
    reg = neve.Registry(session, database_name="ml", schema_name="reg")
    data = pd.DataFrame({"a": [1.0, 2.0, 3.0]})
    mv = reg.log_model(Scaler(), model_name="scaler", version_name="v1", sample_input_data=data)
    session.sql(
        "CREATE COMPUTE POOL IF NOT EXISTS compat_pool MIN_NODES = 1 MAX_NODES = 1 "
        "INSTANCE_FAMILY = 'CPU_X64_S'"
    ).collect()
    # No image_repo: the reference falls back to a default repository, so does neve.
    mv.create_service(
        service_name=SVC, service_compute_pool="compat_pool", ingress_enabled=True, num_workers=1
    )
    repos = session.sql("SHOW IMAGE REPOSITORIES IN SCHEMA ml.reg").collect()
    assert "NEVE_DEFAULT_IMAGES" in {r["name"] for r in repos}

    plain = mv.run(data, function_name="predict", service_name=SVC)
    assert list(plain["y"]) == [1.0, 2.0, 3.0]
    scaled = mv.run(data, function_name="predict", service_name=SVC, params={"scale": 10})
    pd.testing.assert_frame_equal(
        scaled, mv.run(data, function_name="predict", params={"scale": 10})
    )
    with pytest.raises(ValueError, match="no parameter"):
        mv.run(data, function_name="predict", service_name=SVC, params={"temperature": 1})
    strict = mv.run(data, function_name="predict", service_name=SVC, strict_input_validation=True)
    assert list(strict["y"]) == [1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="strict_input_validation"):
        mv.run(
            data.astype(str),
            function_name="predict",
            service_name=SVC,
            strict_input_validation=True,
        )

    # SQL: `name => constant` after the arguments, for service and model functions
    session.write_pandas(data, "numbers")
    got = session.sql(f"SELECT a, {SVC}_predict(a, scale => 2) AS y FROM numbers ORDER BY a")
    assert [r["Y"] for r in got.collect()] == [2.0, 4.0, 6.0]
    got = session.sql("SELECT MODEL(scaler, v1)!predict(a, SCALE => -1.5) AS y FROM numbers")
    assert sorted(r["Y"] for r in got.collect()) == [-4.5, -3.0, -1.5]
    with pytest.raises(ValueError, match="no parameter"):
        session.sql(f"SELECT {SVC}!predict(a, temperature => 1) FROM numbers").collect()

    # HTTP through the ingress: "params" beside "data"
    headers = {"Authorization": f"Bearer {session.create_token('compat_test')}"}
    base = f"{session.url}/svc/ML.REG.{SVC}"
    body = {"data": [[0, 1.0], [1, 2.0]], "params": {"scale": 3}}
    resp = httpx.post(f"{base}/predict", json=body, headers=headers, timeout=60)
    assert resp.status_code == 200, resp.text
    assert resp.json()["data"] == [[0, {"y": 3.0}], [1, {"y": 6.0}]]

    # tritonclient through the ingress: the binary extension passes through untouched
    httpclient = pytest.importorskip("tritonclient.http")
    client = httpclient.InferenceServerClient(url=base.removeprefix("http://"))
    try:
        for binary in (True, False):
            t = httpclient.InferInput("a", [3], "FP64")
            t.set_data_from_numpy(np.array([1.0, 2.0, 4.0]), binary_data=binary)
            out = [httpclient.InferRequestedOutput("y", binary_data=binary)]
            # a copy: tritonclient writes its Inference-Header-Content-Length into the dict
            result = client.infer(
                "predict", [t], outputs=out, headers=dict(headers), parameters={"scale": 0.5}
            )
            np.testing.assert_array_equal(result.as_numpy("y"), [0.5, 1.0, 2.0])
        assert client.is_model_ready("predict", headers=dict(headers))
    finally:
        client.close()
    mv.delete_service(SVC)
