"""Argument validation and the supervisor's pure decisions (no processes)."""

from __future__ import annotations

import pytest

from neve.errors import InvalidArgumentError
from neve.services.logs import tail
from neve.services.spec import (
    DEFAULT_IDLE_SUSPEND_SECS,
    default_num_workers,
    differences,
    new_ingress_host,
    parse_cpu,
    parse_gpu,
    parse_memory,
    validate_create_args,
)
from neve.services.supervisor import BACKOFF_MAX_S, autoscale_decision, backoff_s

BASE = dict(
    service_name="svc", model="m", version="v1", compute_pool="pool", image_repo="db.sch.repo"
)


def test_defaults_min_equals_max():
    args = validate_create_args(**BASE, max_instances=3)
    assert (args.min_instances, args.max_instances) == (3, 3)
    assert args.auto_suspend_secs is None
    assert args.device == "cpu"


def test_min_zero_gets_an_idle_timeout():
    args = validate_create_args(**BASE, max_instances=2, min_instances=0)
    assert args.min_instances == 0
    assert args.auto_suspend_secs == DEFAULT_IDLE_SUSPEND_SECS


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"num_workers": 0}, "num_workers must be >= 1"),
        ({"num_workers": "many"}, "num_workers must be an integer"),
        ({"max_instances": 0}, "max_instances must be >= 1"),
        ({"max_instances": 2, "min_instances": 3}, "min_instances (3) is greater"),
        ({"max_batch_rows": 0}, "max_batch_rows must be >= 1"),
        ({"cpu_requests": "lots"}, "invalid cpu_requests"),
        ({"cpu_requests": 0}, "cpu_requests must be > 0"),
        ({"memory_requests": "4 parsecs"}, "invalid memory_requests"),
        ({"gpu_requests": 1.5}, "gpu_requests must be a whole number"),
        ({"gpu_requests": -1}, "gpu_requests must be >= 0"),
        ({"ingress_enabled": "yes"}, "ingress_enabled must be True or False"),
    ],
)
def test_bad_arguments_are_named(kwargs, fragment):
    with pytest.raises(InvalidArgumentError) as info:
        validate_create_args(**{**BASE, **kwargs})
    assert fragment in info.value.message
    assert "service svc" in info.value.message


def test_missing_names():
    with pytest.raises(InvalidArgumentError, match="image_repo is required"):
        validate_create_args(**{**BASE, "image_repo": ""})


def test_resource_units():
    assert parse_cpu("500m", service="s") == 0.5
    assert parse_cpu("2", service="s") == 2.0
    assert parse_cpu(None, service="s") is None
    assert parse_memory("4Gi", service="s") == 4 * 2**30
    assert parse_memory("512Mi", service="s") == 512 * 2**20
    assert parse_memory("1G", service="s") == 10**9
    assert parse_memory(1024, service="s") == 1024
    assert parse_gpu("1", service="s") == 1
    assert parse_gpu(None, service="s") == 0


def test_default_workers_follow_the_design():
    from neve.services.spec import Resources

    assert default_num_workers(Resources(cpu=2)) == 5
    assert default_num_workers(Resources(cpu=0.5)) == 3
    assert default_num_workers(Resources(gpu=1)) == 1
    # no CPU request: a node of the pool's family, as far as this machine has the cores
    assert default_num_workers(Resources(), node_vcpu=1) == 3  # CPU_X64_XS
    from neve.server.config import cpu_count

    assert default_num_workers(Resources(), node_vcpu=124) == 2 * cpu_count() + 1
    assert default_num_workers(Resources(), node_vcpu=2) == 2 * min(2, cpu_count()) + 1


def test_differences_list_each_changed_argument():
    old = {"max_instances": 2, "num_workers": 1, "model": "M"}
    new = {"max_instances": 3, "num_workers": 1, "model": "M"}
    assert differences(old, new) == ["max_instances: 2 -> 3"]
    assert differences(old, dict(old)) == []


def test_ingress_host_shape():
    host = new_ingress_host("My_Account", "neve.localhost")
    prefix, rest = host.split("-", 1)
    assert len(prefix) == 8 and rest == "my-account.neve.localhost"
    assert new_ingress_host("a", "d") != new_ingress_host("a", "d")


def test_backoff_grows_and_is_capped():
    delays = [backoff_s(n) for n in range(1, 12)]
    assert delays[0] == 0.5 and delays[1] == 1.0 and delays[2] == 2.0
    assert delays == sorted(delays) and delays[-1] == BACKOFF_MAX_S


def test_autoscale_decisions():
    common = dict(min_instances=1, max_instances=3, busy_passes=2, idle_for_s=0.0)
    # queues deep on every ready instance for two passes: one more instance
    assert autoscale_decision(current=1, ready=1, queued_rows=500, **common) == 2
    # not yet two busy passes: wait
    assert (
        autoscale_decision(current=1, ready=1, queued_rows=500, **{**common, "busy_passes": 1}) == 1
    )
    # never beyond max
    assert autoscale_decision(current=3, ready=3, queued_rows=9000, **common) == 3
    # idle long enough: one fewer, never below min
    idle = {**common, "idle_for_s": 60.0}
    assert autoscale_decision(current=3, ready=3, queued_rows=0, **idle) == 2
    assert autoscale_decision(current=1, ready=1, queued_rows=0, **idle) == 1
    # fixed size services never autoscale
    fixed = {**common, "min_instances": 2, "max_instances": 2}
    assert autoscale_decision(current=2, ready=2, queued_rows=9000, **fixed) == 2


def test_tail_reads_the_last_lines(tmp_path):
    log = tmp_path / "x.log"
    log.write_text("".join(f"line {i}\n" for i in range(10_000)))
    assert tail(log, 3) == "line 9997\nline 9998\nline 9999\n"
    assert tail(log, None).startswith("line 0\n")
    assert tail(tmp_path / "missing.log", 5) == ""
