"""The quota in the request path: waiting, refusing, priorities, pauses, shadow mode, headers."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import httpx
import pytest

from proxy.config import Throttle
from proxy.errors import PROXY_HEADER
from proxy.throttle_config import RouteOverride
from proxy.units import parse_limit
from tests.conftest import Serve, Stack
from tests.faultkit import until

ADMISSIONS = "defender_proxy_admissions_total"
#: The identity labels of a request without a token.
NO_TOKEN = {"tenant": "anonymous", "app": "anonymous"}


def throttle(*limits: str, max_wait: float = 0.0, **changes: Any) -> Throttle:
    """A throttle section whose machines.list route has the given limits."""
    route_changes = {k: changes.pop(k) for k in ("priority", "mode") if k in changes}
    override = RouteOverride(
        name="machines.list",
        match=None,
        limits=tuple(parse_limit(text) for text in limits),
        priority=route_changes.get("priority"),
        mode=route_changes.get("mode"),
    )
    return Throttle(max_wait=max_wait, margin=0.0, routes=(override,), **changes)


async def _stats(stack: Stack) -> dict[str, Any]:
    async with stack.client.session.get(stack.upstream.make_url("/_sim/stats")) as response:
        stats: dict[str, Any] = await response.json()
        return stats


async def test_over_the_limit_is_refused_in_the_envelope(make_stack: Any) -> None:
    """Past the limit and the deadline: 429 from the proxy with Retry-After; nothing goes upstream."""
    stack: Stack = await make_stack(quota=True, throttle=throttle("2/1m"))
    statuses = []
    for _ in range(3):
        response = await stack.client.get("/api/machines")
        statuses.append(response.status)
        body = await response.json()
    assert statuses == [200, 200, 429]
    assert body["error"]["code"] == "TooManyRequests"
    assert response.headers[PROXY_HEADER] == "TooManyRequests"
    assert 55 <= int(response.headers["Retry-After"]) <= 60
    assert response.headers["RateLimit-Policy"] == '"1m";q=2;w=60'
    assert (await _stats(stack))["requests"] == 2
    assert stack.sample(ADMISSIONS, route="machines.list", outcome="admitted", **NO_TOKEN) == 2
    assert stack.sample(ADMISSIONS, route="machines.list", outcome="refused", **NO_TOKEN) == 1
    assert stack.logs.lines("request")[-1]["target"] == body["error"]["target"]


async def test_a_caller_over_the_limit_waits_for_its_slot(make_stack: Any) -> None:
    """Within the deadline the caller waits for the slot, then is forwarded."""
    stack: Stack = await make_stack(quota=True, throttle=throttle("2/300ms", max_wait=5.0))
    started = time.monotonic()
    statuses = [(await stack.client.get("/api/machines")).status for _ in range(3)]
    elapsed = time.monotonic() - started
    assert statuses == [200, 200, 200]
    assert elapsed >= 0.29
    assert stack.sample(ADMISSIONS, route="machines.list", outcome="waited", **NO_TOKEN) == 1
    assert stack.logs.lines("request")[-1]["quota"] == "waited"
    assert stack.logs.lines("request")[-1]["wait_ms"] >= 250


async def test_max_wait_header_lowers_the_deadline(make_stack: Any) -> None:
    """A caller may ask to wait less than the configured max_wait, never more."""
    stack: Stack = await make_stack(quota=True, throttle=throttle("1/1m", max_wait=30.0))
    assert (await stack.client.get("/api/machines")).status == 200
    response = await stack.client.get("/api/machines", headers={"X-Defender-Proxy-Max-Wait": "0s"})
    assert response.status == 429


@pytest.mark.parametrize(
    ("header", "value"),
    [("X-Defender-Proxy-Max-Wait", "soon"), ("X-Defender-Proxy-Priority", "urgent")],
)
async def test_bad_control_headers_are_refused(make_stack: Any, header: str, value: str) -> None:
    """An unreadable control header gets 400 in the envelope, naming the header."""
    stack: Stack = await make_stack(quota=True, throttle=throttle("10/1m"))
    response = await stack.client.get("/api/machines", headers={header: value})
    assert response.status == 400
    assert header in (await response.json())["error"]["message"]


async def test_control_headers_are_not_forwarded(make_stack: Any) -> None:
    """X-Defender-Proxy-* headers are for the proxy and never reach the upstream."""
    stack: Stack = await make_stack(quota=True, throttle=throttle("10/1m"))
    response = await stack.client.get(
        "/api/machines",
        headers={
            "X-Simulate": "echo",
            "X-Defender-Proxy-Priority": "bulk",
            "X-Defender-Proxy-Client": "soar",
        },
    )
    names = {name.lower() for name, _ in (await response.json())["headers"]}
    assert "x-defender-proxy-priority" not in names
    assert "x-defender-proxy-client" not in names
    assert "x-simulate" in names


async def test_bulk_leaves_room_for_interactive(make_stack: Any) -> None:
    """Bulk requests stop at 80% of the window; an interactive one still gets through."""
    stack: Stack = await make_stack(quota=True, throttle=throttle("5/1m"))
    bulk = {"X-Defender-Proxy-Priority": "bulk"}
    statuses = [(await stack.client.get("/api/machines", headers=bulk)).status for _ in range(5)]
    assert statuses == [200, 200, 200, 200, 429]
    assert (await stack.client.get("/api/machines")).status == 200


async def test_bulk_route_from_config(make_stack: Any) -> None:
    """A route configured as bulk is bulk without any header."""
    stack: Stack = await make_stack(quota=True, throttle=throttle("5/1m", priority="bulk"))
    statuses = [(await stack.client.get("/api/machines")).status for _ in range(5)]
    assert statuses == [200, 200, 200, 200, 429]


async def test_ratelimit_headers_describe_the_headroom(make_stack: Any) -> None:
    """Forwarded answers carry RateLimit-Policy and RateLimit for the route."""
    stack: Stack = await make_stack(quota=True, throttle=throttle("10/1m", "100/1h"))
    response = await stack.client.get("/api/machines")
    assert response.headers["RateLimit-Policy"] == '"1m";q=10;w=60, "1h";q=100;w=3600'
    assert response.headers["RateLimit"].startswith('"1m";r=9;t=')
    assert '"1h";r=99;t=' in response.headers["RateLimit"]


async def test_the_upstreams_ratelimit_headers_stand(make_stack: Any) -> None:
    """When the API sends its own RateLimit fields, the proxy does not replace them."""
    stack: Stack = await make_stack(quota=True, throttle=throttle("10/1m"))
    # (the simulator's directives are ';'-separated, so the field here has no parameters)
    response = await stack.client.get(
        "/api/machines", headers={"X-Simulate": 'set-header=RateLimit-Policy:"api"'}
    )
    assert response.headers.getall("RateLimit-Policy") == ['"api"']
    assert "RateLimit" not in response.headers


async def test_an_upstream_429_pauses_the_route(make_stack: Any) -> None:
    """The API's 429 with Retry-After pauses the route: the next caller is held or refused."""
    stack: Stack = await make_stack(quota=True, throttle=throttle("100/1m", max_wait=0.0))
    response = await stack.client.get(
        "/api/machines", headers={"X-Simulate": "error=TooManyRequests;retry-after=3"}
    )
    assert response.status == 429
    assert PROXY_HEADER not in response.headers  # the API's own answer, passed through
    after = await stack.client.get("/api/machines")
    assert after.status == 429
    assert after.headers[PROXY_HEADER] == "TooManyRequests"
    assert int(after.headers["Retry-After"]) >= 3
    labels = {"route": "machines.list", "cause": "calls"}
    assert stack.sample("defender_proxy_upstream_throttled_total", **labels) == 1
    assert stack.sample("defender_proxy_upstream_pauses_active") == 1
    assert (await _stats(stack))["requests"] == 1


async def test_shadow_mode_counts_but_never_holds(make_stack: Any) -> None:
    """In shadow mode every request passes; what enforcement would have done is counted."""
    stack: Stack = await make_stack(
        quota=True, throttle=throttle("1/1m", max_wait=0.0, mode="shadow")
    )
    statuses = [(await stack.client.get("/api/machines")).status for _ in range(3)]
    assert statuses == [200, 200, 200]
    assert (
        stack.sample(ADMISSIONS, route="machines.list", outcome="shadow_refused", **NO_TOKEN) == 2
    )
    assert (await _stats(stack))["requests"] == 3


async def test_a_caller_leaving_while_waiting_gives_its_slot_back(make_stack: Any) -> None:
    """A caller that disconnects while waiting frees its reservation for the next caller."""
    stack: Stack = await make_stack(quota=True, throttle=throttle("1/1m", max_wait=120.0))
    assert (await stack.client.get("/api/machines")).status == 200
    waiting = asyncio.create_task(stack.client.get("/api/machines"))
    await asyncio.sleep(0.3)
    waiting.cancel()
    for _ in range(100):
        await asyncio.sleep(0.02)
        if stack.proxy.in_flight == 0:
            break
    assert stack.proxy.in_flight == 0
    await asyncio.sleep(0.05)  # the give-back runs as its own task
    response = await stack.client.get("/api/machines", headers={"X-Defender-Proxy-Max-Wait": "0s"})
    assert response.status == 429
    # The freed slot is the one a minute after the first admission, not two minutes.
    assert int(response.headers["Retry-After"]) <= 60


async def test_a_caller_whose_timeout_ends_its_wait_is_logged_as_waiting(serve: Serve) -> None:
    """A real client timing out while queued: 499 with quota waiting and wait_ms; slot given back."""
    stack, port = await serve(quota=True, throttle=throttle("1/10s", max_wait=30.0))
    url = f"http://127.0.0.1:{port}/api/machines"
    async with httpx.AsyncClient(trust_env=False) as client:
        assert (await client.get(url)).status_code == 200
        with pytest.raises(httpx.ReadTimeout):
            await client.get(url, timeout=0.3)
        assert await until(lambda: stack.proxy.in_flight == 0, 5)
        await asyncio.sleep(0.05)  # the give-back runs as its own task
        after = await client.get(url, headers={"X-Defender-Proxy-Max-Wait": "0s"})
    _, left, _ = stack.logs.lines("request")
    assert (left["status"], left["source"], left["quota"]) == (499, "proxy", "waiting")
    assert 0 < left["wait_ms"] <= 10_000
    assert left["note"] == "caller disconnected while waiting for its quota slot"
    assert "admit_ms" not in left
    # The next caller's slot is the one the leaver gave back (10 s after the first admission),
    # not the one after it.
    assert after.status_code == 429
    assert int(after.headers["Retry-After"]) <= 10
    assert (await _stats(stack))["requests"] == 1


async def test_a_pause_holds_callers_already_waiting(make_stack: Any) -> None:
    """A caller whose slot was reserved before an upstream 429 still waits out the pause."""
    stack: Stack = await make_stack(quota=True, throttle=throttle("1/2s", max_wait=10.0))
    started = time.monotonic()
    first = asyncio.create_task(
        stack.client.get(
            "/api/machines",
            headers={"X-Simulate": "slow=500ms;error=TooManyRequests;retry-after=3"},
        )
    )
    await asyncio.sleep(0.1)
    second = await stack.client.get("/api/machines")  # reserved for t≈2s, before the pause
    elapsed = time.monotonic() - started
    assert (await first).status == 429
    assert second.status == 200
    assert elapsed >= 3.4  # the pause (3 s from t≈0.5 s), not the reserved slot at 2 s


async def test_a_503_with_retry_after_pauses_the_route_as_graph_throttles(make_stack: Any) -> None:
    """Graph throttles with 503 and Retry-After too: the route pauses; a bare 503 does not."""
    stack: Stack = await make_stack(quota=True, throttle=throttle("100/1m", max_wait=0.0))
    bare = await stack.client.get("/api/machines", headers={"X-Simulate": "status=503"})
    assert bare.status == 503
    assert (await stack.client.get("/api/machines")).status == 200
    throttled = await stack.client.get(
        "/api/machines",
        headers={"X-Simulate": "graph-error=serviceNotAvailable:503;retry-after=2.5"},
    )
    assert throttled.status == 503
    after = await stack.client.get("/api/machines")
    assert after.status == 429
    assert after.headers[PROXY_HEADER] == "TooManyRequests"
    assert int(after.headers["Retry-After"]) >= 2
    assert stack.sample("defender_proxy_upstream_pauses_active") == 1
    assert (await _stats(stack))["requests"] == 3


async def test_an_upstream_429_says_which_quota_it_hit(make_stack: Any) -> None:
    """The log line of an API 429 names the quota (calls or cpu) and the limit its body states."""
    stack: Stack = await make_stack(quota=True, throttle=throttle("100/1m", max_wait=0.0))
    hunting = {"X-Simulate": "hunting-429"}
    async with stack.client.post("/api/advancedqueries/run", headers=hunting) as response:
        assert response.status == 429
    line = stack.logs.lines("request")[-1]
    assert (line["cause"], line["stated_limit"]) == ("calls", "45/1m")
    async with stack.client.post("/api/advancedhunting/run", headers={"X-Simulate": "cpu-429"}):
        pass
    line = stack.logs.lines("request")[-1]
    assert line["cause"] == "cpu"
    assert "stated_limit" not in line
    labels = {"route": "advancedhunting.run", "cause": "cpu"}
    assert stack.sample("defender_proxy_upstream_throttled_total", **labels) == 1


async def test_a_429_is_explained_without_a_quota_too(make_stack: Any) -> None:
    """With throttling off the API's 429 still gets its cause in the log line."""
    stack: Stack = await make_stack()
    async with stack.client.get("/api/machines", headers={"X-Simulate": "error=TooManyRequests"}):
        pass
    line = stack.logs.lines("request")[-1]
    assert (line["status"], line["cause"], line["stated_limit"]) == (429, "calls", "100/1m")


@pytest.mark.parametrize("fair_share", [True, False])
async def test_a_tool_with_many_workers_takes_turns_with_a_single_worker(
    make_stack: Any, fair_share: bool
) -> None:
    """Two tools, 12 calls each, one on six workers and one on a single worker, on 2/200ms: with
    the fair share, once the single worker is queued the API never receives more than two calls
    of the other tool in a row; first come, first served, it receives four or more."""
    stack: Stack = await make_stack(
        quota=True, throttle=throttle("2/200ms", max_wait=10.0, fair_share=fair_share)
    )
    ids = {tool: [str(uuid.uuid4()) for _ in range(12)] for tool in ("soar", "siem")}
    # The SIEM connector names itself only by its User-Agent, the SOAR by the proxy's header.
    headers = {"soar": {"X-Defender-Proxy-Client": "soar"}, "siem": {"User-Agent": "siem/1.0"}}

    async def worker(tool: str, mine: list[str]) -> None:
        while mine:
            request_id = mine.pop()
            response = await stack.client.get(
                "/api/machines", headers={"client-request-id": request_id, **headers[tool]}
            )
            assert response.status == 200

    pending = {tool: list(given) for tool, given in ids.items()}
    workers = [worker("soar", pending["soar"]) for _ in range(6)]
    await asyncio.gather(*workers, worker("siem", pending["siem"]))
    async with stack.client.session.get(stack.upstream.make_url("/_sim/requests")) as response:
        order = [
            "s" if entry["id"] in ids["siem"] else "o"
            for entry in (await response.json())["requests"]
        ]
    assert len(order) == 24
    after = "".join(order[order.index("s") : len(order) - order[::-1].index("o")])
    longest = max(len(run) for run in after.split("s"))
    if fair_share:
        assert longest <= 2
    else:
        assert longest >= 4
