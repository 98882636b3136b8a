"""Stalled uploaders against a small upstream pool: nobody waits past the caller and pool deadlines.

Run with ``python -m bench.stalled`` (part of ``make bench``). The proxy has a pool of 4 upstream
connections, ``timeouts.caller`` 2 s and ``timeouts.pool`` 1 s. Twelve callers each start a POST
of 1,000 bytes, send 10 and stall; beside them, ordinary GETs arrive every 100 ms for 6 s. Printed:
for both kinds of caller, how many got which status and the longest any of them waited for its
answer. Every caller is answered: the stalled ones with 408 (or 503 if they never got an upstream
connection), the ordinary ones with 200, or 503 with Retry-After while the pool is held.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

from bench.services import services, start_proxy, start_simulator, unwind_on_sigterm
from bench.stats import write_json

CONFIG = (
    "timeouts: {caller: 2s, pool: 1s}\n"
    "pool: {max_connections: 4}\n"
    "throttle:\n  routes:\n"
    '    - {name: machines.list, limits: ["100000/1s"]}\n'
    '    - {name: indicators.submit, limits: ["100000/1s"]}\n'
)
STALLED = 12
GET = b"GET /api/machines HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
POST = b"POST /api/indicators HTTP/1.1\r\nHost: bench\r\nContent-Length: 1000\r\n\r\n0123456789"


async def _call(port: int, raw: bytes) -> tuple[int, float]:
    """(status, seconds to the answer); status 0 when the connection ended without one."""
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        async with asyncio.timeout(30.0):
            line = await reader.readline()
    except (OSError, TimeoutError):
        line = b""
    finally:
        writer.close()
    status = int(line.split()[1]) if line.startswith(b"HTTP/1.1 ") else 0
    return status, time.monotonic() - started


async def _run(port: int) -> dict[str, object]:
    stalled = [asyncio.create_task(_call(port, POST)) for _ in range(STALLED)]
    await asyncio.sleep(0.2)
    ordinary: list[asyncio.Task[tuple[int, float]]] = []
    for _ in range(60):
        ordinary.append(asyncio.create_task(_call(port, GET)))
        await asyncio.sleep(0.1)
    results = {
        "stalled": await asyncio.gather(*stalled),
        "ordinary": await asyncio.gather(*ordinary),
    }
    return {
        kind: {
            "statuses": dict(Counter(str(status) for status, _ in answers)),
            "longest_wait_s": max(seconds for _, seconds in answers),
        }
        for kind, answers in results.items()
    }


def main() -> None:
    unwind_on_sigterm()
    simulator = start_simulator()
    proxy = start_proxy(simulator.port, config=CONFIG)
    with services(simulator, proxy):
        result = asyncio.run(_run(proxy.port))
    out = write_json("stalled.json", result)
    print("stalled uploaders: pool of 4, 12 POSTs stalled after 10 bytes, caller 2s, pool 1s")
    for kind, row in result.items():
        assert isinstance(row, dict)
        print(f"  {kind:>8}: statuses {row['statuses']}, longest wait {row['longest_wait_s']:.2f}s")
    print(f"  -> {out}")


if __name__ == "__main__":
    main()
