"""One Prometheus page for a whole service: every instance's ``/metrics``, labelled.

Each instance's server exposes its own metrics (requests, latency, batch sizes, queue depth) on
its port, which the ingress does not pass through. The control plane scrapes the instances of a
service on request and returns one exposition in which every sample carries ``service`` and
``instance`` labels, plus ``neve_instance_up`` (1 when the instance answered, else 0): one scrape
target per service instead of one per instance port.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import httpx
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

#: Seconds to wait for one instance's page (a slow instance reports up 0, not a slow scrape).
SCRAPE_TIMEOUT_S = 5.0
UP_METRIC = "neve_instance_up"


class _Families:
    """A collector that yields metric families built elsewhere."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterator[Metric]:
        yield from self._families


def scrape(service: str, instances: list[tuple[str, str]]) -> bytes:
    """The merged exposition of ``instances`` ((instance id, base URL)) of ``service``."""
    families: dict[str, Metric] = {}
    up = Metric(UP_METRIC, "1 when the instance answered the scrape, else 0", "gauge")
    with httpx.Client(timeout=SCRAPE_TIMEOUT_S, trust_env=False) as http:
        for instance, base_url in instances:
            labels = {"service": service, "instance": instance}
            try:
                resp = http.get(f"{base_url}/metrics")
                resp.raise_for_status()
                parsed = list(text_string_to_metric_families(resp.text))
            except (httpx.HTTPError, ValueError):
                up.add_sample(UP_METRIC, labels, 0.0)
                continue
            up.add_sample(UP_METRIC, labels, 1.0)
            for family in parsed:
                merged = families.get(family.name)
                if merged is None:
                    merged = Metric(family.name, family.documentation, family.type, family.unit)
                    families[family.name] = merged
                for sample in family.samples:
                    merged.add_sample(
                        sample.name, {**sample.labels, **labels}, sample.value, sample.timestamp
                    )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families([up, *families.values()]))
    return generate_latest(registry)
