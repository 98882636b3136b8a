"""Quotas per identity through the proxy: app + tenant, tenant for hunting, shared, anonymous;
the ids on the request line and bounded identity labels on the metrics."""

from __future__ import annotations

from typing import Any

from multidict import CIMultiDict

from proxy.config import Throttle
from proxy.simulator.tokens import bearer, mint
from proxy.throttle_config import Identities, RouteOverride
from proxy.units import parse_limit
from tests.conftest import Stack

TENANT_A = "11111111-1111-1111-1111-111111111111"
TENANT_B = "22222222-2222-2222-2222-222222222222"
APP_1 = "aaaaaaaa-0000-0000-0000-000000000001"
APP_2 = "aaaaaaaa-0000-0000-0000-000000000002"
ADMISSIONS = "defender_proxy_admissions_total"


def _throttle(per: str | None = None, **changes: Any) -> Throttle:
    """1/1m on machines.list and on hunting (scope ``per`` on machines.list if given)."""
    one = (parse_limit("1/1m"),)
    routes = (
        RouteOverride(name="machines.list", limits=one, per=per),
        RouteOverride(name="advancedhunting.run", limits=one),
    )
    return Throttle(max_wait=0.0, margin=0.0, routes=routes, **changes)


async def _status(stack: Stack, authorization: str | None, method: str = "GET") -> int:
    path = "/api/machines" if method == "GET" else "/api/advancedhunting/run"
    headers = {} if authorization is None else {"Authorization": authorization}
    async with stack.client.request(method, path, headers=headers) as response:
        await response.read()
        return response.status


async def test_each_app_and_tenant_has_its_own_quota(make_stack: Any) -> None:
    """By default a route's quota is per app + tenant: a full quota of one leaves the others be."""
    stack: Stack = await make_stack(quota=True, throttle=_throttle())
    callers = [bearer(TENANT_A, APP_1), bearer(TENANT_A, APP_2), bearer(TENANT_B, APP_1)]
    assert [await _status(stack, caller) for caller in callers] == [200, 200, 200]
    assert [await _status(stack, caller) for caller in callers] == [429, 429, 429]


async def test_hunting_is_per_tenant(make_stack: Any) -> None:
    """Two apps of one tenant share the hunting quota; another tenant has its own."""
    stack: Stack = await make_stack(quota=True, throttle=_throttle())
    assert await _status(stack, bearer(TENANT_A, APP_1), "POST") == 200
    assert await _status(stack, bearer(TENANT_A, APP_2), "POST") == 429
    assert await _status(stack, bearer(TENANT_B, APP_1), "POST") == 200


async def test_per_overrides_the_scope(make_stack: Any) -> None:
    """per: shared puts every caller on one quota again; per: tenant joins a tenant's apps."""
    shared: Stack = await make_stack(quota=True, throttle=_throttle("shared"))
    assert await _status(shared, bearer(TENANT_A, APP_1)) == 200
    assert await _status(shared, bearer(TENANT_B, APP_2)) == 429
    tenant: Stack = await make_stack(quota=True, throttle=_throttle("tenant"))
    assert await _status(tenant, bearer(TENANT_A, APP_1)) == 200
    assert await _status(tenant, bearer(TENANT_A, APP_2)) == 429
    assert await _status(tenant, bearer(TENANT_B, APP_2)) == 200


async def test_a_request_without_a_readable_token_never_spends_an_identity(make_stack: Any) -> None:
    """No token, or an unreadable one, is keyed anonymous: the identity's quota is untouched."""
    stack: Stack = await make_stack(quota=True, throttle=_throttle())
    assert await _status(stack, None) == 200
    assert await _status(stack, "Bearer not.a.token") == 429
    assert await _status(stack, bearer(TENANT_A, APP_1)) == 200


async def test_past_max_identities_new_ones_share_the_overflow_quota(make_stack: Any) -> None:
    """With identities.max 1, a second and third identity share one overflow quota."""
    stack: Stack = await make_stack(quota=True, throttle=_throttle(identities=Identities(max=1)))
    assert await _status(stack, bearer(TENANT_A, APP_1)) == 200
    assert await _status(stack, bearer(TENANT_A, APP_2)) == 200
    assert await _status(stack, bearer(TENANT_B, APP_1)) == 429
    warnings = [line for line in stack.logs.lines() if "overflow" in line.get("event", "")]
    assert len(warnings) == 1


async def test_the_request_line_carries_tid_and_app_and_never_the_token(make_stack: Any) -> None:
    """tid and app are on every request line (null without a token); no part of a token is."""
    stack: Stack = await make_stack(quota=True, throttle=_throttle())
    token = bearer(TENANT_A, APP_1, roles=["Machine.Read"]).removeprefix("Bearer ")
    hostile = mint(tid="x}\n:{", appid="y" * 500, secret="sekret-claim")
    await _status(stack, f"Bearer {token}")
    await _status(stack, f"Bearer {hostile}")
    await _status(stack, None)
    lines = stack.logs.lines("request")
    assert [(line["tid"], line["app"]) for line in lines] == [
        (TENANT_A, APP_1),
        (None, None),
        (None, None),
    ]
    for part in (*token.split("."), *hostile.split("."), "sekret-claim", "x}"):
        if part:
            assert part not in stack.logs.text


async def test_identity_labels_stay_bounded_by_the_names_map(make_stack: Any) -> None:
    """300 distinct tokens add no series beyond the named identity, other and anonymous."""
    names = (("contoso", TENANT_A), ("soc", APP_1))
    stack: Stack = await make_stack(
        quota=True,
        throttle=Throttle(max_wait=0.0, margin=0.0, identities=Identities(names=names)),
    )
    for index in range(300):
        await _status(stack, bearer(f"{index:08x}-0000-0000-0000-000000000000", APP_2))
    await _status(stack, bearer(TENANT_A, APP_1))
    await _status(stack, None)
    series = {
        (sample.labels["tenant"], sample.labels["app"])
        for metric in stack.metrics.registry.collect()
        if metric.name in ("defender_proxy_admissions", "defender_proxy_quota_remaining")
        for sample in metric.samples
    }
    assert series == {("other", "other"), ("contoso", "soc"), ("anonymous", "anonymous")}
    sample = stack.metrics.registry.get_sample_value
    labels = {"route": "machines.list", "outcome": "admitted"}
    assert sample(ADMISSIONS, {**labels, "tenant": "other", "app": "other"}) == 300
    assert sample(ADMISSIONS, {**labels, "tenant": "contoso", "app": "soc"}) == 1


async def test_two_authorization_headers_are_refused(make_stack: Any) -> None:
    """Two Authorization fields (the API may read either) get 400 before any slot is taken or
    anything is sent; neither token reaches the log or the answer."""
    stack: Stack = await make_stack(quota=True, throttle=_throttle())
    victim, caller = bearer(TENANT_A, APP_1), bearer(TENANT_B, APP_2)
    headers = CIMultiDict([("Authorization", victim), ("Authorization", caller)])
    async with stack.client.get("/api/machines", headers=headers) as response:
        text = await response.text()
        assert response.status == 400
    assert "Authorization headers are refused" in text
    async with stack.client.session.get(stack.upstream.make_url("/_sim/stats")) as stats:
        assert (await stats.json())["requests"] == 0
    assert await _status(stack, victim) == 200
    assert "eyJ" not in stack.logs.text
    assert "eyJ" not in text
