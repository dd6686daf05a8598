"""Services from a specification: a model service's spec as a YAML document, copied, changed and
created again with CREATE SERVICE ... FROM SPECIFICATION; every bad spec and missing privilege
refused with nothing created; the copy operated like a model service; DROP MODEL succeeds and
the copy fails only when it next starts an instance.

The tests run in order on one model service (``SRC``) and its copy (``COPY``).
"""

from __future__ import annotations

import copy
import os
import signal

import numpy as np
import pandas as pd
import pytest
import yaml
from svc_helpers import MODEL, POOL, REPO, alive
from waits import wait_for

from neve.context import RequestContext
from neve.errors import (
    InvalidArgumentError,
    NeveError,
    ObjectExistsError,
    ObjectInUseError,
    ObjectNotFoundError,
    PermissionDeniedError,
    ResourceError,
    SqlSyntaxError,
)
from neve.models import load_model

pytestmark = pytest.mark.e2e  # starts processes: see the Development section

SRC = "ML.REG.SRC_SVC"
COPY = "ML.REG.COPY_SVC"


def _rows(df):
    return [[i, float(a), float(b)] for i, (a, b) in enumerate(df[["A", "B"]].to_numpy())]


def _expected(env):
    return load_model(env.model_dir).call("predict", env.test_df).iloc[:, 0].to_numpy()


def _values(out):
    return [next(iter(o.values())) for o in out]


def _col(result, name):
    i = result.columns.index(name)
    return [row[i] for row in result.rows]


def _create_sql(name: str, document: dict, props: str = "") -> str:
    return (
        f"CREATE SERVICE {name} IN COMPUTE POOL {POOL} FROM SPECIFICATION "
        f"$$\n{yaml.safe_dump(document, sort_keys=False)}$$ {props}"
    )


@pytest.fixture(scope="module")
def source(env):
    """The model service whose spec is copied, and its spec document."""
    services = env.account.services
    services.create_service(
        env.ctx,
        model=MODEL,
        version="V1",
        service_name=SRC,
        compute_pool=POOL,
        image_repo=REPO,
        max_instances=1,
        num_workers=1,
        ingress_enabled=True,
    )
    spec = _col(env.sql(f"DESCRIBE SERVICE {SRC}"), "spec")[0]
    return yaml.safe_load(spec)


def _service_names(env) -> list[str]:
    return _col(env.sql("SHOW SERVICES"), "name")


def test_spec_is_the_reference_document(env, source):
    text = _col(env.sql(f"DESCRIBE SERVICE {SRC}"), "spec")[0]
    assert "create_args" not in text and "{" not in text.splitlines()[0]
    [container] = source["spec"]["containers"]
    assert set(source) == {"spec"}
    assert container["name"] == "model-inference"
    env_vars = container["env"]
    assert env_vars["MODEL_REF"] == "ML.REG.LIN/V1"
    assert env_vars["NUM_WORKERS"] == "1"
    assert env_vars["USE_GPU"] == "false"
    assert container["readinessProbe"] == {"port": 5000, "path": "/ready"}
    assert source["spec"]["endpoints"] == [{"name": "inference", "port": 5000, "public": True}]
    # the image is the published image's full name, as SHOW IMAGES lists it
    images = env.sql(f"SHOW IMAGES IN IMAGE REPOSITORY {REPO}")
    assert container["image"] in _col(images, "image")
    i = _col(images, "image").index(container["image"])
    assert container["image"].startswith(
        _col(env.sql("SHOW IMAGE REPOSITORIES"), "repository_url")[0] + "/"
    )
    assert _col(images, "digest")[i].startswith("sha256:")
    assert _col(images, "size_bytes")[i] > 0
    assert container["image"].endswith(":" + _col(images, "tags")[i])


def test_model_service_spec_stays_immutable(env, source):
    with pytest.raises((InvalidArgumentError, SqlSyntaxError), match="NUM_WORKERS"):
        env.sql(f"ALTER SERVICE {SRC} SET NUM_WORKERS = 2")


def _bad(source, change) -> dict:
    document = copy.deepcopy(source)
    change(document["spec"]["containers"][0], document)
    return document


def _set(key, value):
    def change(container, document):
        container[key] = value

    return change


def _env(key, value):
    def change(container, document):
        if value is None:
            container["env"].pop(key)
        else:
            container["env"][key] = value

    return change


def _image(transform):
    def change(container, document):
        container["image"] = transform(container["image"])

    return change


BAD_SPECS = {
    "unknown container key": (
        _set("imagePullPolicy", "Always"),
        InvalidArgumentError,
        r"unknown key spec\.containers\[0\]\.imagePullPolicy",
    ),
    "unknown top key": (
        lambda c, d: d["spec"].update(volumes=[]),
        InvalidArgumentError,
        r"unknown key spec\.volumes",
    ),
    "missing image": (
        lambda c, d: c.pop("image"),
        InvalidArgumentError,
        r"spec\.containers\[0\]\.image is required",
    ),
    "image not a full name": (
        _set("image", "model-env"),
        InvalidArgumentError,
        r"spec\.containers\[0\]\.image 'model-env' is not the full name",
    ),
    "image repository does not exist": (
        _image(lambda i: i.replace("/images/", "/nope/")),
        ObjectNotFoundError,
        r"spec\.containers\[0\]\.image .*image repository ML\.REG\.NOPE does not exist",
    ),
    "image tag not published": (
        _image(lambda i: i.rsplit(":", 1)[0] + ":000000000000"),
        ObjectNotFoundError,
        r"has no published image with tag or digest '000000000000'",
    ),
    "cpu beyond the instance family": (
        _set("resources", {"requests": {"cpu": "16"}}),
        ResourceError,
        r"more than one node of compute pool SVC_POOL .*CPU_X64_S.*spec\.containers\[0\]\.resources",
    ),
    "gpu on a cpu pool": (
        _set("resources", {"requests": {"nvidia.com/gpu": 1}, "limits": {"nvidia.com/gpu": 1}}),
        InvalidArgumentError,
        r"has no GPUs",
    ),
    "unknown resource": (
        _set("resources", {"requests": {"disk": "1Gi"}}),
        InvalidArgumentError,
        r"unknown key spec\.containers\[0\]\.resources\.requests\.disk",
    ),
    "bad worker count": (
        _env("NUM_WORKERS", "many"),
        InvalidArgumentError,
        r"spec\.containers\[0\]\.env\.NUM_WORKERS must be an integer, got 'many'",
    ),
    "no model reference": (
        _env("MODEL_REF", None),
        InvalidArgumentError,
        r"spec\.containers\[0\]\.env\.MODEL_REF is required",
    ),
    "model does not exist": (
        _env("MODEL_REF", "ML.REG.NOPE/V1"),
        ObjectNotFoundError,
        r"model ML\.REG\.NOPE \(env MODEL_REF\) does not exist",
    ),
    "public not a boolean": (
        lambda c, d: d["spec"]["endpoints"][0].update(public="yes"),
        InvalidArgumentError,
        r"spec\.endpoints\[0\]\.public must be true or false",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_SPECS))
def test_bad_spec_is_refused_and_nothing_created(env, source, case):
    change, error, message = BAD_SPECS[case]
    before = _service_names(env)
    with pytest.raises(error, match=message):
        env.sql(_create_sql("ML.REG.BAD_SVC", _bad(source, change), "MIN_INSTANCES = 1"))
    assert _service_names(env) == before


def test_invalid_yaml_names_the_line(env, source):
    with pytest.raises(InvalidArgumentError, match=r"not valid YAML at line 4, column 3"):
        env.sql(
            f"CREATE SERVICE ml.reg.bad_svc IN COMPUTE POOL {POOL} FROM SPECIFICATION "
            "$$\nspec:\n  containers: [\n  - name: x\n$$"
        )
    assert "BAD_SVC" not in _service_names(env)


def test_syntax_errors(env, source):
    with pytest.raises(SqlSyntaxError, match="unknown property REPLICAS"):
        env.sql(_create_sql("ML.REG.BAD_SVC", source, "REPLICAS = 2"))
    with pytest.raises(SqlSyntaxError, match="expected SPECIFICATION"):
        env.sql(f"CREATE SERVICE ml.reg.bad_svc IN COMPUTE POOL {POOL} FROM @stage")
    with pytest.raises(InvalidArgumentError, match=r"MIN_INSTANCES \(3\) is greater"):
        env.sql(_create_sql("ML.REG.BAD_SVC", source, "MIN_INSTANCES = 3 MAX_INSTANCES = 2"))


def test_privileges(env, source):
    """Each privilege the reference asks for, missing in turn: refused, naming it; nothing made."""
    sec = env.account.security
    admin = env.ctx
    sec.create_role(admin, "SPEC_ROLE")
    sec.grant_role(admin, "SPEC_ROLE", to_user="ADMIN")
    for privilege, kind, name in [
        ("USAGE", "DATABASE", "ML"),
        ("USAGE", "SCHEMA", "ML.REG"),
    ]:
        sec.grant(admin, privilege, kind, name, "SPEC_ROLE")
    role = RequestContext(user="ADMIN", role="SPEC_ROLE", database="ML", schema="REG")
    statement = _create_sql("ML.REG.PRIV_SVC", source)
    steps = [
        ("CREATE SERVICE", "SCHEMA", "ML.REG", r"needs CREATE SERVICE on SCHEMA ML\.REG"),
        ("USAGE", "COMPUTE POOL", POOL, r"needs USAGE on COMPUTE POOL SVC_POOL"),
        ("READ", "IMAGE REPOSITORY", REPO, r"spec\.containers\[0\]\.image is in image repository"),
        ("USAGE", "MODEL", MODEL, r"env MODEL_REF names model ML\.REG\.LIN, on which role"),
        ("BIND SERVICE ENDPOINT", "ACCOUNT", None, r"BIND SERVICE ENDPOINT"),
    ]
    for privilege, kind, name, message in steps:
        with pytest.raises(PermissionDeniedError, match=message):
            env.sql(statement, role)
        assert "PRIV_SVC" not in _service_names(env)
        if kind == "ACCOUNT":
            sec.grant(admin, privilege, kind, None, "SPEC_ROLE")
        else:
            sec.grant(admin, privilege, kind, name, "SPEC_ROLE")
    # with every privilege granted, the same statement creates the service
    env.sql(statement, role)
    row = env.account.services.describe_service(role, "ML.REG.PRIV_SVC")
    assert row["status"] == "RUNNING" and row["owner"] == "SPEC_ROLE"
    env.sql("DROP SERVICE ml.reg.priv_svc", role)


def test_create_copy_with_more_workers_and_two_instances(env, source):
    document = copy.deepcopy(source)
    document["spec"]["containers"][0]["env"]["NUM_WORKERS"] = "2"
    result = env.sql(
        _create_sql(COPY, document, "MIN_INSTANCES = 2 MAX_INSTANCES = 2 COMMENT = 'a copy'")
    )
    assert "COPY_SVC successfully created" in str(result.rows)
    row = env.account.services.describe_service(env.ctx, COPY)
    assert row["status"] == "RUNNING"
    assert row["kind"] == "CUSTOM"
    assert row["current_instances"] == row["target_instances"] == 2
    assert row["comment"] == "a copy"
    # DESCRIBE shows the document it was created from, workers raised
    described = yaml.safe_load(row["spec"])
    assert described["spec"]["containers"][0]["env"]["NUM_WORKERS"] == "2"
    assert described["spec"]["containers"][0]["image"] == source["spec"]["containers"][0]["image"]
    # the instances run with the document's settings: 2 workers each
    for index in (0, 1):
        log = env.account.services.get_service_logs(env.ctx, COPY, index)
        assert "with 2 worker(s)" in log
    out = env.account.services.invoke(env.ctx, COPY, "predict", _rows(env.test_df))
    np.testing.assert_allclose(_values(out), _expected(env), rtol=1e-9)
    # the same image, not a second build
    assert len(env.sql(f"SHOW IMAGES IN IMAGE REPOSITORY {REPO}").rows) == 1
    # IF NOT EXISTS: nothing changes; without it: refused
    again = env.sql(_create_sql(f"IF NOT EXISTS {COPY}", document))
    assert "already exists" in str(again.rows)
    with pytest.raises(ObjectExistsError, match="COPY_SVC already exists"):
        env.sql(_create_sql(COPY, document))


def test_function_on_the_copys_endpoint(env, source):
    """CREATE FUNCTION ... SERVICE = ... ENDPOINT = ... AS '/path': SQL on any service."""
    create = (
        "CREATE FUNCTION ml.reg.copy_score(a NUMBER, b FLOAT) RETURNS FLOAT "
        f"SERVICE = {COPY} ENDPOINT = inference MAX_BATCH_ROWS = 10 AS '/predict'"
    )
    env.sql(create)
    assert "COPY_SCORE" in _col(env.sql("SHOW FUNCTIONS IN SCHEMA ml.reg"), "name")
    env.sql("CREATE OR REPLACE TABLE ml.reg.feats AS SELECT * FROM (VALUES (1.5, -2.0), "
            "(0.25, 0.5), (-1.0, 3.0)) t(a, b)")  # fmt: skip
    got = env.sql("SELECT copy_score(a, b) AS y FROM ml.reg.feats ORDER BY a")
    frame = pd.DataFrame({"A": [-1.0, 0.25, 1.5], "B": [3.0, 0.5, -2.0]})
    expected = load_model(env.model_dir).call("predict", frame).iloc[:, 0].to_numpy()
    np.testing.assert_allclose([r[0] for r in got.rows], expected, rtol=1e-9)
    with pytest.raises(ObjectExistsError, match="COPY_SCORE already exists"):
        env.sql(create)
    env.sql(create.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION"))
    cases = [
        (
            create.replace("'/predict'", "'/nope'"),
            ObjectNotFoundError,
            r"has no path '/nope'; paths: /predict",
        ),
        (
            create.replace("ENDPOINT = inference", "ENDPOINT = other"),
            ObjectNotFoundError,
            r"has no endpoint 'other'; endpoints: inference",
        ),
        (
            create.replace("b FLOAT)", "b FLOAT, c FLOAT)"),
            InvalidArgumentError,
            r"3 argument\(s\) declared, but /predict of service ML\.REG\.COPY_SVC takes 2",
        ),
        (
            create.replace("RETURNS FLOAT", "RETURNS OBJECT"),
            InvalidArgumentError,
            r"answers one value",
        ),
    ]
    for statement, error, message in cases:
        with pytest.raises(error, match=message):
            env.sql(statement.replace("copy_score", "copy_bad"))
    assert "COPY_BAD" not in _col(env.sql("SHOW FUNCTIONS IN SCHEMA ml.reg"), "name")
    # USAGE on the service and CREATE FUNCTION on the schema
    sec = env.account.security
    sec.create_role(env.ctx, "FN_ROLE")
    sec.grant_role(env.ctx, "FN_ROLE", to_user="ADMIN")
    for privilege, kind, name in [("USAGE", "DATABASE", "ML"), ("USAGE", "SCHEMA", "ML.REG")]:
        sec.grant(env.ctx, privilege, kind, name, "FN_ROLE")
    role = RequestContext(user="ADMIN", role="FN_ROLE", database="ML", schema="REG")
    other = create.replace("copy_score", "copy_fn")
    with pytest.raises(PermissionDeniedError, match="needs CREATE FUNCTION on SCHEMA ML.REG"):
        env.sql(other, role)
    sec.grant(env.ctx, "CREATE FUNCTION", "SCHEMA", "ML.REG", "FN_ROLE")
    with pytest.raises(PermissionDeniedError, match="needs USAGE on SERVICE ML.REG.COPY_SVC"):
        env.sql(other, role)
    # a generated function goes with its service only
    with pytest.raises(InvalidArgumentError, match="generated for its service"):
        env.sql("DROP FUNCTION ml.reg.src_svc_predict")
    env.sql("DROP FUNCTION ml.reg.copy_score(NUMBER, FLOAT)")
    assert "COPY_SCORE" not in _col(env.sql("SHOW FUNCTIONS IN SCHEMA ml.reg"), "name")
    env.sql("DROP FUNCTION IF EXISTS ml.reg.copy_score")


def test_copy_is_operated_like_a_model_service(env, source):
    services = env.account.services
    assert "COPY_SVC" in _service_names(env)
    assert _col(env.sql(f"SHOW ENDPOINTS IN SERVICE {COPY}"), "ingress_enabled") == [True]
    assert len(env.sql(f"SHOW SERVICE CONTAINERS IN SERVICE {COPY}").rows) == 2
    metrics = services.service_metrics(env.ctx, COPY).decode()
    assert 'service="ML.REG.COPY_SVC"' in metrics and "neve_instance_up" in metrics
    env.sql(f"ALTER SERVICE {COPY} SET MIN_INSTANCES = 1 MAX_INSTANCES = 1")
    wait_for(
        lambda: services.describe_service(env.ctx, COPY)["target_instances"] == 1,
        30,
        "COPY_SVC scaled to 1",
    )
    env.sql(f"ALTER SERVICE {COPY} SUSPEND")
    assert services.describe_service(env.ctx, COPY)["status"] == "SUSPENDED"
    # auto-resume on a call
    out = services.invoke(env.ctx, COPY, "predict", _rows(env.test_df))
    np.testing.assert_allclose(_values(out), _expected(env), rtol=1e-9)
    assert services.describe_service(env.ctx, COPY)["status"] in ("STARTING", "RUNNING")
    events = services.get_service_logs(env.ctx, COPY, 0, "events")
    assert "created from a specification" in events and "SUSPENDED" in events
    # its spec is immutable too
    with pytest.raises((InvalidArgumentError, SqlSyntaxError), match="NUM_WORKERS"):
        env.sql(f"ALTER SERVICE {COPY} SET NUM_WORKERS = 4")


def test_auto_resume_false(env, source):
    services = env.account.services
    env.sql(_create_sql("ML.REG.MANUAL_SVC", source, "AUTO_RESUME = FALSE"))
    env.sql("ALTER SERVICE ml.reg.manual_svc SUSPEND")
    with pytest.raises(NeveError, match="AUTO_RESUME = FALSE"):
        services.invoke(env.ctx, "ML.REG.MANUAL_SVC", "predict", _rows(env.test_df))
    env.sql("DROP SERVICE ml.reg.manual_svc")


def test_drop_model_leaves_the_copy_serving_until_it_restarts(env, source):
    services = env.account.services
    # a model service holds its model; the copy does not
    with pytest.raises(ObjectInUseError, match="SRC_SVC"):
        env.sql(f"DROP MODEL {MODEL}")
    env.sql(f"DROP SERVICE {SRC}")
    env.sql(f"DROP MODEL {MODEL}")
    out = services.invoke(env.ctx, COPY, "predict", _rows(env.test_df))
    assert len(out) == len(env.test_df)
    # a new instance needs the model: it cannot start, its log and the events say why
    env.sql(f"ALTER SERVICE {COPY} SET MIN_INSTANCES = 2 MAX_INSTANCES = 2")
    wait_for(
        lambda: (
            "model ML.REG.LIN (env MODEL_REF) does not exist"
            in services.get_service_logs(env.ctx, COPY, 1)
        ),
        30,
        "instance 1's log to name the dropped model",
    )
    assert "cannot start" in services.get_service_logs(env.ctx, COPY, 0, "events")
    out = services.invoke(env.ctx, COPY, "predict", _rows(env.test_df))
    assert len(out) == len(env.test_df)  # instance 0 still serves
    # a restart needs the model: the service fails and says why
    inst = next(i for i in services.show_containers(env.ctx, COPY) if i["status"] == "READY")
    pid = int(inst["pid"])
    os.killpg(pid, signal.SIGKILL)
    row = wait_for(
        lambda: (r := services.describe_service(env.ctx, COPY))["status"] == "FAILED" and r,
        60,
        "COPY_SVC to fail",
        detail=lambda: services.describe_service(env.ctx, COPY),
    )
    assert "model ML.REG.LIN" in row["status_reason"] and "dropped" in row["status_reason"]
    events = services.get_service_logs(env.ctx, COPY, 0, "events")
    assert "FAILED" in events.splitlines()[-1] and "model ML.REG.LIN" in events.splitlines()[-1]
    assert not alive(pid)
    env.sql(f"DROP SERVICE {COPY}")
