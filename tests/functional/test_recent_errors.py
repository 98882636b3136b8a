"""The admin port's /errors over the real app in front of the simulator: the tracking ids of the
last error answers, newest first, from every listener and from the inner answers of a batch."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient
from multidict import CIMultiDict

from proxy import app as wiring
from proxy.config import Address, Limits, Settings, Upstream
from proxy.errors import PROXY_HEADER
from proxy.handler import Proxy
from proxy.simulator.behaviour import TARGET_HEADER
from proxy.simulator.tokens import bearer
from tests.conftest import LogCapture


@dataclass
class Wired:
    """The app as ``build`` makes it: a client per listener, and one on the admin port."""

    admin: TestClient[Any, Any]
    callers: dict[str, TestClient[Any, Any]]
    logs: LogCapture

    @property
    def caller(self) -> TestClient[Any, Any]:
        """The client of the first listener."""
        return next(iter(self.callers.values()))

    async def errors(self, query: str = "") -> list[dict[str, Any]]:
        """The records listed by ``GET /errors?query``."""
        response = await self.admin.get(f"/errors{query}")
        assert response.status == 200, await response.text()
        body: dict[str, Any] = await response.json()
        listed: list[dict[str, Any]] = body["errors"]
        return listed


@pytest.fixture
async def wire(
    aiohttp_client: Callable[..., Any],
    aiohttp_raw_server: Callable[..., Any],
    base_settings: Settings,
    captured_logs: LogCapture,
) -> AsyncIterator[Callable[..., Any]]:
    """``await wire(**changes)``: ``build`` with the test settings changed, its admin app started
    (which opens every listener's pool) and each listener served."""
    admins: list[TestClient[Any, Any]] = []

    async def start(**changes: Any) -> Wired:
        proxies, admin_app = wiring.build(replace(base_settings, **changes))
        admin: TestClient[Any, Any] = await aiohttp_client(admin_app)
        admins.append(admin)
        callers = {}
        for proxy in proxies:
            callers[proxy.upstream.name] = await _serve(proxy)
        return Wired(admin, callers, captured_logs)

    async def _serve(proxy: Proxy) -> TestClient[Any, Any]:
        server = await aiohttp_raw_server(proxy.handle)
        client: TestClient[Any, Any] = await aiohttp_client(server, auto_decompress=False)
        return client

    yield start
    for admin in admins:
        await admin.close()


async def test_errors_lists_the_simulators_targets_newest_first(
    wire: Callable[..., Any],
) -> None:
    """Several upstream errors and one of the proxy's own: /errors lists each once, newest first,
    with the target the simulator (or the proxy) sent and the log line holds."""
    wired: Wired = await wire()
    sent = []
    for code in ("Forbidden", "NotFound", "Unauthorized"):
        response = await wired.caller.get(
            "/api/machines/7c1a", headers={"X-Simulate": f"error={code}"}
        )
        body = orjson.loads(await response.read())
        assert body["error"]["target"] == response.headers[TARGET_HEADER]
        sent.append((response.status, code, response.headers[TARGET_HEADER], "upstream"))
    twice = CIMultiDict([("Authorization", "Bearer a"), ("Authorization", "Bearer b")])
    refused = await wired.caller.get("/api/machines/7c1a", headers=twice)
    assert refused.headers[PROXY_HEADER] == "BadRequest"
    target = orjson.loads(await refused.read())["error"]["target"]
    sent.append((400, "BadRequest", target, "proxy"))
    assert (await wired.caller.get("/api/alerts")).status == 200

    listed = await wired.errors()
    assert [(e["status"], e["code"], e["target"], e["source"]) for e in listed] == sent[::-1]
    lines = {line["request_id"]: line for line in wired.logs.lines("request")}
    for record in listed:
        line = lines[record["request_id"]]
        assert (line["target"], line["code"], line["status"], line["route"]) == (
            record["target"],
            record["code"],
            record["status"],
            record["route"],
        )
        assert record["upstream"] == "default"
        assert record["method"] == "GET"
        assert record["time"].endswith("Z")
    assert [e["time"] for e in listed] == sorted((e["time"] for e in listed), reverse=True)


async def test_limit_status_and_route_choose_among_the_errors(wire: Callable[..., Any]) -> None:
    """``?limit=K`` gives the K newest, ``?status=`` and ``?route=`` only the matching ones."""
    wired: Wired = await wire()
    targets = {}
    for path, code in (
        ("/api/machines/1", "Forbidden"),
        ("/api/alerts", "NotFound"),
        ("/api/machines/2", "NotFound"),
    ):
        response = await wired.caller.get(path, headers={"X-Simulate": f"error={code}"})
        await response.read()
        targets[path] = response.headers[TARGET_HEADER]
    newest = await wired.errors("?limit=2")
    assert [e["target"] for e in newest] == [targets["/api/machines/2"], targets["/api/alerts"]]
    not_found = await wired.errors("?status=404")
    assert [e["target"] for e in not_found] == [targets["/api/machines/2"], targets["/api/alerts"]]
    on_machines = await wired.errors("?route=machines.get&limit=5")
    assert [e["target"] for e in on_machines] == [
        targets["/api/machines/2"],
        targets["/api/machines/1"],
    ]


@pytest.mark.parametrize("query", ["?limit=0", "?limit=201", "?status=abc", "?route=%0A", "?x=1"])
async def test_a_bad_query_is_a_400_in_the_envelope(wire: Callable[..., Any], query: str) -> None:
    """A query value /errors cannot read is a 400 in the Defender envelope with the proxy's header."""
    wired: Wired = await wire()
    response = await wired.admin.get(f"/errors{query}")
    assert response.status == 400
    assert response.headers[PROXY_HEADER] == "BadRequest"
    error = (await response.json())["error"]
    assert error["code"] == "BadRequest"
    assert error["target"]


async def test_every_listener_shares_one_ring(
    wire: Callable[..., Any], base_settings: Settings
) -> None:
    """The errors of two listeners land in the one ring, each record named by its listener."""
    listen = Address("127.0.0.1", 0)
    upstreams = tuple(
        Upstream(name, base_settings.upstream, listen, "all") for name in ("defender", "graph")
    )
    wired: Wired = await wire(upstreams=upstreams)
    first = await wired.callers["defender"].get(
        "/api/machines/1", headers={"X-Simulate": "error=Forbidden"}
    )
    second = await wired.callers["graph"].get(
        "/v1.0/security/alerts_v2",
        headers={"X-Simulate": "graph-error=Forbidden:403"},
    )
    await first.read(), await second.read()
    listed = await wired.errors()
    assert [(e["upstream"], e["route"], e["target"]) for e in listed] == [
        ("graph", "graph.security", second.headers[TARGET_HEADER]),
        ("defender", "machines.get", first.headers[TARGET_HEADER]),
    ]


async def test_the_inner_errors_of_a_batch_are_listed(wire: Callable[..., Any]) -> None:
    """The inner error answers of a ``$batch`` are listed with source ``batch``, the batch's
    request id and their own targets, as their log lines have them; its inner 200s are not."""
    wired: Wired = await wire()
    requests = [
        {"id": "1", "method": "GET", "url": "/security/alerts_v2"},
        {
            "id": "2",
            "method": "GET",
            "url": "/security/alerts_v2",
            "headers": {"X-Simulate": "graph-error=Forbidden:403"},
        },
        {
            "id": "3",
            "method": "GET",
            "url": "/security/incidents",
            "headers": {"X-Simulate": "graph-error=Unauthorized:401"},
        },
    ]
    response = await wired.caller.post(
        "/v1.0/$batch",
        data=orjson.dumps({"requests": requests}),
        headers={"Content-Type": "application/json"},
    )
    assert response.status == 200
    answers = {a["id"]: a for a in (await response.json())["responses"]}
    assert [answers[i]["status"] for i in "123"] == [200, 403, 401]
    listed = await wired.errors()
    inner = [line for line in wired.logs.lines("request") if line["source"] == "batch"]
    failed = {line["inner_id"]: line for line in inner if line["status"] >= 400}
    assert [(e["status"], e["code"], e["target"], e["source"]) for e in listed] == [
        (401, "Unauthorized", failed["3"]["target"], "batch"),
        (403, "Forbidden", failed["2"]["target"], "batch"),
    ]
    assert all(e["target"] for e in listed)
    assert {e["request_id"] for e in listed} == {failed["2"]["request_id"]}
    assert [e["method"] for e in listed] == ["GET", "GET"]


async def test_recent_errors_zero_turns_the_view_off(wire: Callable[..., Any]) -> None:
    """With ``limits.recent_errors: 0`` errors are still answered and logged, and /errors is a
    404 that names the setting."""
    wired: Wired = await wire(limits=Limits(recent_errors=0))
    response = await wired.caller.get("/api/machines/1", headers={"X-Simulate": "error=Forbidden"})
    assert response.status == 403
    assert [line["status"] for line in wired.logs.lines("request")] == [403]
    off = await wired.admin.get("/errors")
    assert off.status == 404
    assert "limits.recent_errors" in (await off.json())["error"]["message"]


async def test_the_ring_holds_only_the_configured_number(wire: Callable[..., Any]) -> None:
    """``limits.recent_errors: 2`` keeps the last two errors and reports its size."""
    wired: Wired = await wire(limits=Limits(recent_errors=2))
    targets = []
    for _ in range(4):
        response = await wired.caller.get("/api/alerts", headers={"X-Simulate": "error=NotFound"})
        await response.read()
        targets.append(response.headers[TARGET_HEADER])
    response = await wired.admin.get("/errors")
    body = await response.json()
    assert body["size"] == 2
    assert [e["target"] for e in body["errors"]] == targets[:1:-1]


async def test_each_error_carries_its_cause(wire: Callable[..., Any]) -> None:
    """A 401 lists its auth_cause, an API 429 the quota it hit, an inner 403 of a batch its own."""
    wired: Wired = await wire()
    token = bearer(
        "72f988bf-86f1-41af-91ab-2d7cd011db47",
        "4a5f4f6e-8b9c-4d0e-9f1a-2b3c4d5e6f70",
        aud="https://api.securitycenter.microsoft.com",
    )
    async with wired.caller.get("/api/alerts", headers={"X-Simulate": "error=Unauthorized"}):
        pass
    async with wired.caller.post(
        "/api/advancedhunting/run", headers={"X-Simulate": "cpu-429", "Authorization": token}
    ):
        pass
    inner = {"id": "1", "method": "GET", "url": "/security/alerts_v2"}
    inner["headers"] = {"X-Simulate": "graph-error=Forbidden:403"}  # type: ignore[assignment]
    async with wired.caller.post(
        "/v1.0/$batch", json={"requests": [inner]}, headers={"Authorization": token}
    ) as response:
        assert response.status == 200
    listed = await wired.errors()
    assert [(e["status"], e["cause"], e["source"]) for e in listed] == [
        (403, "wrong_audience", "batch"),
        (429, "cpu", "upstream"),
        (401, "no_token", "upstream"),
    ]
