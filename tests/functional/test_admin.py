"""The admin app: /metrics, /healthz and /readyz, and the resources it owns."""

from __future__ import annotations

from typing import Any

from proxy import app as wiring
from proxy.config import Settings


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
