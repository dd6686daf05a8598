"""Running management statements: each parsed ``Statement`` becomes one manager call.

Compute pools go to ``account.compute``, image repositories, network rules and integrations to
``account.environments``, models and versions to ``account.registry``, services to
``account.services``, users, roles and grants to ``account.security``, databases and schemas to
``neve.sql.objects``, tables to the warehouse, functions to ``neve.sql.functions``, and API
integrations and external functions to ``neve.sql.external``.

Managers return dicts keyed by the reference platform's SHOW column names; they become rows
here, and ``SHOW ... LIKE 'pat%'`` is applied in one place (:func:`filter_like`), on the
``name`` column, case-insensitively as on the reference platform.
"""

from neve.sql.statements import (  # noqa: F401 - each module registers its statements
    access,
    compute,
    environments,
    functions,
    models,
    namespaces,
    services,
)
from neve.sql.statements.base import run_statement
from neve.sql.statements.columns import SHOW_COLUMNS

__all__ = ["SHOW_COLUMNS", "run_statement"]
