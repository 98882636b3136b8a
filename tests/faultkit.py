"""Helpers for fault-injection tests: leak censuses, the proxy CLI as a process, /metrics samples.

A leak is counted, not guessed: open file descriptors of a process and live asyncio tasks of the
test's loop, compared with a baseline once everything has settled. Connections the upstream pool
keeps idle on purpose are set aside: with the simulator in the test process each one holds two
descriptors (both ends) and one task (the simulator's connection handler).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from proxy.errors import PROXY_HEADER
from proxy.upstream import Pool
from tests.procs import Process, start_cli

#: How long a census may take to come back to its baseline: closes and handler ends are async.
SETTLE_SECONDS = 5.0
FALLBACK_GAUGE = "defender_proxy_quota_store_fallback"
FALLBACKS_TOTAL = "defender_proxy_quota_store_fallbacks_total"
IN_FLIGHT = "defender_proxy_in_flight_requests"
FALLBACK_WARNING = "quota store unreachable: admitting against the local share"
RECOVERED = "quota store reachable again: the shared quota is back"


def open_fds() -> int:
    """Open file descriptors of this process."""
    return len(os.listdir("/proc/self/fd"))


@dataclass(frozen=True, slots=True)
class Census:
    """What the test process holds: descriptors and tasks, less the pool's idle connections."""

    fds: int
    tasks: int
    idle: int
    busy: int

    def within(self, baseline: Census) -> bool:
        return self.fds <= baseline.fds and self.tasks <= baseline.tasks and self.busy == 0


def census(pool: Pool) -> Census:
    """Count now; each idle pooled connection is two fds and one simulator task, both expected."""
    idle = pool.idle_connections
    return Census(
        fds=open_fds() - 2 * idle,
        tasks=len(asyncio.all_tasks()) - idle,
        idle=idle,
        busy=pool.open_connections - idle,
    )


async def settled(pool: Pool, seconds: float = SETTLE_SECONDS) -> Census:
    """A census once it has stopped changing (three equal readings 50 ms apart), within ``seconds``."""
    last, same = census(pool), 0
    for _ in range(int(seconds / 0.05)):
        await asyncio.sleep(0.05)
        now = census(pool)
        same = same + 1 if now == last else 0
        if same >= 2:
            return now
        last = now
    return last


async def back_to(pool: Pool, baseline: Census, seconds: float = SETTLE_SECONDS) -> Census:
    """Wait (bounded) for a census within ``baseline``; the last census either way."""
    now = census(pool)
    for _ in range(int(seconds / 0.05)):
        if now.within(baseline):
            return now
        await asyncio.sleep(0.05)
        now = census(pool)
    return now


async def until(check: Callable[[], bool], seconds: float, step: float = 0.02) -> bool:
    """Poll ``check`` every ``step`` seconds for at most ``seconds``; whether it came true."""
    for _ in range(int(seconds / step) + 1):
        if check():
            return True
        await asyncio.sleep(step)
    return check()


@dataclass(frozen=True, slots=True)
class Answer:
    """One client request as the caller saw it: status 0 is a transport failure."""

    status: int
    proxy_error: str | None
    sent: float
    done: float
    error: str = ""

    @property
    def seconds(self) -> float:
        return self.done - self.sent


async def get(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None
) -> Answer:
    """One GET, read to the end; a transport failure is an answer too, so a test can report it."""
    sent = time.monotonic()
    try:
        async with session.get(url, headers=headers) as response:
            await response.read()
            error = response.headers.get(PROXY_HEADER)
            return Answer(response.status, error, sent, time.monotonic())
    except (aiohttp.ClientError, OSError) as exc:
        return Answer(0, None, sent, time.monotonic(), repr(exc))


async def paced(
    session: aiohttp.ClientSession,
    url: str,
    stop: asyncio.Event,
    out: list[Answer],
    pace: float = 0.02,
) -> None:
    """A GET every ``pace`` seconds into ``out`` until ``stop`` (at most 2000)."""
    for _ in range(2000):
        if stop.is_set():
            return
        out.append(await get(session, url))
        await asyncio.sleep(pace)


def sample(text: str, name: str, **labels: str) -> float | None:
    """The sum of the samples called ``name`` whose labels include ``labels``; None if none."""
    found = [
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and labels.items() <= s.labels.items()
    ]
    return sum(found) if found else None


@dataclass
class CliProxy:
    """``defender-proxy run`` as a subprocess, its ports, and its output read as it comes."""

    process: Process
    port: int
    admin: int
    reader: asyncio.Task[None]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin}"

    @property
    def alive(self) -> bool:
        return self.process.proc.returncode is None

    def events(self, event: str) -> list[dict[str, Any]]:
        return [line for line in self.process.lines if line.get("event") == event]

    async def metrics(self, session: aiohttp.ClientSession) -> str:
        async with session.get(f"{self.admin_url}/metrics") as response:
            assert response.status == 200, response.status
            return await response.text()

    async def lines(self, event: str, count: int, seconds: float = 5.0) -> list[dict[str, Any]]:
        """The ``event`` lines once ``count`` of them have been read (AssertionError if not)."""
        await until(lambda: len(self.events(event)) >= count, seconds, 0.05)
        found = self.events(event)
        assert len(found) >= count, (len(found), count)
        return found

    def signal(self, sig: signal.Signals) -> None:
        self.process.proc.send_signal(sig)

    async def close(self) -> None:
        await self.process.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.reader, 5)


async def start_proxy(workdir: Path, config: str | None, path: Path | None = None) -> CliProxy:
    """Start the CLI on ``config`` (YAML, written to ``path`` or a new file in ``workdir``; None:
    the file at ``path`` as it is) and read its output in the background from then on."""
    path = path or workdir / f"proxy-{time.monotonic_ns()}.yaml"
    if config is not None:
        path.write_text(config, encoding="utf-8")
    process = await start_cli("run", "--config", str(path))
    try:
        line = await process.wait_for("listening")
    except BaseException:
        await process.stop()
        raise
    # One log line per request: keep reading, or a full pipe would stall the proxy's loop.
    reader = asyncio.create_task(process.drain_output())
    port = int(line["proxy"].rsplit(":", 1)[1])
    admin = int(line["admin"].rsplit(":", 1)[1])
    return CliProxy(process, port, admin, reader)


def proxy_config(upstream_port: int | None, *extra: str) -> str:
    """A CLI config on free loopback ports in front of ``upstream_port``, plus ``extra`` lines."""
    assert upstream_port is not None, "the upstream is not listening"
    lines = [
        f"upstream: http://127.0.0.1:{upstream_port}",
        "listen: 127.0.0.1:0",
        "admin_listen: 127.0.0.1:0",
        *extra,
    ]
    return "\n".join(lines) + "\n"
