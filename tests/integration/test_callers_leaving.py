"""Callers that leave: a waiter is released and never forwarded; an upload cut short is a 499."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from tests.conftest import Stack
from tests.faultkit import IN_FLIGHT, get, proxy_config, sample, start_proxy, until
from tests.integration.test_faults_real import MIB, UPLOAD_HEAD, _served, _stats


async def test_cli_callers_leaving_while_waiting_are_released_and_never_forwarded(
    simulator: TestServer, tmp_path: Path
) -> None:
    """The CLI: 200 callers that leave while waiting leave in-flight at once and reach no upstream."""
    proxy = await start_proxy(
        tmp_path,
        proxy_config(
            simulator.port,
            "throttle: {max_wait: 60s, margin: 0s, routes: [{name: machines.list, limits: ['201/1m']}]}",
        ),
    )
    writers = []
    try:
        async with aiohttp.ClientSession() as session:
            url = f"{proxy.url}/api/machines"
            throttled = await get(
                session, url, {"X-Simulate": "error=TooManyRequests;retry-after=4"}
            )
            assert throttled.status == 429
            for _ in range(200):
                _, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
                writer.write(b"GET /api/machines HTTP/1.1\r\nHost: x\r\n\r\n")
                writers.append(writer)
            await asyncio.sleep(0.5)
            waiting = sample(await proxy.metrics(session), IN_FLIGHT)
            for writer in writers:
                writer.transport.abort()
            left_at = time.monotonic()
            await asyncio.sleep(1.0)
            in_flight_1s_later = sample(await proxy.metrics(session), IN_FLIGHT)
            await asyncio.sleep(4.0)  # past the pause: where a leaver still waiting would be sent
            stats = await _stats(session, simulator)
            gone_after = time.monotonic() - left_at
    finally:
        await proxy.close()
    leavers = [line for line in proxy.events("request") if line["status"] == 499]
    assert waiting == 200
    assert in_flight_1s_later == 0
    assert stats["requests"] == 1  # only the 429 that paused the route; no leaver was forwarded
    assert len(leavers) == 200
    assert {line["note"] for line in leavers} == {
        "caller disconnected while waiting for its quota slot"
    }
    assert {line["quota"] for line in leavers} == {"waiting"}
    assert all(line["wait_ms"] > 0 for line in leavers)
    assert gone_after >= 5.0


@pytest.mark.parametrize("server", ["production", "test"])
async def test_caller_leaving_mid_upload_is_a_499_not_an_upstream_failure(
    make_stack: Callable[..., Any], server: str
) -> None:
    """A caller leaving mid-upload is logged 499 with a note, and no upstream failure is counted."""
    stack: Stack = await make_stack()
    async with _served(stack, server) as port:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(UPLOAD_HEAD % (10 * MIB))
        writer.write(b"x" * MIB)
        await writer.drain()
        assert await until(lambda: stack.proxy.in_flight == 1, 5)
        writer.close()
        assert await until(lambda: stack.proxy.in_flight == 0, 5)
    [line] = stack.logs.lines("request")
    failures = stack.sample(
        "defender_proxy_upstream_failures_total", route="machines.isolate", kind="reset"
    )
    print(
        f"\n{server}: status={line['status']} source={line['source']} code={line.get('code')} "
        f"note={line.get('note')} upstream_failures{{kind=reset}}={failures}"
    )
    assert line["status"] == 499
    assert "caller" in line.get("note", "")
    assert failures == 0
