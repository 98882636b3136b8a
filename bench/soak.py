"""Soak: a steady mixed load for ten minutes, the quota on Redis, Redis restarted twice.

Run with ``python -m bench.soak`` (not part of ``make bench``: ``make soak``). Every 30 s it prints
the proxy's RSS and open file descriptors; at the end it checks RSS drift after warm-up (≤ 5 %),
a flat fd count, and that the proxy made no 5xx of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import Counter
from pathlib import Path

import aiohttp

from bench.services import (
    scratch_dir,
    services,
    start_proxy,
    start_redis,
    start_simulator,
    unwind_on_sigterm,
)
from bench.stats import rss_mib, write_json
from proxy.config import Settings

SECONDS = float(os.environ.get("BENCH_SOAK_SECONDS", "600"))
RATE = float(os.environ.get("BENCH_SOAK_RATE", "100"))
SAMPLE_EVERY = 30.0
WARM_UP = 60.0
# Connections the proxy may hold on the defaults: to Redis (per replica) and to the upstream.
REDIS_POOL = 1  # the lean client's one pipelined connection
UPSTREAM_POOL = Settings().pool.max_connections
# No TooManyRequests here: an upstream 429 pauses the route, which is not what a soak measures.
CODES = ("Unauthorized", "Forbidden", "NotFound", "InvalidInput", "InternalServerError")


def _sockets() -> dict[str, tuple[int, int]]:
    """Every TCP socket on the machine by inode: (local port, remote port); (0, 0) for the
    Unix-domain ones (the event loop's own socket pairs)."""
    found: dict[str, tuple[int, int]] = {}
    with contextlib.suppress(OSError), open("/proc/net/unix") as lines:
        next(lines)
        for line in lines:
            fields = line.split()
            if len(fields) >= 7:
                found[fields[6]] = (0, 0)
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                local, remote, inode = fields[1], fields[2], fields[9]
                found[inode] = (int(local.rsplit(":", 1)[1], 16), int(remote.rsplit(":", 1)[1], 16))
    return found


def _fds(pid: int, proxy_port: int, peers: dict[int, str]) -> Counter[str]:
    """The process's open fds by kind: connections to a peer (its port → kind), ``callers``
    (connections to the proxy port), ``reset`` (sockets the kernel has already dropped from its
    tables — a peer reset them — and the process has not yet closed), and ``own`` (files, pipes,
    listeners, the event loop's).
    """
    sockets = _sockets()
    kinds: Counter[str] = Counter(
        {"own": 0, "callers": 0, **dict.fromkeys(peers.values(), 0), "reset": 0}
    )
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            inode = target[len("socket:[") : -1] if target.startswith("socket:[") else ""
            if inode and inode not in sockets:
                kinds["reset"] += 1
                continue
            local, remote = sockets.get(inode, (0, 0))
            if remote in peers:
                kinds[peers[remote]] += 1
            elif remote and local == proxy_port:
                kinds["callers"] += 1
            else:
                kinds["own"] += 1
    return kinds


async def _load(url: str, seconds: float, statuses: Counter[str]) -> None:
    """Open-loop load at RATE for ``seconds``: 90 % plain answers, 10 % error answers."""
    connector = aiohttp.TCPConnector(limit=200)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(index: int) -> None:
            headers = {}
            if index % 10 == 0:
                headers["X-Simulate"] = f"error={CODES[(index // 10) % len(CODES)]}"
            try:
                async with session.get(url, headers=headers) as response:
                    await response.read()
                    source = "proxy" if "X-Defender-Proxy-Error" in response.headers else "api"
                    statuses[f"{source} {response.status}"] += 1
            except aiohttp.ClientError as exc:
                statuses[f"client {type(exc).__name__}"] += 1

        tasks: set[asyncio.Task[None]] = set()
        begin = time.perf_counter()
        index = 0
        while (elapsed := time.perf_counter() - begin) < seconds:
            delay = begin + index / RATE - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if len(tasks) < 1000:  # bounded in flight
                task = asyncio.create_task(one(index))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            index += 1
            del elapsed
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=30)


async def _run(workdir: Path) -> dict[str, object]:
    redis = start_redis(workdir)
    sim = start_simulator(1)
    config = (
        f"throttle:\n  store: redis://127.0.0.1:{redis.port}/0\n"
        "  fallback: {expected_replicas: 1, cooldown: 2s}\n"
        # A limit the steady load fits in with a realistic window: the logs stay bounded by it.
        '  routes:\n    - {name: machines.list, limits: ["10000/1m"]}\n'
    )
    proxy = start_proxy(sim.port, 0, config=config)
    peers = {sim.port: "upstream", redis.port: "redis"}
    statuses: Counter[str] = Counter()
    samples: list[dict[str, float]] = []
    restarts = (SECONDS / 3, 2 * SECONDS / 3)
    with services(proxy, sim, redis):
        load = asyncio.create_task(_load(f"{proxy.url}/api/machines", SECONDS, statuses))
        begin = time.monotonic()
        pending = list(restarts)
        next_sample = 0.0
        while not load.done():
            elapsed = time.monotonic() - begin
            if pending and elapsed >= pending[0]:
                pending.pop(0)
                redis.stop()
                await asyncio.sleep(5)  # Redis down: the local share takes over
                redis = start_redis(workdir, redis.port)
                print(f"{elapsed:7.0f} s  Redis restarted", flush=True)
            if elapsed >= next_sample:
                fds = _fds(proxy.pid, proxy.port, peers)
                row = {
                    "t": round(elapsed),
                    "rss_mib": rss_mib(proxy.pid),
                    "fds": sum(fds.values()),
                    **{f"fds_{kind}": n for kind, n in fds.items()},
                    "requests": sum(statuses.values()),
                    "proxy_5xx": sum(n for k, n in statuses.items() if k.startswith("proxy 5")),
                }
                samples.append(row)
                kinds = ", ".join(f"{kind} {n}" for kind, n in fds.items())
                print(
                    f"{row['t']:7} s  RSS {row['rss_mib']:6.1f} MB  fds {row['fds']:3} ({kinds})  "
                    f"requests {row['requests']:7}  proxy 5xx {row['proxy_5xx']}",
                    flush=True,
                )
                next_sample += SAMPLE_EVERY
            await asyncio.sleep(0.5)
        await load
    warm = [s for s in samples if s["t"] >= WARM_UP] or samples
    drift = (warm[-1]["rss_mib"] - warm[0]["rss_mib"]) / warm[0]["rss_mib"] * 100
    spreads = {
        kind: max(s[f"fds_{kind}"] for s in warm) - min(s[f"fds_{kind}"] for s in warm)
        for kind in ("own", "callers", "upstream", "redis", "reset")
    }
    return {
        "seconds": SECONDS,
        "rate": RATE,
        "samples": samples,
        "statuses": dict(statuses),
        "rss_drift_pct": drift,
        "fd_spreads": spreads,
        "fd_peaks": {
            "upstream": max(s["fds_upstream"] for s in warm),
            # Pooled connections the peer reset are still the pool's until it next hands them out.
            "redis": max(s["fds_redis"] + s["fds_reset"] for s in warm),
        },
        "fd_growth": warm[-1]["fds"] - warm[0]["fds"],
    }


def main() -> None:
    """Soak, then print the verdicts."""
    unwind_on_sigterm()  # a SIGTERM still stops Redis, the simulator and the proxy
    with scratch_dir("soak") as workdir:
        result = asyncio.run(_run(workdir))
    statuses: dict[str, int] = result["statuses"]  # type: ignore[assignment]
    proxy_5xx = sum(n for k, n in statuses.items() if k.startswith("proxy 5"))
    print(f"\nanswers: {dict(sorted(statuses.items()))}")
    drift = float(result["rss_drift_pct"])  # type: ignore[arg-type]
    print(
        f"RSS drift after warm-up: {drift:+.1f} %  (target ≤ 5 %: {'met' if drift <= 5 else 'MISSED'})"
    )
    spreads: dict[str, int] = result["fd_spreads"]  # type: ignore[assignment]
    peaks: dict[str, int] = result["fd_peaks"]  # type: ignore[assignment]
    growth = int(result["fd_growth"])  # type: ignore[call-overload]
    # Flat: the proxy's own fds never change; its connections stay within their pools, and the
    # callers' connections are the load generator's to open and close.
    flat = (
        spreads["own"] == 0 and peaks["redis"] <= REDIS_POOL and peaks["upstream"] <= UPSTREAM_POOL
    )
    print(
        f"open fds after warm-up: own ones vary by {spreads['own']}, connections to Redis (reset "
        f"ones included) peak at "
        f"{peaks['redis']} (at most {REDIS_POOL}), to the upstream at {peaks['upstream']} (pool "
        f"{UPSTREAM_POOL}); callers' connections vary by {spreads['callers']}; total "
        f"{growth:+d} from first to last sample  (target: flat: {'met' if flat else 'MISSED'})"
    )
    print(f"5xx made by the proxy: {proxy_5xx}  (target: 0; Redis was down twice for 5 s)")
    write_json("soak.json", result)


if __name__ == "__main__":
    main()
