"""Shared pieces of the benchmarks: starting the simulator and the proxy, RSS, percentiles, load."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_mib(pid: int) -> float:
    """Resident set size of a process, MiB."""
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"VmRSS:\s+(\d+) kB", text)
    return int(match.group(1)) / 1024 if match else float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used, seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0–100) by nearest rank."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))
    return ordered[index]


def median(values: list[float]) -> float:
    """The median, or NaN for no values."""
    return statistics.median(values) if values else float("nan")


@dataclass
class Service:
    """A started subprocess listening on a port."""

    proc: subprocess.Popen[bytes]
    port: int
    admin: int = 0

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _wait_port(port: int, proc: subprocess.Popen[bytes], seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port} after {seconds}s")


def _pinned(cpu: int | None) -> list[str]:
    if cpu is None or shutil.which("taskset") is None or (os.cpu_count() or 1) < 2:
        return []
    return ["taskset", "-c", str(cpu)]


def start_simulator(cpu: int | None = None, *limits: str) -> Service:
    """The simulator on a free port."""
    port = free_port()
    args = [sys.executable, "-m", "proxy", "simulate", "--port", str(port)]
    for limit in limits:
        args += ["--limit", limit]
    proc = subprocess.Popen(
        [*_pinned(cpu), *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    _wait_port(port, proc)
    return Service(proc, port)


# The benchmark route's quota: large enough never to hold the load, so every admission is the
# full decision (the log of admissions, the gauges) without turning the load into 429s.
BENCH_THROTTLE = 'throttle:\n  routes:\n    - {name: machines.list, limits: ["100000000/1h"]}\n'


def start_proxy(
    upstream_port: int, cpu: int | None = None, config: str = BENCH_THROTTLE, **env: str
) -> Service:
    """The proxy (all features on, JSON logs to /dev/null) in front of the upstream."""
    port, admin = free_port(), free_port()
    config_file = RESULTS / f".proxy-{port}.yaml"
    RESULTS.mkdir(parents=True, exist_ok=True)
    config_file.write_text(config)
    environ = {
        **os.environ,
        "DEFENDER_PROXY_UPSTREAM": f"http://127.0.0.1:{upstream_port}",
        "DEFENDER_PROXY_LISTEN": f"127.0.0.1:{port}",
        "DEFENDER_PROXY_ADMIN_LISTEN": f"127.0.0.1:{admin}",
        "DEFENDER_PROXY_LOG_FORMAT": "json",
        "DEFENDER_PROXY_CONFIG": str(config_file),
        **env,
    }
    proc = subprocess.Popen(
        [*_pinned(cpu), sys.executable, "-m", "proxy", "run"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=environ,
    )
    _wait_port(port, proc)
    _wait_port(admin, proc)
    return Service(proc, port, admin)


@contextlib.contextmanager
def services(*started: Service) -> Iterator[None]:
    """Stop every service on the way out."""
    try:
        yield
    finally:
        for service in started:
            service.stop()


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


def wrk(
    url: str, seconds: int, connections: int, threads: int = 1, cpu: int | None = None
) -> float:
    """Requests/s that ``wrk`` reaches against ``url``."""
    binary = shutil.which("wrk")
    if binary is None:
        raise RuntimeError("wrk is needed for saturation figures: apt-get install wrk")
    out = subprocess.run(
        [
            *_pinned(cpu),
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
