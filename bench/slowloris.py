"""Slowloris: thousands of connections dribbling request heads at a proxy with 1,024 descriptors.

Run with ``python -m bench.slowloris`` (part of ``make bench``). The proxy runs on its defaults
(``timeouts.caller`` 30 s, the connection cap derived from its descriptor limit) with its soft
``RLIMIT_NOFILE`` set to 1,024. ``BENCH_SLOWLORIS`` attackers (2,000) each open a connection, send
part of a request head, then one more header line every 5 s; an attacker whose connection is
closed opens a new one a second later, for ``BENCH_SLOWLORIS_SECONDS`` (60). Beside them, an ordinary
caller (a process of its own) sends a GET on a fresh connection every 50 ms. Printed: the ordinary callers' success rate
and latency (p50, p99) before and during the attack, the proxy's peak RSS and descriptors, and
how the proxy shed the attack (head timeouts, evictions, refusals).
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import resource
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import aiohttp

from bench.services import (
    Service,
    scrape,
    services,
    start_proxy,
    start_simulator,
    unwind_on_sigterm,
)
from bench.stats import percentile, rss_mib, write_json

ATTACKERS = int(os.environ.get("BENCH_SLOWLORIS", "2000"))
SECONDS = float(os.environ.get("BENCH_SLOWLORIS_SECONDS", "60"))
FD_LIMIT = 1024
PACE = 0.05
DRIBBLE = 5.0
# A slowloris fills the server with slow connections; it does not flood it with new ones.
RECONNECT = 1.0
REQUEST = b"GET /api/machines HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
HEAD_START = b"GET /api/machines HTTP/1.1\r\nHost: bench\r\n"


@dataclass
class Calls:
    """What the ordinary caller saw."""

    latencies: list[float] = field(default_factory=list)
    failures: int = 0

    @property
    def sent(self) -> int:
        return len(self.latencies) + self.failures


def _ordinary_process(port: int, seconds: float) -> Calls:
    """The ordinary caller, run in a process of its own so the attack's event loop cannot slow it."""
    calls = Calls()
    asyncio.run(_ordinary(port, seconds, calls))
    return calls


async def _ordinary(port: int, seconds: float, calls: Calls) -> None:
    until = time.monotonic() + seconds

    async def one() -> None:
        started = time.monotonic()
        try:
            async with asyncio.timeout(10.0):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                try:
                    writer.write(REQUEST)
                    answer = await reader.read()
                finally:
                    writer.close()
        except (OSError, TimeoutError):
            calls.failures += 1
            return
        if answer.startswith(b"HTTP/1.1 200"):
            calls.latencies.append(time.monotonic() - started)
        else:
            calls.failures += 1

    tasks: list[asyncio.Task[None]] = []
    for _ in range(int(SECONDS / PACE) + 1):
        if time.monotonic() >= until:
            break
        tasks.append(asyncio.create_task(one()))
        await asyncio.sleep(PACE)
    await asyncio.gather(*tasks)


async def _attacker(port: int, until: float, opened: list[int]) -> None:
    while time.monotonic() < until:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.1)
            continue
        opened[0] += 1
        try:
            writer.write(HEAD_START)
            while time.monotonic() < until:
                with contextlib.suppress(TimeoutError):
                    if not await asyncio.wait_for(reader.read(4096), DRIBBLE):
                        break  # closed by the proxy
                    break  # an answer (408): the proxy is done with this connection
                writer.write(b"X-Dribble: a\r\n")
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()
        await asyncio.sleep(RECONNECT)


async def _sample_proxy(pid: int, until: float, peak: dict[str, float]) -> None:
    while time.monotonic() < until:
        peak["rss_mib"] = max(peak.get("rss_mib", 0.0), rss_mib(pid))
        with contextlib.suppress(OSError):
            peak["fds"] = max(peak.get("fds", 0.0), float(len(os.listdir(f"/proc/{pid}/fd"))))
        await asyncio.sleep(0.5)


def _summary(calls: Calls) -> dict[str, float]:
    ms = [s * 1000 for s in calls.latencies]
    return {
        "calls": calls.sent,
        "success_pct": 100 * len(calls.latencies) / calls.sent if calls.sent else float("nan"),
        "p50_ms": percentile(ms, 50),
        "p99_ms": percentile(ms, 99),
    }


_SHED = {
    "head_timeouts": r'^defender_proxy_caller_timeouts_total\{phase="head"\} (\S+)$',
    "evicted": r'^defender_proxy_caller_connections_shed_total\{reason="evicted"\} (\S+)$',
    "refused": r'^defender_proxy_caller_connections_shed_total\{reason="refused"\} (\S+)$',
}


async def _run(proxy: Service) -> dict[str, object]:
    port, pid = proxy.port, proxy.pid
    loop = asyncio.get_running_loop()
    executor = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
    quiet = await loop.run_in_executor(executor, _ordinary_process, port, 10.0)
    idle_rss = rss_mib(pid)
    until = time.monotonic() + SECONDS
    opened = [0]
    peak: dict[str, float] = {}
    attack = [asyncio.create_task(_attacker(port, until, opened)) for _ in range(ATTACKERS)]
    sampler = asyncio.create_task(_sample_proxy(pid, until, peak))
    await asyncio.sleep(5.0)  # let the attack take hold before measuring
    loud = await loop.run_in_executor(executor, _ordinary_process, port, until - time.monotonic())
    await asyncio.gather(*attack, sampler)
    executor.shutdown()
    async with aiohttp.ClientSession() as session:
        shed = await scrape(session, [proxy], _SHED)
    return {
        "attackers": ATTACKERS,
        "seconds": SECONDS,
        "fd_limit": FD_LIMIT,
        "attack_connections_opened": opened[0],
        "before": _summary(quiet),
        "during": _summary(loud),
        "idle_rss_mib": idle_rss,
        "peak_rss_mib": peak.get("rss_mib", float("nan")),
        "peak_fds": peak.get("fds", float("nan")),
        "shed": shed,
    }


def main() -> None:
    unwind_on_sigterm()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = ATTACKERS + 1024
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise SystemExit(f"bench.slowloris needs a hard descriptor limit of {needed} (ulimit -Hn)")
    # The proxy inherits 1,024; this process then takes what the attackers need.
    resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, hard))
    simulator = start_simulator()
    proxy = start_proxy(simulator.port)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, needed), hard))
    with services(simulator, proxy):
        result = asyncio.run(_run(proxy))
    out = write_json("slowloris.json", result)
    before, during = result["before"], result["during"]
    assert isinstance(before, dict)
    assert isinstance(during, dict)
    print(f"slowloris: {ATTACKERS} attackers for {SECONDS:g}s, proxy limited to {FD_LIMIT} fds")
    for name, row in (("before", before), ("during", during)):
        print(
            f"  ordinary callers {name:>6}: {row['calls']:.0f} calls, "
            f"{row['success_pct']:.1f}% answered 200, p50 {row['p50_ms']:.1f} ms, "
            f"p99 {row['p99_ms']:.1f} ms"
        )
    print(
        f"  proxy: RSS {result['idle_rss_mib']:.1f} MiB idle, {result['peak_rss_mib']:.1f} MiB peak;"
        f" peak fds {result['peak_fds']:.0f}; attack connections opened "
        f"{result['attack_connections_opened']}"
    )
    print(f"  shed by the proxy: {result['shed']}")
    print(f"  -> {out}")


if __name__ == "__main__":
    main()
