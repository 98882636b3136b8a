"""The simulator's $batch: each inner request through the quota and its own directives."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from proxy.simulator import SimConfig, make_app
from proxy.units import Limit

Client = TestClient[Any, Any]


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def inner(ident: str, url: str = "/security/alerts_v2", **headers: str) -> dict[str, Any]:
    """One inner request of a batch."""
    item: dict[str, Any] = {"id": ident, "method": "GET", "url": url}
    if headers:
        item["headers"] = headers
    return item


async def batch(client: Client, requests: Any, path: str = "/v1.0/$batch") -> tuple[int, Any]:
    """POST a batch; the status and the parsed body."""
    async with client.post(path, json={"requests": requests}) as resp:
        return resp.status, await resp.json()


async def stats(client: Client) -> dict[str, Any]:
    """The simulator's own figures."""
    async with client.get("/_sim/stats") as resp:
        result: dict[str, Any] = await resp.json()
        return result


async def test_each_inner_request_is_counted_and_the_batch_is_not(
    aiohttp_client: AiohttpClient,
) -> None:
    """Five inner requests count five against the quota; the batch itself counts nothing."""
    client = await aiohttp_client(make_app(SimConfig(limits=(Limit(100, 60.0),))))
    status, body = await batch(client, [inner(str(i)) for i in range(5)])
    assert status == 200
    assert sorted(r["id"] for r in body["responses"]) == ["0", "1", "2", "3", "4"]
    assert {r["status"] for r in body["responses"]} == {200}
    assert (await stats(client))["requests"] == 5


async def test_inner_requests_over_the_quota_get_429_inside_the_200(
    aiohttp_client: AiohttpClient,
) -> None:
    """Past the limit an inner request gets 429 with Retry-After and a body stating the limit."""
    clock = FakeClock()
    client = await aiohttp_client(make_app(SimConfig(limits=(Limit(3, 10.0),), clock=clock)))
    status, body = await batch(client, [inner(str(i)) for i in range(5)], "/beta/$batch")
    assert status == 200
    statuses = [r["status"] for r in body["responses"]]
    assert statuses == [200, 200, 200, 429, 429]
    throttled = body["responses"][3]
    assert throttled["headers"]["Retry-After"] == "10"
    assert "maximum allowed 3 per 00:00:10" in throttled["body"]["error"]["message"]
    assert (await stats(client))["throttled"] == 2


async def test_inner_directives_choose_inner_answers(client_sim: Client) -> None:
    """An inner X-Simulate header picks that inner answer; a dependant of a failure gets 424."""
    requests = [
        inner("a", **{"X-Simulate": "error=NotFound"}),
        inner("b", **{"X-Simulate": "graph-error=throttledRequest:429;retry-after=2.5"}),
        {**inner("c"), "dependsOn": ["a"]},
        inner("d", **{"X-Simulate": "download=10"}),
    ]
    status, body = await batch(client_sim, requests)
    assert status == 200
    by_id = {r["id"]: r for r in body["responses"]}
    assert by_id["a"]["status"] == 404
    assert by_id["a"]["body"]["error"]["code"] == "NotFound"
    assert by_id["b"]["status"] == 429
    assert by_id["b"]["headers"]["Retry-After"] == "2.5"
    assert by_id["c"]["status"] == 424
    assert by_id["d"]["status"] == 400


@pytest.mark.parametrize(
    ("requests", "words"),
    [
        ([], "non-empty"),
        ([inner(str(i)) for i in range(21)], "at most 20"),
        ([inner("a"), inner("a")], "unique"),
        ([inner("a", url="https://evil.example/x")], "absolute"),
        (["not an object"], "JSON object"),
    ],
)
async def test_malformed_batches_are_refused_whole(
    client_sim: Client, requests: Any, words: str
) -> None:
    """A batch Graph would refuse gets 400 in the envelope, and nothing in it is counted."""
    status, body = await batch(client_sim, requests)
    assert status == 400
    assert words in body["error"]["message"]
    assert (await stats(client_sim))["requests"] == 0


async def test_a_batch_body_that_is_not_json_is_refused(client_sim: Client) -> None:
    """A body that is not JSON gets 400 BadRequest."""
    async with client_sim.post("/v1.0/$batch", data=b"{nope") as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["code"] == "BadRequest"


@pytest.fixture
async def client_sim(aiohttp_client: AiohttpClient) -> Client:
    """A client on a simulator with a quota large enough never to refuse."""
    return await aiohttp_client(make_app(SimConfig(limits=(Limit(1000, 60.0),))))
