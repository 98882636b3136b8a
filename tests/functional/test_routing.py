"""The routed path through the real app: a path over the bound is refused with 414 in the envelope
and sent nowhere; an adversarial path at the bound is routed and forwarded; every spelling of an
endpoint counts against its one quota; unknown endpoints are counted per path family."""

from __future__ import annotations

from typing import Any

import orjson

from proxy.config import Throttle
from proxy.errors import PROXY_HEADER
from proxy.guard import MAX_PATH
from tests.conftest import Stack
from tests.httpraw import exchange

#: The identity labels of a caller without a token.
NO_TOKEN = {"tenant": "anonymous", "app": "anonymous"}
ADMISSIONS = "defender_proxy_admissions_total"


def _port(stack: Stack) -> int:
    port = stack.client.port
    assert port is not None
    return port


async def _upstream_requests(stack: Stack) -> int:
    stats = await (await stack.client.session.get(stack.upstream.make_url("/_sim/stats"))).json()
    return int(stats["requests"])


async def test_path_over_the_bound_gets_414_and_goes_nowhere(stack: Stack) -> None:
    """A path of ``Export(`` past MAX_PATH is answered 414 UriTooLong, logged, never forwarded."""
    target = "/api/machines/" + "Export(" * (MAX_PATH // 7 + 1)
    assert len(target) > MAX_PATH
    raw = f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    response = await exchange(_port(stack), raw)
    assert response.status == 414
    assert response.header(PROXY_HEADER) == "UriTooLong"
    error = orjson.loads(response.body)["error"]
    assert error["code"] == "UriTooLong"
    [line] = stack.logs.lines("request")
    assert (line["status"], line["source"], line["target"]) == (414, "proxy", error["target"])
    assert await _upstream_requests(stack) == 0


async def test_adversarial_path_at_the_bound_is_routed_and_forwarded(stack: Stack) -> None:
    """A path of ``Export(`` up to MAX_PATH reaches the upstream byte-exact as machines.get."""
    target = "/api/machines/" + "Export(" * ((MAX_PATH - 14) // 7)
    raw = f"GET {target} HTTP/1.1\r\nHost: x\r\nX-Simulate: echo\r\n\r\n".encode()
    response = await exchange(_port(stack), raw)
    assert response.status == 200
    assert orjson.loads(response.body)["raw_path"] == target
    [line] = stack.logs.lines("request")
    assert line["route"] == "machines.get"


# --- one quota per endpoint, whatever its spelling ----------------------------------------------

PACKAGE_SPELLINGS = (
    "/api/machineactions/7f3c/getPackageUri",
    "/api/machineactions('7f3c')/getPackageUri",
    "//api/machineactions/7f3c/getPackageUri/",
    "/api/v1.0/machineactions(7f3c)/GetPackageUri",
    "/api/machineactions;x=1/7f3c/getPackageUri",
    "/api//machineactions/7f3c/getPackage%55ri",
)


async def test_spellings_of_one_endpoint_share_its_quota(make_stack: Any) -> None:
    """Six spellings of getPackageUri (2/1m) within a minute: 2 forwarded byte-exact, 4 refused."""
    stack: Stack = await make_stack(quota=True, throttle=Throttle(max_wait=0.0))
    answers = []
    for target in PACKAGE_SPELLINGS:
        raw = f"GET {target} HTTP/1.1\r\nHost: x\r\nX-Simulate: echo\r\n\r\n".encode()
        answers.append(await exchange(_port(stack), raw))
    assert [a.status for a in answers] == [200, 200, 429, 429, 429, 429]
    assert [orjson.loads(a.body)["raw_path"] for a in answers[:2]] == list(PACKAGE_SPELLINGS[:2])
    assert all(a.header(PROXY_HEADER) == "TooManyRequests" for a in answers[2:])
    assert await _upstream_requests(stack) == 2
    route = "machineactions.getPackageUri"
    assert [line["route"] for line in stack.logs.lines("request")] == [route] * 6
    assert stack.sample(ADMISSIONS, route=route, outcome="admitted", **NO_TOKEN) == 2
    assert stack.sample(ADMISSIONS, route=route, outcome="refused", **NO_TOKEN) == 4


async def test_unknown_endpoints_have_a_quota_per_path_family(make_stack: Any) -> None:
    """``other`` (100/1m) is counted per path family: ids collapse, other families keep theirs."""
    stack: Stack = await make_stack(quota=True, throttle=Throttle(max_wait=0.0))
    statuses = [(await stack.client.get(f"/api/things/{n}/run")).status for n in range(101)]
    assert statuses == [200] * 100 + [429]
    assert (await stack.client.get("/api/things('7f3c')/run")).status == 429
    assert (await stack.client.get("/api/things/7f3c/stop")).status == 200
    assert (await stack.client.get("/api/widgets/1")).status == 200
    assert await _upstream_requests(stack) == 102
    assert stack.sample(ADMISSIONS, route="other", outcome="admitted", **NO_TOKEN) == 102
    assert stack.sample(ADMISSIONS, route="other", outcome="refused", **NO_TOKEN) == 2
    assert {line["route"] for line in stack.logs.lines("request")} == {"other"}
