"""Fixtures of the SQL tests: a bootstrapped account and a helper that runs SQL as a context."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from neve.context import RequestContext, admin_context


class Runner:
    """Runs SQL like a client session would: USE statements change the next statements' ctx."""

    def __init__(self, account, ctx: RequestContext) -> None:
        self.account = account
        self.ctx = ctx

    def __call__(self, text: str):
        result = self.account.sql.execute(self.ctx, text)
        if result.ctx_changes:
            self.ctx = self.ctx.with_(**result.ctx_changes)
        return result

    def rows(self, text: str) -> list[list]:
        return self(text).rows

    def as_(self, user: str, role: str) -> Runner:
        return Runner(self.account, RequestContext(user=user, role=role))


@pytest.fixture
def sql(account) -> Runner:
    account.security.bootstrap()
    return Runner(account, admin_context())


@pytest.fixture
def sql_factory(account) -> Callable[[RequestContext], Runner]:
    account.security.bootstrap()
    return lambda ctx: Runner(account, ctx)
