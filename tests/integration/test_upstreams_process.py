"""Several origins in one process: the real CLI with a listener per upstream, each in front of
its own simulator, sharing one quota and one admin port."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families

from proxy.simulator import SimConfig, make_app
from tests.procs import Process, start_cli

NAMES = ("eu", "us", "graph")


@dataclass
class Running:
    """The proxy process, its port per upstream name, its admin port and the simulators."""

    process: Process
    ports: dict[str, int]
    admin: int
    simulators: dict[str, TestServer]


@pytest.fixture
async def running(aiohttp_server: Callable[..., Any], tmp_path: Path) -> AsyncIterator[Running]:
    """Two geo hosts of the Defender API and a Graph host, each a simulator behind its listener."""
    simulators = {name: await aiohttp_server(make_app(SimConfig())) for name in NAMES}
    catalogues = {"eu": "defender", "us": "defender", "graph": "graph"}
    entries = "".join(
        f"  - {{name: {name}, origin: 'http://127.0.0.1:{simulators[name].port}', "
        f"listen: '127.0.0.1:0', catalogue: {catalogues[name]}}}\n"
        for name in NAMES
    )
    config = tmp_path / "proxy.yaml"
    config.write_text(
        f"upstreams:\n{entries}admin_listen: 127.0.0.1:0\n"
        "timeouts: {connect: 1s, read: 10s}\nshutdown_grace: 5s\n"
        "throttle: {max_wait: 0s, routes: [{name: machines.list, limits: [3/1h]}]}\n"
    )
    process = await start_cli("run", "--config", str(config))
    try:
        line = await process.wait_for("listening")
        ports = {
            entry["name"]: int(entry["listen"].rsplit(":", 1)[1]) for entry in line["listeners"]
        }
        admin = int(line["admin"].rsplit(":", 1)[1])
        yield Running(process, ports, admin, simulators)
    finally:
        await process.stop()


async def _sim_requests(session: aiohttp.ClientSession, simulator: TestServer) -> int:
    async with session.get(f"http://127.0.0.1:{simulator.port}/_sim/stats") as response:
        stats: dict[str, int] = await response.json()
    return stats["requests"]


def _requests_by_upstream(exposition: str) -> dict[tuple[str, str, str], float]:
    (family,) = (
        f for f in text_string_to_metric_families(exposition) if f.name == "defender_proxy_requests"
    )
    return {
        (s.labels["upstream"], s.labels["route"], s.labels["status"]): s.value
        for s in family.samples
        if s.name.endswith("_total")
    }


async def test_the_listening_line_names_every_listener_and_origin(running: Running) -> None:
    """The start-up line lists each upstream's name, bound address, origin and catalogue."""
    line = await running.process.wait_for("listening")
    assert [(e["name"], e["catalogue"]) for e in line["listeners"]] == [
        ("eu", "defender"),
        ("us", "defender"),
        ("graph", "graph"),
    ]
    for entry in line["listeners"]:
        assert entry["origin"] == f"http://127.0.0.1:{running.simulators[entry['name']].port}"
    assert line["proxy"] == line["listeners"][0]["listen"]


async def test_each_listener_forwards_only_to_its_own_origin(running: Running) -> None:
    """Requests sent to a listener reach its simulator and no other, with its catalogue's route."""
    sent = {"eu": 1, "us": 2, "graph": 3}
    async with aiohttp.ClientSession() as session:
        for name, count in sent.items():
            for _ in range(count):
                url = f"http://127.0.0.1:{running.ports[name]}/api/alerts"
                async with session.get(url) as response:
                    assert response.status == 200
        seen = {n: await _sim_requests(session, s) for n, s in running.simulators.items()}
        async with session.get(f"http://127.0.0.1:{running.admin}/metrics") as response:
            counted = _requests_by_upstream(await response.text())
    assert seen == sent
    # The Graph catalogue has no Defender routes: there /api/alerts is `other`.
    assert counted == {
        ("eu", "alerts.list", "200"): 1,
        ("us", "alerts.list", "200"): 2,
        ("graph", "other", "200"): 3,
    }


async def test_geo_hosts_of_one_api_share_a_route_quota(running: Running) -> None:
    """A route's quota is one across listeners: 3/1h of machines.list, spent through two hosts."""
    statuses: dict[str, list[int]] = {"eu": [], "us": []}
    async with aiohttp.ClientSession() as session:
        for name in ("eu", "us", "eu", "us", "us"):
            url = f"http://127.0.0.1:{running.ports[name]}/api/machines"
            async with session.get(url) as response:
                statuses[name].append(response.status)
                await response.read()
        seen = {n: await _sim_requests(session, running.simulators[n]) for n in ("eu", "us")}
        async with session.get(f"http://127.0.0.1:{running.admin}/metrics") as response:
            counted = _requests_by_upstream(await response.text())
    assert statuses == {"eu": [200, 200], "us": [200, 429, 429]}
    assert seen == {"eu": 2, "us": 1}
    assert counted[("us", "machines.list", "429")] == 2


async def test_readiness_and_the_drain_cover_every_listener(running: Running) -> None:
    """On SIGTERM /readyz turns 503, requests in flight on two listeners both finish, exit 0."""
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{running.admin}/readyz") as ready:
            assert ready.status == 200
        slow = [
            asyncio.create_task(
                session.get(
                    f"http://127.0.0.1:{running.ports[name]}/api/alerts",
                    headers={"X-Simulate": "slow=1.5s"},
                )
            )
            for name in ("eu", "graph")
        ]
        await asyncio.sleep(0.3)
        running.process.proc.send_signal(signal.SIGTERM)
        await running.process.wait_for("draining")
        async with session.get(f"http://127.0.0.1:{running.admin}/readyz") as ready:
            assert ready.status == 503
        for task in slow:
            response = await task
            assert response.status == 200
            await response.read()
    assert await asyncio.wait_for(running.process.proc.wait(), 10) == 0
    await running.process.drain_output()
    requests = [line for line in running.process.lines if line.get("event") == "request"]
    assert sorted(line["upstream"] for line in requests) == ["eu", "graph"]
    assert running.process.lines[-1]["event"] == "stopped"
