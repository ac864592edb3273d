"""Shared test set-up.

Tests that need root and a TUN device carry `@pytest.mark.root` (or use the fixtures below).
Outside CI they are skipped with the reason when this machine cannot run them; in CI (CI=true)
they fail instead, because a skipped interop test must never pass for a green run.
"""
from __future__ import annotations

import os

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def root_unavailable() -> str | None:
    from ustack.netns import tun_unavailable_reason
    if os.geteuid() != 0:
        return "needs root (network namespaces and TUN devices)"
    return tun_unavailable_reason()


def require_root() -> None:
    reason = root_unavailable()
    if reason:
        if IN_CI:
            pytest.fail(f"CI must run this test, but: {reason}")
        pytest.skip(reason)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("root") is not None:
        require_root()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "root: needs root and a TUN device (fails in CI if not)")


@pytest.fixture(params=["uvloop", "asyncio"])
def loop_kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def run(loop_kind: str):
    """run(coro): run a coroutine to completion on the chosen event loop."""
    import asyncio

    def runner(coro, timeout: float = 120.0):
        async def bounded():
            return await asyncio.wait_for(coro, timeout)
        if loop_kind == "uvloop":
            import uvloop
            return uvloop.run(bounded())
        return asyncio.run(bounded())
    return runner


@pytest.fixture
def netns():
    """A private network namespace for the test's thread, removed afterwards."""
    require_root()
    from ustack.netns import Netns
    with Netns() as ns:
        yield ns
