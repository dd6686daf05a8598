"""Service operations on a model version (filled in by the services component).

``neve.client.registry.ModelVersion`` inherits ``ServiceMixin``: ``create_service``,
``list_services``, ``delete_service`` and ``_run_on_service`` (called by ``ModelVersion.run``
when a ``service_name`` is given) are defined here.
"""

from __future__ import annotations


class ServiceMixin:
    pass
