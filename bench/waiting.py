"""Memory of waiting callers: 10,000 callers held by the quota at once, then all of them leaving.

Run with ``python -m bench.waiting`` (part of ``make bench``). An upstream 429 with
``Retry-After: 45`` pauses the route, and callers may wait a minute, so every caller waits.
"""

from __future__ import annotations

import asyncio
import os
import re
import time

import aiohttp

from bench.services import services, start_proxy, start_simulator
from bench.stats import rss_mib, write_json

CALLERS = int(os.environ.get("BENCH_WAITERS", "10000"))
BATCH = 500


async def _in_flight(admin: int) -> float:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{admin}/metrics") as response:
            text = await response.text()
    match = re.search(r"^defender_proxy_in_flight_requests ([0-9.e+]+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else float("nan")


async def _hold(port: int, admin: int, pid: int) -> dict[str, float]:
    request = b"GET /api/machines HTTP/1.1\r\nHost: bench\r\n\r\n"
    writers: list[asyncio.StreamWriter] = []
    idle = rss_mib(pid)
    # An upstream 429 pauses the route, so every caller after it waits for the pause to end.
    async with aiohttp.ClientSession() as session:
        async with session.get(
            f"http://127.0.0.1:{port}/api/machines",
            headers={"X-Simulate": "error=TooManyRequests;retry-after=45"},
        ) as response:
            assert response.status == 429, response.status
    started = time.perf_counter()
    for start in range(0, CALLERS, BATCH):
        opened = await asyncio.gather(
            *(
                asyncio.open_connection("127.0.0.1", port)
                for _ in range(min(BATCH, CALLERS - start))
            )
        )
        for _, writer in opened:
            writer.write(request)
            writers.append(writer)
    deadline = time.monotonic() + 60
    waiting = 0.0
    while time.monotonic() < deadline:
        waiting = await _in_flight(admin)
        if waiting >= CALLERS:
            break
        await asyncio.sleep(0.2)
    held = rss_mib(pid)
    opened_s = time.perf_counter() - started
    for writer in writers:
        writer.transport.abort()
    deadline = time.monotonic() + 60
    left = waiting
    while time.monotonic() < deadline:
        left = await _in_flight(admin)
        if left == 0:
            break
        await asyncio.sleep(0.2)
    return {
        "callers": CALLERS,
        "waiting_seen": waiting,
        "rss_idle_mib": idle,
        "rss_waiting_mib": held,
        "kib_per_waiter": (held - idle) * 1024 / max(1, CALLERS),
        "open_seconds": opened_s,
        "in_flight_after_leaving": left,
        "rss_after_leaving_mib": rss_mib(pid),
    }


def main() -> None:
    """Hold the callers, print the figures."""
    sim = start_simulator(cpu=1)
    config = (
        'throttle:\n  max_wait: 60s\n  routes:\n    - {name: machines.list, limits: ["20000/1h"]}\n'
    )
    proxy = start_proxy(sim.port, cpu=0, config=config)
    with services(proxy, sim):
        time.sleep(0.5)
        figures = asyncio.run(_hold(proxy.port, proxy.admin, proxy.pid))
    for key, value in figures.items():
        print(f"{key:<26}{value:>12.1f}")
    verdict = "met" if figures["rss_waiting_mib"] <= 300 else "MISSED"
    print(f"target: {CALLERS} waiting callers keep RSS ≤ 300 MB: {verdict}")
    write_json("waiting.json", figures)


if __name__ == "__main__":
    main()
