"""Limits the API states in its 429s: exported, warned about once, never applied by themselves."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from proxy.simulator import SimConfig, make_app
from proxy.units import parse_limit
from tests.conftest import Stack
from tests.functional.test_quota import throttle

GAUGE = "defender_proxy_quota_learned_limit"
WARNING = "upstream states a limit other than the configured one: change throttle.routes"


@pytest.fixture
async def simulator(aiohttp_server: Callable[..., Any]) -> TestServer:
    """The stand-in API counting 3 per minute, whatever the proxy is configured with."""
    server: TestServer = await aiohttp_server(make_app(SimConfig(limits=(parse_limit("3/1m"),))))
    return server


async def test_a_stated_limit_other_than_the_configured_one_is_warned_about_once(
    make_stack: Any,
) -> None:
    """The API says 3/1m, the config 10/1m: the gauge shows 3 and one warning names both figures."""
    stack: Stack = await make_stack(quota=True, throttle=throttle("10/1m", mode="shadow"))
    statuses = [(await stack.client.get("/api/machines")).status for _ in range(6)]
    assert statuses == [200, 200, 200, 429, 429, 429]
    assert stack.sample(GAUGE, route="machines.list", window="1m") == 3
    warnings = stack.logs.lines(WARNING)
    assert len(warnings) == 1, warnings
    assert warnings[0]["route"] == "machines.list"
    assert warnings[0]["window"] == "1m"
    assert (warnings[0]["stated"], warnings[0]["configured"]) == (3, 10)
    assert warnings[0]["config_key"] == "throttle.routes"
    assert warnings[0]["level"] == "warning"


async def test_a_stated_limit_equal_to_the_configured_one_is_only_exported(
    make_stack: Any,
) -> None:
    """The API and the config agree on 3/1m: the gauge shows 3, and nothing is logged about it."""
    stack: Stack = await make_stack(quota=True, throttle=throttle("3/1m", mode="shadow"))
    statuses = [(await stack.client.get("/api/machines")).status for _ in range(5)]
    assert statuses == [200, 200, 200, 429, 429]
    assert stack.sample(GAUGE, route="machines.list", window="1m") == 3
    assert stack.logs.lines(WARNING) == []


async def test_a_stated_window_the_route_does_not_configure_is_labelled_other(
    make_stack: Any,
) -> None:
    """The API counts per minute, the route only per hour: the window label stays bounded."""
    stack: Stack = await make_stack(quota=True, throttle=throttle("100/1h", mode="shadow"))
    statuses = [(await stack.client.get("/api/machines")).status for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    assert stack.sample(GAUGE, route="machines.list", window="other") == 3
    warnings = stack.logs.lines(WARNING)
    assert [(w["window"], w["stated"], w["configured"]) for w in warnings] == [("1m", 3, None)]
