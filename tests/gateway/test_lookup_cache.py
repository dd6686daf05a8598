"""The gateway's look-up cache: an answer is fresh for ``ttl``, then served stale while one
refresh runs in the background (never past its own lifetime, never across a security change),
and concurrent misses share one look-up. Driven through a real gateway over a real account,
counting the account's authentication calls."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from starlette.datastructures import Headers

from neve.config import load_settings
from neve.errors import AuthenticationError
from neve.gateway.cache import TtlCache


def test_fresh_then_stale_then_gone() -> None:
    cache = TtlCache(ttl=0.2)
    cache.put("k", "v", 1)
    assert cache.lookup("k", 1) == ("v", True) and cache.get("k", 1) == "v"
    time.sleep(0.25)
    assert cache.lookup("k", 1) == ("v", False) and cache.get("k", 1) is None
    time.sleep(0.2)
    assert cache.lookup("k", 1) is None
    # an answer with a shorter life of its own (a token about to expire) is never served past it
    cache.put("short", "v", 1, ttl=0.1)
    time.sleep(0.15)
    assert cache.lookup("short", 1) is None
    # another generation (a revocation, a revoked grant): gone at once
    cache.put("k", "v", 1)
    assert cache.lookup("k", 2) is None and cache.lookup("k", 1) is None


@pytest.fixture
def counted(tmp_path):
    from neve.control.account import Account
    from neve.gateway.app import Gateway

    (tmp_path / "settings.toml").write_text("ingress_auth_cache_secs = 0.3\n")
    account = Account(load_settings(tmp_path))
    account.security.bootstrap()
    gateway = Gateway(settings=account.settings, access=account.ingress_access)
    calls = []
    real = gateway.access.authenticate
    lock = threading.Lock()

    def counting(headers):
        with lock:
            calls.append(time.monotonic())
        time.sleep(0.05)  # a look-up that takes a while, as over the network
        return real(headers)

    gateway.access.authenticate = counting
    yield account, gateway, calls
    account.close()


def test_concurrent_misses_share_one_look_up_and_stale_answers_wait_for_none(counted) -> None:
    account, gateway, calls = counted
    token = account.security.local_admin_token()
    headers = Headers(headers={"authorization": f"Bearer {token}"})

    async def burst(n: int) -> list[float]:
        async def one() -> float:
            started = time.perf_counter()
            await gateway._authenticate(headers)
            return time.perf_counter() - started

        return await asyncio.gather(*(one() for _ in range(n)))

    async def scenario() -> None:
        await burst(16)
        assert len(calls) == 1  # sixteen misses at once: one look-up
        await asyncio.sleep(0.35)  # past the ttl: stale, still usable
        waits = await burst(16)
        assert max(waits) < 0.04  # nobody waited on the refresh (it takes 0.05 s)
        await asyncio.sleep(0.1)
        assert len(calls) == 2  # one background refresh

    asyncio.run(scenario())


def test_a_failed_refresh_drops_the_stale_answer(counted) -> None:
    account, gateway, calls = counted
    real = gateway.access.authenticate
    headers = Headers(headers={"authorization": f"Bearer {account.security.local_admin_token()}"})
    refuse = threading.Event()

    def maybe_refuse(h):
        if refuse.is_set():
            raise AuthenticationError("token has been revoked")
        return real(h)

    gateway.access.authenticate = maybe_refuse

    async def scenario() -> None:
        await gateway._authenticate(headers)
        refuse.set()  # as a token revoked where no push reached this gateway
        await asyncio.sleep(0.35)
        await gateway._authenticate(headers)  # stale: answered, refresh started
        await asyncio.sleep(0.2)  # the refresh failed: the answer is gone
        with pytest.raises(AuthenticationError):
            await gateway._authenticate(headers)

    asyncio.run(scenario())
