"""SIGHUP to the real CLI, in front of ``defender-proxy simulate`` enforcing its limit: a limit
lowered under load with callers queued loses and repeats nothing, and governs from then on; a file
that does not validate, or a change that needs a restart, leaves the process serving as it was."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.faultkit import CliProxy, sample, start_proxy
from tests.procs import Process, start_cli

#: The simulator's window, and the proxy's margin on top of it.
WINDOW = 2.0
MARGIN = "200ms"
BEFORE, AFTER = 6, 3
#: Callers sent at once before the reload (most of them wait), and after it.
FIRST_WAVE, SECOND_WAVE = 30, 9


def _config(upstream: int, limit: int, listen: str = "127.0.0.1:0") -> str:
    return (
        f"upstream: http://127.0.0.1:{upstream}\nlisten: {listen}\nadmin_listen: 127.0.0.1:0\n"
        "timeouts: {connect: 1s, read: 10s}\n"
        f"throttle:\n  margin: {MARGIN}\n  max_wait: 40s\n"
        f"  routes: [{{name: machines.get, limits: ['{limit}/{WINDOW:g}s']}}]\n"
    )


@dataclass
class Running:
    """The simulator and the proxy in front of it, each a process, and the proxy's config file."""

    simulator: Process
    simulator_port: int
    proxy: CliProxy
    path: Path

    async def reload(self, text: str, event: str) -> dict[str, Any]:
        """Write ``text`` as the config file, send SIGHUP, and return the ``event`` line."""
        count = len(self.proxy.events(event))
        self.path.write_text(text, encoding="utf-8")
        self.proxy.signal(signal.SIGHUP)
        return (await self.proxy.lines(event, count + 1, seconds=10.0))[count]

    async def journal(self, session: aiohttp.ClientSession) -> list[dict[str, Any]]:
        url = f"http://127.0.0.1:{self.simulator_port}/_sim/requests"
        async with session.get(url) as response:
            listed: list[dict[str, Any]] = (await response.json())["requests"]
        return listed

    async def throttled(self, session: aiohttp.ClientSession) -> int:
        async with session.get(f"http://127.0.0.1:{self.simulator_port}/_sim/stats") as response:
            return int((await response.json())["throttled"])


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    """``simulate --limit 6/2s`` and ``run --config`` in front of it with the same limit."""
    simulator = await start_cli("simulate", "--port", "0", "--limit", f"{BEFORE}/{WINDOW:g}s")
    proxy: CliProxy | None = None
    try:
        text = (await simulator.wait_for("_text"))["text"]
        port = int(text.strip().rsplit(":", 1)[1])
        path = tmp_path / "proxy.yaml"
        proxy = await start_proxy(tmp_path, _config(port, BEFORE), path)
        yield Running(simulator, port, proxy, path)
    finally:
        if proxy is not None:
            await proxy.close()
        await simulator.stop()


async def _get(session: aiohttp.ClientSession, url: str, request_id: str) -> int:
    async with session.get(url, headers={"client-request-id": request_id}) as response:
        await response.read()
        return response.status


def _busiest(times: list[float], among: Callable[[float], bool] = lambda _: True) -> int:
    """The most of ``times`` in any interval of WINDOW seconds ending at one of ``among``."""
    return max(
        (sum(1 for other in times if end - WINDOW < other <= end) for end in times if among(end)),
        default=0,
    )


@pytest.mark.slow
async def test_a_limit_lowered_under_load_drops_and_repeats_nothing(running: Running) -> None:
    """6/2s → 3/2s with 24 callers queued: every caller gets one answer (200), the simulator saw
    every request id exactly once and throttled none; the callers queued before the reload went
    on their slots, six to a window, and in any window ending at a request sent after it, the
    simulator saw at most three (the new limit, counted with what the window already held)."""
    url = f"{running.proxy.url}/api/machines/m1"
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        first = [asyncio.create_task(_get(session, url, f"first-{i}")) for i in range(FIRST_WAVE)]
        for _ in range(500):  # the first window's six reach the simulator; the rest wait
            if len(await running.journal(session)) >= BEFORE:
                break
            await asyncio.sleep(0.02)
        reloaded = await running.reload(_config(running.simulator_port, AFTER), "reloaded")
        assert reloaded["changed"] == ["throttle.routes"]
        second = [
            asyncio.create_task(_get(session, url, f"second-{i}")) for i in range(SECOND_WAVE)
        ]
        statuses = await asyncio.gather(*first, *second)
        journal = await running.journal(session)
        throttled = await running.throttled(session)
        metrics = await running.proxy.metrics(session)
    assert statuses == [200] * (FIRST_WAVE + SECOND_WAVE)
    sent = [f"first-{i}" for i in range(FIRST_WAVE)] + [f"second-{i}" for i in range(SECOND_WAVE)]
    assert Counter(entry["id"] for entry in journal) == Counter(sent)
    assert throttled == 0
    times = [entry["at"] for entry in journal]
    after = {entry["at"] for entry in journal if entry["id"].startswith("second-")}
    # The waiters kept the old limit's slots: a later window of theirs still holds six.
    first_times = [entry["at"] for entry in journal if entry["id"].startswith("first-")]
    assert _busiest(first_times, lambda end: end > min(first_times) + WINDOW) == BEFORE
    assert _busiest(times, lambda end: end in after) == AFTER
    assert sample(metrics, "defender_proxy_reloads_total", result="ok") == 1


@pytest.mark.slow
async def test_an_invalid_file_leaves_the_process_serving(running: Running) -> None:
    """SIGHUP with a file that does not validate: the problems check-config prints are logged,
    invalid is counted, and the process serves on with the settings it had."""
    line = await running.reload(
        _config(running.simulator_port, AFTER).replace("margin: 200ms", "margin: 2 seconds"),
        "reload refused: the running settings stay",
    )
    assert line["level"] == "warning"
    checked = await start_cli("check-config", str(running.path))
    await checked.drain_output()
    assert await checked.proc.wait() == 2
    printed = [entry["text"].rstrip("\n") for entry in checked.lines]
    assert line["problems"] == printed
    assert "throttle.margin" in printed[0]
    async with aiohttp.ClientSession() as session:
        assert await _get(session, f"{running.proxy.url}/api/machines/m1", "after") == 200
        metrics = await running.proxy.metrics(session)
    assert sample(metrics, "defender_proxy_reloads_total", result="invalid") == 1
    assert sample(metrics, "defender_proxy_reloads_total", result="ok") == 0
    assert running.proxy.alive


@pytest.mark.slow
async def test_a_new_listen_address_is_named_and_nothing_else_changes(running: Running) -> None:
    """SIGHUP with a new listen address: the warning names listen, the process goes on serving
    on the address it had, and nothing is applied."""
    line = await running.reload(
        _config(running.simulator_port, BEFORE, listen="127.0.0.1:1"),
        "reload: settings that need a restart were not applied",
    )
    assert line["needs_restart"] == ["listen"]
    await running.proxy.lines("reload: nothing to apply", 1)
    async with aiohttp.ClientSession() as session:
        assert await _get(session, f"{running.proxy.url}/api/machines/m1", "after") == 200
        metrics = await running.proxy.metrics(session)
    assert sample(metrics, "defender_proxy_reloads_total", result="unchanged") == 1
    assert running.proxy.events("reloaded") == []


@pytest.mark.slow
async def test_a_fifo_swapped_in_then_sigterm_still_drains(running: Running) -> None:
    """SIGHUP with a FIFO where the file was: refused at once, and SIGTERM still drains, exit 0."""
    running.path.unlink()
    os.mkfifo(running.path)
    running.proxy.signal(signal.SIGHUP)
    [line] = await running.proxy.lines("reload refused: the running settings stay", 1)
    assert line["problems"] == [f"{running.path}: cannot read the config file: not a regular file"]
    async with aiohttp.ClientSession() as session:
        assert await _get(session, f"{running.proxy.url}/api/machines/m1", "after") == 200
    running.proxy.signal(signal.SIGTERM)
    try:
        assert await asyncio.wait_for(running.proxy.process.proc.wait(), 10) == 0
    finally:
        # Free a reload left waiting to open the FIFO, so the process can be stopped.
        with contextlib.suppress(OSError):
            os.close(os.open(running.path, os.O_WRONLY | os.O_NONBLOCK))
    await running.proxy.lines("stopped", 1)
