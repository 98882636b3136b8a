"""The admin app: /metrics, /healthz and /readyz, and the resources it owns."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from proxy import app as wiring
from proxy.config import Address, Settings, Upstream
from tests.faultkit import until


async def test_admin_endpoints_and_lifecycle(aiohttp_client: Any, base_settings: Settings) -> None:
    """The admin app opens the upstream pool, serves its endpoints, and reports draining as 503."""
    (proxy,), admin = wiring.build(base_settings)
    client = await aiohttp_client(admin)
    assert proxy.pool is not None
    assert (await client.get("/healthz")).status == 200
    ready = await client.get("/readyz")
    assert ready.status == 200
    assert (await ready.json())["status"] == "ready"
    metrics = await client.get("/metrics")
    assert metrics.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert "defender_proxy_ready 1.0" in await metrics.text()
    admin[wiring.STATE].draining = True
    assert (await client.get("/readyz")).status == 503
    await client.close()
    assert proxy.pool is None


async def test_readyz_needs_every_listener_pool(
    aiohttp_client: Any, base_settings: Settings
) -> None:
    """With two upstreams, /readyz is 503 while either listener has no upstream pool."""
    listen = Address("127.0.0.1", 0)
    upstreams = tuple(
        Upstream(name, base_settings.upstream, listen, "all") for name in ("one", "two")
    )
    proxies, admin = wiring.build(replace(base_settings, upstreams=upstreams))
    client = await aiohttp_client(admin)
    assert [proxy.upstream.name for proxy in proxies] == ["one", "two"]
    assert (await client.get("/readyz")).status == 200
    await proxies[1].close_pool()
    assert (await client.get("/readyz")).status == 503
    await client.close()
    assert all(proxy.pool is None for proxy in proxies)


async def test_the_admin_app_gives_memory_back_once_requests_stop(
    aiohttp_client: Any, aiohttp_raw_server: Any, base_settings: Settings
) -> None:
    """The trimmer runs with the admin app: requests answered, then quiet, make one trim, and
    quiet with nothing new makes no other."""
    (proxy,), admin = wiring.build(base_settings, trim_interval=0.05)
    await aiohttp_client(admin)
    trimmer = admin[wiring.TRIMMER]
    caller = await aiohttp_client(await aiohttp_raw_server(proxy.handle))
    for _ in range(20):
        async with caller.get("/api/machines") as response:
            assert response.status == 200
            await response.read()
    assert await until(lambda: trimmer.trims == 1, 5.0)
    quiet = [trimmer.look() for _ in range(3)]
    assert (quiet, trimmer.trims) == ([False] * 3, 1)
