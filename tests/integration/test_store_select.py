"""A Redis server that refuses the store's SELECT (a database beyond its ``databases``).

``check-config`` cannot know how many databases the server has; the proxy must say so in its log
the first time, and only then: every later probe of the breaker is refused the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from proxy.quota.fallback import FallbackStore
from proxy.quota.redis_store import RedisStore
from proxy.quota.schedule import Window
from proxy.quota.store import Decision, Quota
from tests.conftest import LogCapture
from tests.support.redis import RedisServer

QUOTA = Quota("dp:{select:test}", (Window(1000, 60_000_000),))


@pytest.mark.parametrize(
    ("query", "refusal"),
    [
        ("", "Redis refused SELECT 20: ERR DB index is out of range"),
        ("?client_name=dp", "DB index"),
    ],
    ids=["lean-client", "redis-py"],
)
async def test_a_database_the_server_lacks_is_named_once_in_the_log(
    redis_server: RedisServer,
    captured_logs: LogCapture,
    monkeypatch: pytest.MonkeyPatch,
    query: str,
    refusal: str,
) -> None:
    """Database 20 of a 16-database server: one warning that names the refused SELECT, however
    many times the breaker tries the store again."""
    now = [1000.0]
    shared = RedisStore(f"redis://127.0.0.1:{redis_server.port}/20{query}", 2.0)
    store = FallbackStore(shared, cooldown=5.0, expected_replicas=1, clock=lambda: now[0])
    tries = [0]
    admit: Callable[..., Coroutine[Any, Any, Decision]] = shared.admit
    restore: Callable[..., Coroutine[Any, Any, None]] = shared.restore

    async def counted(*args: Any) -> Decision:
        tries[0] += 1
        return await admit(*args)

    async def counted_restore(*args: Any) -> None:
        tries[0] += 1  # after the first try, each one begins by writing the local share back
        await restore(*args)

    monkeypatch.setattr(shared, "admit", counted)
    monkeypatch.setattr(shared, "restore", counted_restore)
    try:
        assert not await store.warm()
        for index in range(4):
            now[0] += 6.0  # past the cooldown: this admission tries Redis again
            decision = await store.admit(QUOTA, f"m{index}", 1.0, 0.0, False)
            assert decision.admitted  # from the local share
    finally:
        await store.close()
    assert tries[0] == 4
    warnings = captured_logs.lines("quota store unreachable: admitting against the local share")
    assert len(warnings) == 1
    assert refusal in warnings[0]["reason"]
