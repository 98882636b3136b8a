"""Graph $batch against a small quota: four batches of 20 sent at once against 25/2s.

Prints, for the simulator reached directly and through the proxy: inner 429s at the upstream
(target through the proxy: 0), inner requests answered 200, and the time until the last batch
was answered. Run: ``.venv/bin/python -m bench.batch``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import orjson

from bench.services import services, start_proxy, start_simulator, unwind_on_sigterm

LIMIT = "25/2s"
BATCHES = 4
SIZE = 20
CONFIG = (
    "throttle:\n  max_wait: 30s\n  margin: 250ms\n  routes:\n"
    f'    - {{name: graph.security, limits: ["{LIMIT}"]}}\n'
)


def _body() -> bytes:
    requests = [
        {"id": str(i), "method": "GET", "url": "/security/alerts_v2?$top=1"} for i in range(SIZE)
    ]
    return orjson.dumps({"requests": requests})


async def _run(base: str, sim: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session:
        await session.post(f"{sim}/_sim/reset")
        started = time.perf_counter()

        async def one() -> list[int]:
            async with session.post(
                f"{base}/v1.0/$batch", data=_body(), headers={"Content-Type": "application/json"}
            ) as response:
                if response.status != 200:
                    return [response.status] * SIZE
                answer = await response.json()
                return [inner["status"] for inner in answer["responses"]]

        statuses = [
            s for batch in await asyncio.gather(*(one() for _ in range(BATCHES))) for s in batch
        ]
        seconds = time.perf_counter() - started
        async with session.get(f"{sim}/_sim/stats") as response:
            stats = await response.json()
    return {
        "inner_429_at_upstream": stats["throttled"],
        "inner_200": statuses.count(200),
        "seconds": round(seconds, 2),
    }


def main() -> None:
    """Run the comparison and print one line per path."""
    unwind_on_sigterm()
    sim = start_simulator(None, LIMIT)
    with services(sim):
        proxy = start_proxy(sim.port, config=CONFIG)
        with services(proxy):
            direct = asyncio.run(_run(sim.url, sim.url))
            # The simulator's window must be empty before the run through the proxy.
            time.sleep(2.5)
            through = asyncio.run(_run(proxy.url, sim.url))
    print(f"{BATCHES} batches of {SIZE} at once against {LIMIT}")
    print(f"  direct:        {direct}")
    print(f"  through proxy: {through}")


if __name__ == "__main__":
    main()
