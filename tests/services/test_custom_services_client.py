"""The README's "Custom services from a specification" walk through a real daemon: a model
service's spec copied with ``neve services describe --spec``, its workers raised, the copy
created with ``neve services create --spec`` on two instances, called over HTTP, from Python and
from SQL (a function on its endpoint), its ingress checking and documenting the same methods as
the model service's (OpenAPI), ``session.create_service`` refusing a bad spec, and DROP MODEL
leaving the copy serving."""

from __future__ import annotations

import httpx
import numpy as np
import pandas as pd
import pytest
import yaml
from account_processes import daemon_session
from typer.testing import CliRunner

from neve.errors import InvalidArgumentError, NeveError

pytestmark = pytest.mark.e2e  # starts processes: see the Development section


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    with daemon_session(
        tmp_path_factory.mktemp("custom-client-home"),
        settings="service_supervisor_interval_secs = 0.3\n",
    ) as sess:
        yield sess


def test_copy_a_model_service_and_drop_the_model(session, tmp_path):
    from sklearn.linear_model import LinearRegression

    import neve
    from neve.cli.services import app as services_cli

    rng = np.random.default_rng(5)
    train = pd.DataFrame({"A": rng.normal(size=200), "B": rng.normal(size=200)})
    reg = neve.Registry(session, database_name="ml", schema_name="reg")
    mv = reg.log_model(
        LinearRegression().fit(train, 2 * train.A - train.B),
        model_name="lin",
        version_name="v1",
        conda_dependencies=["scikit-learn"],
        sample_input_data=train,
    )
    session.sql(
        "CREATE COMPUTE POOL IF NOT EXISTS spec_pool MIN_NODES = 1 MAX_NODES = 1 "
        "INSTANCE_FAMILY = 'CPU_X64_S'"
    ).collect()
    session.sql("CREATE IMAGE REPOSITORY IF NOT EXISTS ml.reg.images").collect()
    mv.create_service(
        service_name="lin_svc",
        service_compute_pool="spec_pool",
        image_repo="images",
        max_instances=1,
        num_workers=1,
        ingress_enabled=True,
    )

    # copy its specification and raise its workers
    runner = CliRunner()
    result = runner.invoke(services_cli, ["describe", "ml.reg.lin_svc", "--spec"])
    assert result.exit_code == 0, result.output[:800]
    spec = yaml.safe_load(result.stdout)
    assert spec["spec"]["containers"][0]["env"]["NUM_WORKERS"] == "1"
    spec["spec"]["containers"][0]["env"]["NUM_WORKERS"] = "2"
    path = tmp_path / "lin_copy.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))

    # create the copy with two instances from the file
    result = runner.invoke(
        services_cli,
        ["create", "--spec", str(path), "--pool", "spec_pool", "--name", "ml.reg.lin_copy"]
        + ["--instances", "2"],
    )
    assert result.exit_code == 0, result.output[:800]
    assert "ML.REG.LIN_COPY is RUNNING" in result.output
    row = session.describe_service("ml.reg.lin_copy")
    assert (row["status"], row["current_instances"], row["kind"]) == ("RUNNING", 2, "CUSTOM")
    assert yaml.safe_load(row["spec"])["spec"]["containers"][0]["env"]["NUM_WORKERS"] == "2"

    # call it over HTTP (its ingress endpoint, a token) and from Python
    test = train.head(20)
    local = mv.run(test, function_name="predict")
    body = {"data": [[i, float(a), float(b)] for i, (a, b) in enumerate(test.to_numpy())]}
    headers = {"Authorization": f"Bearer {session.create_token('copy_test')}"}
    [endpoint] = session.sql("SHOW ENDPOINTS IN SERVICE ml.reg.lin_copy").collect()
    resp = httpx.post(f"{endpoint.ingress_url}/predict", json=body, headers=headers)
    assert resp.status_code == 200, resp.text
    answered = [r[1][local.columns[-1]] for r in resp.json()["data"]]
    np.testing.assert_allclose(answered, local.iloc[:, -1].to_numpy())
    pd.testing.assert_frame_equal(
        mv.run(test, function_name="predict", service_name="lin_copy"), local
    )

    # the ingress treats both kinds alike: the same methods, checked and documented
    model_doc = _openapi(session, "ml.reg.lin_svc", headers)
    copy_doc = _openapi(session, "ml.reg.lin_copy", headers)
    assert set(copy_doc["paths"]) == set(model_doc["paths"]) == {"/predict"}
    assert copy_doc["paths"] == model_doc["paths"]
    row_schema = copy_doc["paths"]["/predict"]["post"]["requestBody"]["content"][
        "application/json"
    ]["schema"]["properties"]["data"]["items"]
    assert [f["title"] for f in row_schema["prefixItems"]] == ["row index", "A", "B"]
    unknown = httpx.post(f"{endpoint.ingress_url}/nope", json=body, headers=headers)
    assert unknown.status_code == 404
    assert "no method 'nope'; methods: predict" in unknown.json()["message"]

    # and from SQL, through a function on its endpoint
    session.sql(
        "CREATE FUNCTION ml.reg.lin_copy_predict(a NUMBER, b NUMBER) RETURNS FLOAT "
        "SERVICE = ml.reg.lin_copy ENDPOINT = inference AS '/predict'"
    ).collect()
    session.write_pandas(test, "feats", database="ml", schema="reg")
    scored = session.sql(
        'SELECT ml.reg.lin_copy_predict("A", "B") AS y FROM ml.reg.feats'
    ).to_pandas()
    np.testing.assert_allclose(scored["y"].to_numpy(), local.iloc[:, -1].to_numpy())

    # from Python: the same statement and checks
    again = session.create_service(
        "ml.reg.lin_copy", compute_pool="spec_pool", spec=spec, if_not_exists=True
    )
    assert again["created_on"] == row["created_on"]
    bad = yaml.safe_load(yaml.safe_dump(spec))
    bad["spec"]["containers"][0]["replicas"] = 2
    with pytest.raises(InvalidArgumentError, match=r"unknown key spec\.containers\[0\]\.replicas"):
        session.create_service("ml.reg.bad_copy", compute_pool="spec_pool", spec=bad)
    with pytest.raises(InvalidArgumentError, match=r"contains '\$\$'"):
        session.create_service("ml.reg.bad_copy", compute_pool="spec_pool", spec="a: $$")

    # the model service holds the model; once it is gone the model may be dropped
    with pytest.raises(NeveError, match="LIN_SVC"):
        session.sql("DROP MODEL ml.reg.lin").collect()
    session.sql("DROP SERVICE ml.reg.lin_svc").collect()
    session.sql("DROP MODEL ml.reg.lin").collect()
    resp = httpx.post(f"{endpoint.ingress_url}/predict", json=body, headers=headers)
    assert resp.status_code == 200, resp.text  # the copy serves the model it loaded
    assert _openapi(session, "ml.reg.lin_copy", headers)["paths"] == copy_doc["paths"]
    session.sql("DROP SERVICE ml.reg.lin_copy").collect()


def _openapi(session, service: str, headers: dict[str, str]) -> dict:
    """The OpenAPI document the ingress proxies serve for ``service``."""
    [endpoint] = session.sql(f"SHOW ENDPOINTS IN SERVICE {service}").collect()
    resp = httpx.get(f"{endpoint.ingress_url}/openapi.json", headers=headers)
    assert resp.status_code == 200, resp.text
    return resp.json()
