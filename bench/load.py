"""Load generation of the benchmarks: open-loop load at a fixed rate (``fixed_rate``, ``offer``
and what it did, ``Offered``) and saturation with ``wrk``."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from bench.services import pinned


async def fixed_rate(
    urls: list[str], rate: float, seconds: float, headers: dict[str, str] | None = None
) -> dict[str, list[float]]:
    """Open-loop load: requests at a fixed rate, round-robin over ``urls``; latencies in ms per URL."""
    latencies: dict[str, list[float]] = {url: [] for url in urls}
    total = int(rate * seconds)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(url: str) -> None:
            started = time.perf_counter()
            async with session.get(url, headers=headers) as response:
                await response.read()
                if response.status != 200:
                    raise RuntimeError(f"{url} answered {response.status}")
            latencies[url].append((time.perf_counter() - started) * 1000)

        tasks = []
        begin = time.perf_counter()
        for i in range(total):
            delay = begin + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(urls[i % len(urls)])))
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=seconds + 30)
    return latencies


@dataclass
class Offered:
    """What the open-loop load did: answers by (status, who answered), skips, the snapshot."""

    answers: Counter[tuple[int, str]]
    skipped: int
    at_end: Any


async def offer(
    send: Callable[[int], Awaitable[tuple[int, str]]],
    rate: float,
    seconds: float,
    at_end: Callable[[], Awaitable[Any]],
    max_in_flight: int,
    patience: float,
) -> Offered:
    """Call ``send(i)`` at ``rate``/s for ``seconds`` without awaiting answers; ``at_end()`` is
    taken ``seconds`` after the first send. Returns once every answer is in.

    Open loop, but bounded: a request due while ``max_in_flight`` are unanswered is skipped and
    counted. The answers may take ``patience`` seconds past the end of the load.
    """
    loop = asyncio.get_running_loop()
    answers: Counter[tuple[int, str]] = Counter()
    in_flight = skipped = 0

    async def one(index: int) -> None:
        nonlocal in_flight
        try:
            answers[await send(index)] += 1
        except (aiohttp.ClientError, TimeoutError):
            answers[(0, "client")] += 1
        finally:
            in_flight -= 1

    async def snapshot(when: float) -> Any:
        await asyncio.sleep(max(0.0, when - loop.time()))
        return await at_end()

    tasks: list[asyncio.Task[None]] = []
    begin = loop.time()
    end = asyncio.create_task(snapshot(begin + seconds))
    try:
        for index in range(round(rate * seconds)):
            delay = begin + index / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if in_flight >= max_in_flight:
                skipped += 1
                continue
            in_flight += 1
            tasks.append(asyncio.create_task(one(index)))
        async with asyncio.timeout(seconds + patience):
            await asyncio.gather(*tasks)
            snapshot_value = await end
    finally:
        for task in (*tasks, end):
            task.cancel()
    return Offered(answers, skipped, snapshot_value)


def wrk(
    url: str, seconds: int, connections: int, threads: int = 1, cpu: int | None = None
) -> float:
    """Requests/s that ``wrk`` reaches against ``url``."""
    binary = shutil.which("wrk")
    if binary is None:
        raise RuntimeError("wrk is needed for saturation figures: apt-get install wrk")
    out = subprocess.run(
        [
            *pinned(cpu),
            binary,
            "-t",
            str(threads),
            "-c",
            str(connections),
            "-d",
            f"{seconds}s",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
        check=True,
    ).stdout
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if match is None:
        raise RuntimeError(f"cannot read wrk's output:\n{out}")
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    if non2xx:
        raise RuntimeError(f"wrk saw {non2xx.group(1)} non-2xx answers")
    return float(match.group(1))
