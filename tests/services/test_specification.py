"""The specification document on its own: render, YAML round trip, parse, validation errors
naming the key, and what an instance is started with (no processes)."""

from __future__ import annotations

import pytest
import yaml

from neve.errors import InvalidArgumentError
from neve.services.spec import Resources
from neve.services.specification import (
    document_of,
    launch_settings,
    parse,
    render,
    split_image_name,
    to_yaml,
)

IMAGE = "acct.registry.neve.localhost/ml/reg/images/model-env-0123456789ab:0123456789ab"
LABEL = "service ML.REG.S"


def _document(**over):
    args = dict(
        image=IMAGE,
        model_ref="ML.REG.LIN/V1",
        num_workers=3,
        max_batch_rows=256,
        device="cpu",
        resources=Resources(cpu=2.0, memory_bytes=4 * 2**30),
        ingress_enabled=True,
    )
    args.update(over)
    return render(**args)


def test_render_round_trips_through_yaml():
    text = to_yaml(_document(server_options={"max_queue_rows": 100, "queue_timeout_s": 2.5}))
    parsed = parse(text, label=LABEL)
    assert parsed.image == IMAGE
    assert str(parsed.model_ref) == "ML.REG.LIN/V1"
    assert parsed.resources == Resources(cpu=2.0, memory_bytes=4 * 2**30)
    assert parsed.public and parsed.endpoint == "inference"
    container = yaml.safe_load(text)["spec"]["containers"][0]
    assert container["env"] == {
        "MODEL_REF": "ML.REG.LIN/V1",
        "NUM_WORKERS": "3",
        "MAX_BATCH_ROWS": "256",
        "MAX_QUEUE_ROWS": "100",
        "QUEUE_TIMEOUT_SECS": "2.5",
        "USE_GPU": "false",
    }
    assert container["resources"]["requests"] == {"cpu": "2", "memory": "4Gi"}


def test_launch_settings_are_the_servers_options():
    document = _document(server_options={"max_queue_rows": 100, "batch_timeout_ms": 1})
    env = document["spec"]["containers"][0]["env"]
    env["MY_FLAG"] = "on"
    env.update(MAX_CONCURRENT_BATCHES="1", THREADS_PER_WORKER="2")  # the sizing, by hand
    settings = launch_settings(document, label=LABEL)
    assert settings == {
        "num_workers": 3,
        "max_batch_rows": 256,
        "device": "cpu",
        "server_options": {
            "max_queue_rows": 100,
            "batch_timeout_ms": 1.0,
            "max_concurrent_batches": 1,
            "threads_per_worker": 2,
        },
        "env": {"MY_FLAG": "on"},
    }
    gpu = _document(device="cuda", resources=Resources(gpu=1))
    assert launch_settings(gpu, label=LABEL)["device"] == "cuda"


def test_a_model_service_renders_its_document_from_its_fields():
    spec = {
        "model": "ML.REG.LIN",
        "version": "V1",
        "num_workers": 1,
        "max_batch_rows": None,
        "device": "cpu",
        "resources": {"cpu": None, "memory_bytes": None, "gpu": 0},
        "ingress_enabled": False,
        "create_args": {"secret": "bookkeeping"},
    }
    document = document_of(spec, IMAGE)
    assert "create_args" not in to_yaml(document)
    assert document["spec"]["containers"][0]["env"]["MODEL_REF"] == "ML.REG.LIN/V1"
    assert document["spec"]["endpoints"][0]["public"] is False
    # a stored document wins (a service from a specification)
    assert document_of({"document": {"spec": "x"}}) == {"spec": "x"}


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.update(kind="service"), r"unknown key \(top level\)\.kind"),
        (lambda d: d.pop("spec"), r"has no key spec"),
        (lambda d: d["spec"]["containers"].append({}), r"lists 2 containers"),
        (lambda d: d["spec"]["containers"][0].pop("name"), r"containers\[0\]\.name is required"),
        (
            lambda d: d["spec"]["containers"][0]["env"].update(MODEL_REF="LIN"),
            r"MODEL_REF must be <database>\.<schema>\.<model>/<version>",
        ),
        (
            lambda d: d["spec"]["containers"][0]["env"].update(MAX_QUEUE_ROWS="0"),
            r"env\.MAX_QUEUE_ROWS must be > 0",
        ),
        (
            lambda d: d["spec"]["containers"][0]["env"].update(USE_GPU="maybe"),
            r"env\.USE_GPU must be true or false",
        ),
        (
            lambda d: d["spec"]["containers"][0]["resources"].update(
                limits={"cpu": "1", "memory": "4Gi"}
            ),
            r"resources\.requests\.cpu is more than .*resources\.limits\.cpu",
        ),
        (
            lambda d: d["spec"]["containers"][0]["resources"]["requests"].update(cpu="lots"),
            r"invalid cpu_requests 'lots'",
        ),
        (
            lambda d: d["spec"]["containers"][0]["readinessProbe"].update(port=0),
            r"readinessProbe\.port must be a port number",
        ),
        (
            lambda d: d["spec"]["endpoints"][0].update(protocol="HTTP"),
            r"unknown key spec\.endpoints\[0\]\.protocol",
        ),
    ],
)
def test_bad_documents_name_the_key(change, message):
    document = _document()
    change(document)
    with pytest.raises(InvalidArgumentError, match=message):
        parse(to_yaml(document), label=LABEL)


def test_not_a_document():
    with pytest.raises(InvalidArgumentError, match="the specification is empty"):
        parse("  ", label=LABEL)
    with pytest.raises(InvalidArgumentError, match="must be a mapping with key 'spec'"):
        parse("- a\n- b\n", label=LABEL)
    with pytest.raises(InvalidArgumentError, match=r"not valid YAML at line 3, column 1"):
        parse("spec:\n  a: [\n", label=LABEL)


def test_image_names():
    assert split_image_name(IMAGE, label=LABEL) == ("ml", "reg", "images", "0123456789ab")
    assert split_image_name("/ml/reg/images/x:abc", label=LABEL) == ("ml", "reg", "images", "abc")
    with pytest.raises(InvalidArgumentError, match="is not the full name of a published image"):
        split_image_name("images/x:abc", label=LABEL)
