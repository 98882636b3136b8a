"""Graph $batch through the proxy: each inner request charged, inner answers counted, bad batches
refused, nothing secret logged."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from proxy.config import Limits, Throttle
from proxy.simulator import SimConfig, make_app
from proxy.throttle_config import RouteOverride
from proxy.units import Limit, parse_limit
from tests.conftest import Stack

ADMISSIONS = "defender_proxy_admissions_total"
SECRET = "Bearer eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzZWNyZXQifQ.c2lnbmF0dXJlLXNlY3JldA"

#: The identity labels of a caller without a token.
NO_TOKEN = {"tenant": "anonymous", "app": "anonymous"}


def graph_throttle(*limits: str, max_wait: float = 0.0, margin: float = 0.0) -> Throttle:
    """A throttle section whose graph.security route has the given limits."""
    override = RouteOverride(
        name="graph.security",
        match=None,
        limits=tuple(parse_limit(text) for text in limits),
        priority=None,
        mode=None,
    )
    return Throttle(max_wait=max_wait, margin=margin, routes=(override,))


def requests(count: int, url: str = "/security/alerts_v2?$top=1", **extra: Any) -> list[Any]:
    """``count`` inner GET requests."""
    return [{"id": str(i), "method": "GET", "url": url, **extra} for i in range(count)]


async def post_batch(stack: Stack, body: Any, **headers: str) -> tuple[int, Any]:
    """POST a batch through the proxy: the status and the parsed answer."""
    raw = body if isinstance(body, bytes) else orjson.dumps({"requests": body})
    response = await stack.client.post(
        "/v1.0/$batch", data=raw, headers={"Content-Type": "application/json", **headers}
    )
    return response.status, await response.json()


async def stats(stack: Stack, server: TestServer | None = None) -> dict[str, Any]:
    """The figures of the simulator behind ``stack`` (or of ``server``)."""
    url = (server or stack.upstream).make_url("/_sim/stats")
    async with stack.client.session.get(url) as response:
        result: dict[str, Any] = await response.json()
        return result


@pytest.fixture
async def limited_sim(aiohttp_server: Callable[..., Any]) -> Callable[..., Any]:
    """Start a simulator with a quota: ``await limited_sim(Limit(…))``."""

    async def start(*limits: Limit) -> TestServer:
        server: TestServer = await aiohttp_server(make_app(SimConfig(limits=limits)))
        return server

    return start


async def test_a_batch_of_twenty_is_charged_twenty(make_stack: Any) -> None:
    """20 inner requests take 20 slots; the next batch is refused whole and gives back what it
    took, so exactly the 5 slots left remain for single requests."""
    stack: Stack = await make_stack(quota=True, throttle=graph_throttle("25/1m"))
    status, body = await post_batch(stack, requests(20))
    assert status == 200
    assert [r["status"] for r in body["responses"]] == [200] * 20
    remaining = "defender_proxy_quota_remaining"
    assert stack.sample(remaining, route="graph.security", window="1m", **NO_TOKEN) == 5
    assert stack.sample(ADMISSIONS, route="graph.security", outcome="admitted", **NO_TOKEN) == 20
    status, body = await post_batch(stack, requests(20))
    assert status == 429
    assert body["error"]["code"] == "TooManyRequests"
    assert (await stats(stack))["requests"] == 20
    assert stack.sample(remaining, route="graph.security", window="1m", **NO_TOKEN) == 5
    singles = [(await stack.client.get("/v1.0/security/alerts_v2")).status for _ in range(6)]
    assert singles == [200] * 5 + [429]
    outer = [line for line in stack.logs.lines("request") if line["route"] == "graph.batch"]
    assert outer[0]["batch_requests"] == 20
    assert outer[0]["batch_answers"] == 20


async def test_four_batches_at_once_never_overrun_the_upstream(
    make_stack: Any, limited_sim: Callable[..., Any]
) -> None:
    """Four batches of 20 against 25/2s sent together: no inner 429 at the upstream, and every
    inner request is answered."""
    server = await limited_sim(Limit(25, 2.0))
    stack: Stack = await make_stack(
        quota=True,
        throttle=graph_throttle("25/2s", max_wait=20.0, margin=0.25),
        upstream=f"http://127.0.0.1:{server.port}",
    )
    results = await asyncio.gather(*(post_batch(stack, requests(20)) for _ in range(4)))
    assert [status for status, _ in results] == [200] * 4
    inner = [r["status"] for _, body in results for r in body["responses"]]
    assert inner == [200] * 80
    figures = await stats(stack, server)
    assert figures["throttled"] == 0
    assert figures["admitted"] == 80


async def test_an_inner_429_pauses_its_route_and_is_counted(
    make_stack: Any, limited_sim: Callable[..., Any]
) -> None:
    """Inner 429s from the upstream are counted, logged with their code, and pause the route."""
    server = await limited_sim(Limit(3, 60.0))
    stack: Stack = await make_stack(
        quota=True,
        throttle=graph_throttle("100/1m"),
        upstream=f"http://127.0.0.1:{server.port}",
    )
    status, body = await post_batch(stack, requests(5))
    assert status == 200
    assert sorted(r["status"] for r in body["responses"]) == [200, 200, 200, 429, 429]
    throttled = "defender_proxy_upstream_throttled_total"
    assert stack.sample(throttled, route="graph.security", cause="calls") == 2
    errors = "defender_api_errors_total"
    assert stack.sample(errors, route="graph.security", status="429", code="TooManyRequests") == 2
    inner_total = "defender_proxy_requests_total"
    labels = {"upstream": "default", "route": "graph.security", "method": "GET", "source": "batch"}
    assert stack.sample(inner_total, status="429", **labels) == 2
    assert stack.sample(inner_total, status="200", **labels) == 3
    lines = [line for line in stack.logs.lines("request") if line.get("source") == "batch"]
    assert len(lines) == 5
    outer_id = [line for line in stack.logs.lines("request") if line["route"] == "graph.batch"]
    assert {line["request_id"] for line in lines} == {outer_id[0]["request_id"]}
    assert {line["code"] for line in lines if line["status"] == 429} == {"TooManyRequests"}
    # The route is paused for everyone: a single request now gets the proxy's own 429.
    response = await stack.client.get(
        "/v1.0/security/alerts_v2", headers={"X-Defender-Proxy-Max-Wait": "0s"}
    )
    assert response.status == 429
    assert (await stats(stack, server))["requests"] == 5


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"{not json", "not valid JSON"),
        (requests(21), "at most 20"),
        ([], "non-empty"),
        (requests(1, url="https://evil.example/security/alerts_v2"), "absolute"),
        (requests(1, url="//evil.example/security/alerts_v2"), "absolute"),
        ([{"id": "1", "method": "POST", "url": "/$batch"}], "batches do not nest"),
        (requests(2, dependsOn=["9"]), "dependsOn"),
        ([{"id": "a", "method": "GET", "url": "/x"}] * 2, "own id"),
    ],
)
async def test_malformed_batches_are_refused_before_anything_is_sent(
    make_stack: Any, body: Any, words: str
) -> None:
    """A batch the proxy cannot count gets 400 in the Defender envelope; nothing goes upstream."""
    stack: Stack = await make_stack(quota=True, throttle=graph_throttle("100/1m"))
    status, answer = await post_batch(stack, body)
    assert status == 400
    assert answer["error"]["code"] == "BadRequest"
    assert words in answer["error"]["message"]
    assert (await stats(stack))["requests"] == 0


async def test_a_batch_over_the_bound_is_refused_with_413(make_stack: Any) -> None:
    """A batch body over limits.batch_body gets 413 naming the key; nothing goes upstream."""
    stack: Stack = await make_stack(quota=True, limits=Limits(batch_body=1024))
    status, answer = await post_batch(stack, requests(20, body={"pad": "x" * 100}))
    assert status == 413
    assert "limits.batch_body" in answer["error"]["message"]
    assert (await stats(stack))["requests"] == 0


async def test_inner_authorization_headers_never_reach_the_log(make_stack: Any) -> None:
    """Credentials inside inner requests are forwarded, never written to a log line."""
    stack: Stack = await make_stack(quota=True, throttle=graph_throttle("100/1m"))
    inner = requests(
        2,
        headers={"Authorization": SECRET, "X-Simulate": "graph-error=Unauthorized:401"},
    )
    status, body = await post_batch(stack, inner)
    assert status == 200
    assert [r["status"] for r in body["responses"]] == [401, 401]
    assert "eyJ" not in stack.logs.text
    assert "c2lnbmF0dXJl" not in stack.logs.text
    assert len([line for line in stack.logs.lines("request") if line["source"] == "batch"]) == 2


async def test_a_batch_without_a_quota_is_still_read(stack: Stack) -> None:
    """Without a quota the inner answers are still counted and logged."""
    status, _ = await post_batch(stack, requests(3))
    assert status == 200
    labels = {"upstream": "default", "route": "graph.security", "method": "GET"}
    labels |= {"source": "batch", "status": "200"}
    assert stack.sample("defender_proxy_requests_total", **labels) == 3


async def test_an_inner_request_to_an_unknown_endpoint_shares_its_path_familys_quota(
    make_stack: Callable[..., Any],
) -> None:
    """An inner request to an unmatched path counts in its path family's quota, as if alone."""
    stack: Stack = await make_stack(quota=True, throttle=Throttle(max_wait=0.0, margin=0.0))
    outer = [(await stack.client.get(f"/v1.0/things/{n}")).status for n in range(100)]
    assert outer == [200] * 100
    status, _ = await post_batch(stack, requests(1, url="/things/4711"))
    assert status == 429
    status, body = await post_batch(stack, requests(2, url="/widgets/1"))
    assert status == 200
    assert [answer["status"] for answer in body["responses"]] == [200, 200]


@pytest.mark.parametrize(
    "url",
    [
        "/security/alerts_v2/../runHuntingQuery",
        "/security/alerts_v2/%2e%2e/runHuntingQuery",
        "/security/./runHuntingQuery",
        "/security%2FrunHuntingQuery",
    ],
)
async def test_inner_urls_that_climb_or_smuggle_a_separator_are_refused(
    make_stack: Any, url: str
) -> None:
    """An inner url with dot segments or an encoded separator, which Graph would count on the
    route the dots lead to (hunting) and the proxy on another, gets 400; nothing is sent."""
    stack: Stack = await make_stack(quota=True, throttle=graph_throttle("100/1m"))
    status, answer = await post_batch(stack, [{"id": "1", "method": "POST", "url": url}])
    assert status == 400
    assert answer["error"]["code"] == "BadRequest"
    assert "request 0" in answer["error"]["message"]
    assert (await stats(stack))["requests"] == 0


async def test_a_client_asking_for_gzip_still_has_its_inner_429s_read(
    make_stack: Any, aiohttp_server: Callable[..., Any]
) -> None:
    """A batch from a client that accepts gzip (requests, httpx and the Graph SDK all do) goes
    upstream asking for no coding, so an upstream that would compress has its inner 429 read."""
    asked: list[str] = []
    answer = orjson.dumps(
        {
            "responses": [
                {
                    "id": "0",
                    "status": 429,
                    "headers": {"Retry-After": "7"},
                    "body": {"error": {"code": "TooManyRequests", "message": "slow down"}},
                }
            ]
        }
    )

    async def batch_handler(request: web.Request) -> web.Response:
        coding = request.headers.get("Accept-Encoding", "")
        asked.append(coding)
        if "gzip" in coding:  # as Graph does
            return web.Response(
                body=gzip.compress(answer),
                headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
            )
        return web.Response(body=answer, content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1.0/$batch", batch_handler)
    server: TestServer = await aiohttp_server(app)
    stack: Stack = await make_stack(
        quota=True, throttle=graph_throttle("100/1m"), upstream=f"http://127.0.0.1:{server.port}"
    )
    status, body = await post_batch(stack, requests(1), **{"Accept-Encoding": "gzip, deflate"})
    assert status == 200
    assert [r["status"] for r in body["responses"]] == [429]
    assert asked == ["identity"]
    throttled = "defender_proxy_upstream_throttled_total"
    assert stack.sample(throttled, route="graph.security", cause="unknown") == 1


@pytest.mark.parametrize(
    "body",
    [
        {
            "requests": [{"id": "1", "method": "GET", "url": "/security/alerts_v2"}],
            "Requests": [{"id": "1", "method": "POST", "url": "/security/runHuntingQuery"}],
        },
        {
            "requests": [
                {
                    "id": "1",
                    "method": "GET",
                    "url": "/security/alerts_v2",
                    "URL": "/security/runHuntingQuery",
                }
            ]
        },
        {"requests": [{"id": "1", "Method": "POST", "method": "GET", "url": "/security/x"}]},
    ],
)
async def test_a_key_spelled_in_another_case_is_refused(make_stack: Any, body: Any) -> None:
    """A batch whose keys the API may read without regard to case (``Requests``, ``URL``) beside
    the ones the proxy reads gets 400: the API could run what the proxy never charged."""
    stack: Stack = await make_stack(quota=True, throttle=graph_throttle("100/1m"))
    status, answer = await post_batch(stack, orjson.dumps(body))
    assert status == 400
    assert "must be spelled" in answer["error"]["message"]
    assert (await stats(stack))["requests"] == 0
