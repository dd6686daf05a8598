"""Sharing a service with another installation, side by side: two account homes, two control
planes, each with its own ports.

A (the provider) serves a model and makes a token scoped to that service; B (the consumer)
stores it in an API integration and scores its own table through an external function on A's
ingress URL: the same numbers as A's own service function. The token can do nothing else on
A (its REST API, SQL, another service); once A revokes it, B's query fails at once, naming the
remote service. The README's "Sharing a service with another installation" is this flow, and
its Python block is run here as written.
"""

from __future__ import annotations

import json
from urllib.parse import urlsplit

import httpx
import numpy as np
import pandas as pd
import pytest
from account_processes import daemon_session

from neve.errors import PermissionDeniedError

pytestmark = pytest.mark.e2e  # starts processes: see the Development section

SETTINGS = "service_supervisor_interval_secs = 0.3\n"


@pytest.fixture(scope="module")
def provider(tmp_path_factory):
    with daemon_session(tmp_path_factory.mktemp("share-a-home"), settings=SETTINGS) as a:
        yield a


@pytest.fixture(scope="module")
def consumer(provider, tmp_path_factory):
    with daemon_session(tmp_path_factory.mktemp("share-b-home"), settings=SETTINGS) as b:
        yield b


def test_b_scores_a_table_through_a_service_of_a(provider, consumer):
    from sklearn.linear_model import LinearRegression

    import neve

    a, b = provider, consumer
    rng = np.random.default_rng(11)
    train = pd.DataFrame({"A": rng.normal(size=200), "B": rng.normal(size=200)})
    mv = neve.Registry(a, database_name="ml", schema_name="reg").log_model(
        LinearRegression().fit(train, 4 * train.A - train.B + 1),
        model_name="lin",
        version_name="v1",
        conda_dependencies=["scikit-learn"],
        sample_input_data=train,
    )
    a.sql(
        "CREATE COMPUTE POOL IF NOT EXISTS share_pool MIN_NODES = 1 MAX_NODES = 1 "
        "INSTANCE_FAMILY = 'CPU_X64_S'"
    ).collect()
    a.sql("CREATE IMAGE REPOSITORY IF NOT EXISTS ml.reg.images").collect()
    for name in ("lin_svc", "lin_private"):
        mv.create_service(
            service_name=name,
            service_compute_pool="share_pool",
            image_repo="images",
            max_instances=1,
            num_workers=1,
            ingress_enabled=True,
        )
    test = train.head(50).reset_index(drop=True)
    a.write_pandas(test, "feats", database="ml", schema="reg")
    own = a.sql('SELECT ml.reg.lin_svc_predict("A", "B") AS y FROM ml.reg.feats').to_pandas()

    # A: a token that can call ML.REG.LIN_SVC's endpoints and nothing else
    [made] = a.sql(
        "ALTER USER ADD PROGRAMMATIC ACCESS TOKEN for_b SERVICES = (ml.reg.lin_svc) "
        "DAYS_TO_EXPIRY = 7 COMMENT = 'installation B'"
    ).collect()
    token, expected_services = made["token_secret"], ["ML.REG.LIN_SVC"]
    assert made["services"] == expected_services
    [endpoint] = a.sql("SHOW ENDPOINTS IN SERVICE ml.reg.lin_svc").collect()
    method_url = f"{endpoint.ingress_url}/predict"  # http://127.0.0.1:<A's ingress>/svc/.../predict
    ingress = urlsplit(method_url)
    base = f"{ingress.scheme}://{ingress.netloc}"
    assert ingress.path == "/svc/ML.REG.LIN_SVC/predict"

    # B: the key in an API integration, an external function on A's URL, B's own table
    b.sql(
        "CREATE API INTEGRATION installation_a API_PROVIDER = neve "
        f"API_ALLOWED_PREFIXES = ('{base}/svc/ML.REG.LIN_SVC/') API_KEY = '{token}' "
        "ENABLED = TRUE COMMENT = 'installation A'"
    ).collect()
    b.sql("CREATE DATABASE IF NOT EXISTS consumer").collect()
    b.sql("CREATE SCHEMA IF NOT EXISTS consumer.scoring").collect()
    b.sql(
        "CREATE EXTERNAL FUNCTION consumer.scoring.lin_predict(a NUMBER, b NUMBER) RETURNS FLOAT "
        f"API_INTEGRATION = installation_a MAX_BATCH_ROWS = 16 AS '{method_url}'"
    ).collect()
    b.write_pandas(test, "feats", database="consumer", schema="scoring")
    scored = b.sql(
        'SELECT consumer.scoring.lin_predict("A", "B") AS y FROM consumer.scoring.feats'
    ).to_pandas()
    np.testing.assert_allclose(scored["y"].to_numpy(), own["y"].to_numpy())
    shown = b.sql("SHOW EXTERNAL FUNCTIONS IN SCHEMA consumer.scoring").collect()
    assert [(r["name"], r["api_integration"], r["url"]) for r in shown] == [
        ("LIN_PREDICT", "INSTALLATION_A", method_url)
    ]
    described = b.sql("DESCRIBE API INTEGRATION installation_a").collect()
    assert token not in json.dumps([list(r) for r in described], default=str)
    assert {r["property"]: r["property_value"] for r in described}["API_KEY"] == "********"

    # on A the token calls that service's endpoint and nothing else
    bearer = {"Authorization": f"Bearer {token}"}
    body = {"data": [[0, 1.0, 2.0]]}
    assert httpx.post(method_url, json=body, headers=bearer, trust_env=False).status_code == 200
    other = httpx.post(
        f"{base}/svc/ML.REG.LIN_PRIVATE/predict", json=body, headers=bearer, trust_env=False
    )
    assert other.status_code == 403 and "LIN_PRIVATE" in other.json()["message"]
    control = a.url  # A's control plane (REST API and SQL)
    for method, path, payload in (
        ("POST", "/api/v1/sql", {"sql": "SHOW USERS"}),
        ("GET", "/api/v1/tokens", None),
        ("POST", "/api/v1/tokens", {"name": "escalate"}),
    ):
        refused = httpx.request(
            method, control + path, json=payload, headers=bearer, trust_env=False
        )
        assert refused.status_code == 403, (path, refused.text)
        assert "scoped to the ingress endpoints" in refused.json()["message"]
    with pytest.raises(PermissionDeniedError, match="scoped to the ingress endpoints"):
        neve.connect(url=control, token=token).sql("SELECT 1").collect()

    # A revokes the token: B's next query fails at once, naming the remote service
    a.sql("ALTER USER REMOVE PROGRAMMATIC ACCESS TOKEN for_b").collect()
    with pytest.raises(PermissionDeniedError) as refused_b:
        b.sql('SELECT consumer.scoring.lin_predict("A", "B") FROM consumer.scoring.feats').collect()
    message = str(refused_b.value)
    assert "external function CONSUMER.SCORING.LIN_PREDICT" in message
    assert "(remote service ML.REG.LIN_SVC) refused the key of API integration INSTALLATION_A" in (
        message
    )
    assert "FOR_B has been revoked" in message
    [listed] = [
        r for r in a.sql("SHOW USER PROGRAMMATIC ACCESS TOKENS").collect() if r["name"] == "FOR_B"
    ]
    assert (listed["status"], listed["services"]) == ("REVOKED", expected_services)


def test_the_readme_flow_runs_as_written(provider, consumer, capsys):
    """The README's Python block, with its two ``neve.connect`` calls pointed at A and B."""
    import re
    from pathlib import Path

    from sklearn.linear_model import LinearRegression

    import neve

    a = provider
    rng = np.random.default_rng(3)
    train = pd.DataFrame({"a": rng.normal(size=100), "b": rng.normal(size=100)})
    mv = neve.Registry(a, database_name="ml", schema_name="registry").log_model(
        LinearRegression().fit(train, 2 * train.a + train.b),
        model_name="forecast",
        version_name="v1",
        conda_dependencies=["scikit-learn"],
        sample_input_data=train,
    )
    a.sql(
        "CREATE COMPUTE POOL IF NOT EXISTS share_pool MIN_NODES = 1 MAX_NODES = 1 "
        "INSTANCE_FAMILY = 'CPU_X64_S'"
    ).collect()
    a.sql("CREATE IMAGE REPOSITORY IF NOT EXISTS ml.registry.images").collect()
    mv.create_service(
        service_name="forecast_svc",
        service_compute_pool="share_pool",
        image_repo="ml.registry.images",
        ingress_enabled=True,
        max_instances=1,
        num_workers=1,
    )
    a.write_pandas(train.head(20), "features", database="ml", schema="registry")

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme[readme.index("### Sharing a service with another installation") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    for original in ("neve.connect()", 'neve.connect(str(Path.home() / "neve-b"))'):
        assert code.count(original) == 1, original
    code = code.replace("neve.connect()", "_provider").replace(
        'neve.connect(str(Path.home() / "neve-b"))', "_consumer"
    )
    scope = {"_provider": provider, "_consumer": consumer}
    with pytest.raises(PermissionDeniedError, match="FOR_B has been revoked"):
        exec(compile(code, "README.md", "exec"), scope)  # its last statement is refused
    printed = capsys.readouterr().out.splitlines()  # the frame B scored before the revocation
    assert printed[0].split() == ["a", "b", "y"] and len(printed) == 21
    expected = mv.run(train.head(20), function_name="predict").iloc[:, -1].to_numpy()
    np.testing.assert_allclose(
        [float(line.split()[-1]) for line in printed[1:]], expected, atol=1e-5
    )
