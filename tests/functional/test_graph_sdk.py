"""The Microsoft Graph SDK through the proxy, against the simulator: hunting as the SDK spells it
lands on the hunting route, keyed per tenant; a $batch of 20 made by the SDK is charged 20.

The SDK runs as ``tests.graphsdk``, the tool it would be, in a process of its own (see there)."""

from __future__ import annotations

import asyncio
import sys
from asyncio.subprocess import PIPE
from typing import Any

import aiohttp
import orjson
import pytest

from proxy.config import Throttle
from proxy.throttle_config import RouteOverride
from proxy.units import parse_limit
from tests.conftest import Serve, Stack

TENANT_A = "11111111-1111-1111-1111-111111111111"
TENANT_B = "22222222-2222-2222-2222-222222222222"
APP_1 = "aaaaaaaa-0000-0000-0000-000000000001"
APP_2 = "aaaaaaaa-0000-0000-0000-000000000002"
HUNTING = "graph.runHuntingQuery"
#: The path the SDK posts a hunting query to: the action's namespace-qualified name.
HUNTING_PATH = "/v1.0/security/microsoft.graph.security.runHuntingQuery"
ADMISSIONS = "defender_proxy_admissions_total"

# The SDK's import alone takes seconds on a busy machine; each tool run gets the time a slow CI
# needs, and a test runs it a few times.
pytestmark = pytest.mark.timeout(300)


def _throttle(route: str, limit: str) -> Throttle:
    """One limit on ``route``, no waiting: a request over it gets the proxy's 429 at once."""
    override = RouteOverride(name=route, limits=(parse_limit(limit),))
    return Throttle(max_wait=0.0, margin=0.0, routes=(override,))


async def _tool(*args: str) -> Any:
    """Run ``tests.graphsdk`` with ``args``; what it printed, parsed."""
    tool = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.graphsdk", *args, stdout=PIPE
    )
    out, _ = await asyncio.wait_for(tool.communicate(), 120)
    assert tool.returncode == 0
    return orjson.loads(out)


async def _sim_stats(stack: Stack) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{stack.upstream.port}/_sim/stats") as response:
            stats: dict[str, Any] = await response.json()
            return stats


def _total(stack: Stack, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    return sum(
        sample.value
        for metric in stack.metrics.registry.collect()
        for sample in metric.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


async def test_the_sdks_hunting_call_is_on_the_hunting_route_per_tenant(serve: Serve) -> None:
    """The SDK's runHuntingQuery (namespace-qualified path) is charged to graph.runHuntingQuery,
    one quota per tenant: a second app of a full tenant gets the proxy's 429, another tenant not."""
    stack, port = await serve(quota=True, throttle=_throttle(HUNTING, "2/1m"))
    callers = [(TENANT_A, APP_1), (TENANT_A, APP_1), (TENANT_A, APP_2), (TENANT_B, APP_1)]
    results = [
        await _tool("hunt", str(port), tid, app, "DeviceInfo | take 2") for tid, app in callers
    ]
    assert [result["status"] for result in results] == [200, 200, 429, 200]
    # The simulator's huntingQueryResults, parsed by the SDK into its model.
    assert results[0] == {"status": 200, "columns": ["Timestamp", "DeviceName"], "rows": 2}
    lines = stack.logs.lines("request")
    assert [(line["tid"], line["app"]) for line in lines] == callers
    assert {line["path"] for line in lines} == {HUNTING_PATH}
    assert {line["route"] for line in lines} == {HUNTING}
    assert [line["status"] for line in lines] == [200, 200, 429, 200]
    assert (await _sim_stats(stack))["requests"] == 3  # the 429 was the proxy's own
    assert _total(stack, ADMISSIONS, route=HUNTING, outcome="admitted") == 3
    assert _total(stack, ADMISSIONS, route=HUNTING) == 4
    assert _total(stack, ADMISSIONS, route="graph.security") == 0


async def test_an_sdk_batch_of_twenty_is_charged_twenty(serve: Serve) -> None:
    """The SDK's $batch of 20 alert reads takes 20 of 25 slots and every inner answer is counted;
    the next batch of 20 is refused whole with the proxy's 429 and none of it is sent."""
    stack, port = await serve(quota=True, throttle=_throttle("graph.security", "25/1m"))
    first = await _tool("batch", str(port), TENANT_A, APP_1, "20")
    assert first == {"status": 200, "answers": {str(n): 200 for n in range(20)}}
    assert _total(stack, ADMISSIONS, route="graph.security", outcome="admitted") == 20
    remaining = _total(stack, "defender_proxy_quota_remaining", route="graph.security")
    assert remaining == 5
    assert _total(stack, "defender_proxy_requests_total", source="batch") == 20
    assert _total(stack, "defender_proxy_requests_total", source="batch", status="200") == 20
    assert (await _sim_stats(stack))["requests"] == 20
    second = await _tool("batch", str(port), TENANT_A, APP_1, "20")
    assert second == {"status": 429}
    assert (await _sim_stats(stack))["requests"] == 20
    assert _total(stack, ADMISSIONS, route="graph.security", outcome="admitted") == 20
    assert _total(stack, "defender_proxy_quota_remaining", route="graph.security") == 5
    lines = stack.logs.lines("request")
    inner = [line for line in lines if line["source"] == "batch"]
    assert [line["inner_id"] for line in inner] == [str(n) for n in range(20)]
    assert {(line["route"], line["status"], line["tid"]) for line in inner} == {
        ("graph.security", 200, TENANT_A)
    }
    outer = [line for line in lines if line["source"] != "batch"]
    assert [(line["path"], line["route"], line["status"], line["source"]) for line in outer] == [
        ("/v1.0/$batch", "graph.batch", 200, "upstream"),
        ("/v1.0/$batch", "graph.batch", 429, "proxy"),
    ]
    assert (outer[0]["batch_requests"], outer[0]["batch_answers"]) == (20, 20)
