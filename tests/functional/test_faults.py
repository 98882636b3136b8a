"""Upstream faults become defined answers, and a departing caller frees its upstream connection."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from typing import Any, cast

import aiohttp
import pytest

from proxy.config import Timeouts
from proxy.errors import PROXY_HEADER
from tests.conftest import Stack


async def _wait_idle(stack: Stack, seconds: float = 5.0) -> None:
    for _ in range(int(seconds / 0.02)):
        if stack.proxy.in_flight == 0:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{stack.proxy.in_flight} requests still in flight")


async def test_unreachable_upstream_is_502(make_stack: Any) -> None:
    """A refused connection becomes 502 BadGateway in the envelope, with the proxy's header."""
    stack: Stack = await make_stack(upstream="http://127.0.0.1:9")
    response = await stack.client.get("/api/machines")
    error = (await response.json())["error"]
    assert response.status == 502
    assert error["code"] == "BadGateway"
    assert response.headers[PROXY_HEADER] == "BadGateway"
    [line] = stack.logs.lines("request")
    assert line["target"] == error["target"]
    assert (
        stack.sample(
            "defender_proxy_upstream_failures_total", route="machines.list", kind="refused"
        )
        == 1
    )


async def test_slow_upstream_is_504(make_stack: Any) -> None:
    """An upstream slower than timeouts.read becomes 504 GatewayTimeout."""
    stack: Stack = await make_stack(timeouts=Timeouts(connect=1.0, read=0.3))
    response = await stack.client.get("/api/machines", headers={"X-Simulate": "slow=2s"})
    assert response.status == 504
    assert (await response.json())["error"]["code"] == "GatewayTimeout"


async def test_reset_before_headers_is_502(stack: Stack) -> None:
    """An upstream that drops the connection before answering becomes 502."""
    response = await stack.client.get("/api/machines", headers={"X-Simulate": "reset"})
    assert response.status == 502
    assert (await response.json())["error"]["code"] == "BadGateway"


@pytest.mark.parametrize("fault", ["reset-body", "truncate-chunked"])
async def test_body_cut_short_is_cut_short_for_the_caller(stack: Stack, fault: str) -> None:
    """An upstream body that breaks off mid-way breaks off for the caller too, never looking whole."""
    response = await stack.client.get("/api/machines", headers={"X-Simulate": fault})
    assert response.status == 200
    with pytest.raises(aiohttp.ClientPayloadError):
        await response.read()
    await _wait_idle(stack)
    assert "upstream failed mid-body" in stack.logs.lines("request")[0]["note"]


async def test_stall_mid_body_past_read_timeout_aborts(make_stack: Any) -> None:
    """An upstream that stalls mid-body past timeouts.read cuts the caller's body short."""
    stack: Stack = await make_stack(timeouts=Timeouts(connect=1.0, read=0.3))
    response = await stack.client.get(
        "/api/machines", headers={"X-Simulate": "download=1MiB;stall-body=2s"}
    )
    with pytest.raises(aiohttp.ClientPayloadError):
        await response.read()


async def test_pool_recovers_after_faults(stack: Stack) -> None:
    """After resets and cut bodies the next ordinary request succeeds."""
    for fault in ("reset", "reset-body", "truncate-chunked"):
        response = await stack.client.get("/api/machines", headers={"X-Simulate": fault})
        with contextlib.suppress(aiohttp.ClientPayloadError):
            await response.read()
    response = await stack.client.get("/api/machines")
    assert response.status == 200
    assert (await response.json())["value"] == []


async def test_caller_leaving_mid_download_releases_the_upstream(stack: Stack) -> None:
    """A caller that disconnects mid-download ends the handler and frees the upstream connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.client.port)
    writer.write(b"GET /api/machines HTTP/1.1\r\nHost: x\r\nX-Simulate: download=1GiB\r\n\r\n")
    await writer.drain()
    await reader.readexactly(256 * 1024)
    writer.transport.abort()
    await _wait_idle(stack)
    [line] = stack.logs.lines("request")
    assert line["status"] == 499
    assert line["bytes_out"] < 2**30
    assert stack.proxy.pool is not None
    # The half-read upstream connection was closed, not returned to the pool.
    assert stack.proxy.pool.open_connections == 0


async def test_a_bug_costs_one_request_not_the_process(stack: Stack, monkeypatch: Any) -> None:
    """An unexpected exception becomes a 500 in the envelope; the next request is served."""

    class Broken:
        def match(self, method: str, path: str) -> Any:
            raise RuntimeError("boom")

    broken = dataclasses.replace(stack.proxy.setup, router=cast(Any, Broken()))
    monkeypatch.setattr(stack.proxy, "setup", broken)
    response = await stack.client.get("/api/machines")
    assert response.status == 500
    assert (await response.json())["error"]["code"] == "InternalServerError"
    assert response.headers[PROXY_HEADER] == "InternalServerError"
    monkeypatch.undo()
    response = await stack.client.get("/api/machines")
    assert response.status == 200
