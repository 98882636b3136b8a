"""The simulator counting like Microsoft: a quota per route and app + tenant, hunting per tenant."""

from __future__ import annotations

from pytest_aiohttp import AiohttpClient

from proxy.identity import read_claims
from proxy.simulator import SimConfig, make_app
from proxy.simulator.keyed import MAX_QUOTAS, KeyedQuota
from proxy.simulator.tokens import bearer
from proxy.units import Limit

TENANT_A = "11111111-1111-1111-1111-111111111111"
TENANT_B = "22222222-2222-2222-2222-222222222222"
APP_1 = "aaaaaaaa-0000-0000-0000-000000000001"
APP_2 = "aaaaaaaa-0000-0000-0000-000000000002"


def _clock() -> float:
    return 0.0


async def test_per_identity_counts_each_route_app_and_tenant_apart(
    aiohttp_client: AiohttpClient,
) -> None:
    """1/1m per (route, app + tenant): another app, tenant or route is not refused; hunting is
    per tenant; /_sim/stats lists every quota."""
    config = SimConfig(limits=(Limit(1, 60.0),), clock=_clock, per_identity=True)
    client = await aiohttp_client(make_app(config))

    async def status(method: str, path: str, tid: str, app: str) -> int:
        headers = {"Authorization": bearer(tid, app)}
        async with client.request(method, path, headers=headers) as response:
            return response.status

    calls = [
        ("GET", "/api/machines", TENANT_A, APP_1),
        ("GET", "/api/machines", TENANT_A, APP_2),
        ("GET", "/api/machines", TENANT_B, APP_1),
        ("GET", "/api/alerts", TENANT_A, APP_1),
        ("POST", "/api/advancedhunting/run", TENANT_A, APP_1),
    ]
    assert [await status(*call) for call in calls] == [200] * 5
    assert [await status(*call) for call in calls] == [429] * 5
    assert await status("POST", "/api/advancedhunting/run", TENANT_A, APP_2) == 429
    assert await status("POST", "/api/advancedhunting/run", TENANT_B, APP_2) == 200
    async with client.get("/_sim/stats") as response:
        stats = await response.json()
    assert (stats["requests"], stats["admitted"], stats["throttled"]) == (12, 6, 6)
    assert stats["quotas"][f"machines.list {TENANT_A}.{APP_1}"]["admitted"] == 1
    assert stats["quotas"][f"advancedhunting.run {TENANT_A}"]["throttled"] == 2


def test_without_a_token_requests_count_as_anonymous() -> None:
    """A request with no readable token counts in its route's anonymous quota."""
    quota = KeyedQuota((Limit(1, 60.0),), False, _clock, per_identity=True)
    assert quota.key("GET", "/api/machines", read_claims(None)) == "machines.list anonymous"
    assert quota.key("GET", "/api/machines", read_claims("Bearer x")) == "machines.list anonymous"


def test_the_number_of_quotas_is_bounded() -> None:
    """Past MAX_QUOTAS keys, new ones share one overflow quota."""
    quota = KeyedQuota((Limit(1, 60.0),), False, _clock, per_identity=True)
    for index in range(MAX_QUOTAS + 50):
        quota.admit(f"k{index}")
    stats = quota.stats()
    assert len(stats["quotas"]) == MAX_QUOTAS + 1  # type: ignore[arg-type]
    assert stats["throttled"] == 49
