"""Starting and stopping what a benchmark runs: the simulator, a private Redis, the OTLP
collector, the proxy (nginx lives in ``bench.nginx``); waiting until they listen, stopping them
all on the way out (a SIGTERM too), their scratch directories, and asking them for figures (the
simulator's stats, the proxy's /metrics and request log lines)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import aiohttp

from bench.stats import RESULTS
from tests.support import redis as redis_server
from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Service:
    """A started subprocess listening on a port (and on an admin port, for the proxy)."""

    proc: subprocess.Popen[bytes]
    port: int
    admin: int = 0
    #: where the proxy's JSON log lines go
    log: Path = Path(os.devnull)
    #: a file made for this service alone, removed when it stops
    scratch: Path | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        stop_all([self])


def stop_all(started: Iterable[Service], seconds: float = 10.0) -> None:
    """SIGTERM every service at once, then wait; SIGKILL those still running after ``seconds``."""
    started = list(started)
    procs = [service.proc for service in started if service.proc.poll() is None]
    for proc in procs:
        proc.terminate()
    deadline = time.monotonic() + seconds
    for proc in procs:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for service in started:
        if service.scratch is not None and service.proc.poll() is not None:
            service.scratch.unlink(missing_ok=True)


@contextlib.contextmanager
def services(*started: Service) -> Iterator[None]:
    """Stop every service on the way out."""
    try:
        yield
    finally:
        stop_all(started)


def _terminate(signum: int, _: object) -> None:
    raise SystemExit(128 + signum)


def unwind_on_sigterm() -> None:
    """Make a SIGTERM unwind like Ctrl-C, through every ``finally`` that stops a process."""
    signal.signal(signal.SIGTERM, _terminate)


@contextlib.contextmanager
def scratch_dir(prefix: str) -> Iterator[Path]:
    """``BENCH_LOG_DIR`` if set (kept afterwards), else a temporary directory removed on the way
    out: where a bench's processes keep their configs and logs."""
    kept = os.environ.get("BENCH_LOG_DIR")
    if kept:
        Path(kept).mkdir(parents=True, exist_ok=True)
        yield Path(kept)
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as name:
        yield Path(name)


def wait_port(port: int, proc: subprocess.Popen[bytes], seconds: float = 15.0) -> None:
    """Return once ``port`` accepts connections; raise if ``proc`` exits or ``seconds`` pass."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port} after {seconds:g}s")


def ready(*started: Service, seconds: float = 15.0) -> None:
    """Wait until every service listens on its ports; stop them all if one never does."""
    try:
        for service in started:
            for port in (service.port, service.admin):
                if port:
                    wait_port(port, service.proc, seconds)
    except BaseException:
        stop_all(started)
        raise


def _environ() -> dict[str, str]:
    # The proxy's environment variables win over its config file: none may leak in from ours
    # (a stray DEFENDER_PROXY_STORE would point a bench at someone else's Redis), and tracing is
    # on only where a bench turns it on (a stray OTEL_TRACES_EXPORTER would trace every proxy).
    return {k: v for k, v in os.environ.items() if not k.startswith(("DEFENDER_PROXY_", "OTEL_"))}


def pinned(cpu: int | None) -> list[str]:
    """The command prefix that pins a process to ``cpu`` (none on one core or without taskset)."""
    if cpu is None or shutil.which("taskset") is None or (os.cpu_count() or 1) < 2:
        return []
    return ["taskset", "-c", str(cpu)]


def start_redis(workdir: Path, port: int | None = None, cpu: int | None = None) -> Service:
    """A private redis-server on a loopback port (a free one by default), without persistence,
    returned once it answers PING."""
    port = port or free_port()
    service = Service(redis_server.launch(workdir, port, prefix=pinned(cpu)), port)
    try:
        redis_server.wait_answers(port, service.proc)
    except BaseException:
        stop_all([service])
        raise
    return service


def start_simulator(cpu: int | None = None, *limits: str, per_identity: bool = False) -> Service:
    """The simulator on a free port (``per_identity``: a quota per route and token identity)."""
    port = free_port()
    args = [sys.executable, "-m", "proxy", "simulate", "--port", str(port)]
    for limit in limits:
        args += ["--limit", limit]
    if per_identity:
        args.append("--per-identity")
    proc = subprocess.Popen(
        [*pinned(cpu), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=_environ(),
    )
    service = Service(proc, port)
    ready(service)
    return service


def start_collector(cpu: int | None = None) -> Service:
    """The stand-in OTLP/HTTP collector (``tests.otlp_collector``) on a free port: it decodes
    every export and counts the spans (``GET /stats``)."""
    port = free_port()
    proc = subprocess.Popen(
        [*pinned(cpu), sys.executable, "-m", "tests.otlp_collector", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=_environ(),
        cwd=ROOT,
    )
    service = Service(proc, port)
    ready(service)
    return service


def tracing_env(collector: Service) -> dict[str, str]:
    """The environment that turns a proxy's tracing on, exporting every span to ``collector``
    (OTLP over HTTP, the SDK's default batching; every request sampled)."""
    return {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url,
        "OTEL_TRACES_SAMPLER": "always_on",
    }


# The benchmark route's quota: large enough never to hold the load, so every admission is the
# full decision (the log of admissions, the gauges) without turning the load into 429s.
BENCH_THROTTLE = 'throttle:\n  routes:\n    - {name: machines.list, limits: ["100000/1s"]}\n'


@contextlib.contextmanager
def _outputs(log: Path | None) -> Iterator[tuple[IO[bytes] | int, IO[bytes] | int]]:
    """A process's stdout and stderr: ``log`` and the same name ending ``.err``, or /dev/null."""
    if log is None:
        yield subprocess.DEVNULL, subprocess.DEVNULL
        return
    with log.open("wb") as out, log.with_suffix(".err").open("wb") as err:
        yield out, err


def _spawn_proxy(
    upstream_port: int,
    config: str,
    log: Path | None,
    cpu: int | None,
    env: Mapping[str, str],
    cwd: Path | None = None,
) -> Service:
    """The proxy (JSON logs to ``log``, else /dev/null) in front of the upstream, not yet listening.

    ``config`` is the YAML text; it is written next to ``log`` (``.yaml``), else to bench/results.
    ``cwd``: the checkout whose ``proxy`` package runs (default: this one).
    """
    port, admin = free_port(), free_port()
    config_file = log.with_suffix(".yaml") if log is not None else RESULTS / f".proxy-{port}.yaml"
    config_file.parent.mkdir(parents=True, exist_ok=True)
    config_file.write_text(config)
    environ = {
        **_environ(),
        "DEFENDER_PROXY_UPSTREAM": f"http://127.0.0.1:{upstream_port}",
        "DEFENDER_PROXY_LISTEN": f"127.0.0.1:{port}",
        "DEFENDER_PROXY_ADMIN_LISTEN": f"127.0.0.1:{admin}",
        "DEFENDER_PROXY_LOG_FORMAT": "json",
        "DEFENDER_PROXY_CONFIG": str(config_file),
        **env,
    }
    with _outputs(log) as (out, err):
        proc = subprocess.Popen(
            [*pinned(cpu), sys.executable, "-m", "proxy", "run"],
            stdout=out,
            stderr=err,
            env=environ,
            # `python -m` puts the working directory first on the path: its package runs.
            cwd=cwd,
        )
    scratch = None if log is not None else config_file
    return Service(proc, port, admin, log or Path(os.devnull), scratch)


def start_proxy(
    upstream_port: int,
    cpu: int | None = None,
    config: str = BENCH_THROTTLE,
    log: Path | None = None,
    cwd: Path | None = None,
    **env: str,
) -> Service:
    """The proxy (all features on, JSON logs to ``log``, else /dev/null) in front of the upstream,
    listening on ``.port`` and ``.admin``; from the checkout ``cwd`` if given."""
    service = _spawn_proxy(upstream_port, config, log, cpu, env, cwd)
    ready(service)
    return service


def start_proxies(
    upstream_port: int, config: str, logs: list[Path], seconds: float = 20.0
) -> list[Service]:
    """One proxy per log file in ``logs``, all with ``config`` in front of the upstream.

    Started together, then awaited together: eight proxies come up in the time of one.
    """
    started: list[Service] = []
    with contextlib.ExitStack() as undo:
        undo.callback(stop_all, started)
        started.extend(_spawn_proxy(upstream_port, config, log, None, {}) for log in logs)
        ready(*started, seconds=seconds)
        undo.pop_all()
    return started


# -- asking the processes --------------------------------------------------------------------


@dataclass
class SimulatorClient:
    """The simulator's control endpoints: its counters, and a reset of them."""

    session: aiohttp.ClientSession
    url: str

    async def stats(self) -> dict[str, Any]:
        """Requests, admissions, 429s and the most admitted in a window, since the last reset."""
        async with self.session.get(f"{self.url}/_sim/stats") as response:
            stats: dict[str, Any] = await response.json()
            return stats

    async def reset(self) -> None:
        """Forget every request and figure, the quota windows too."""
        async with self.session.post(f"{self.url}/_sim/reset") as response:
            response.raise_for_status()


async def scrape(
    session: aiohttp.ClientSession, proxies: Iterable[Service], patterns: Mapping[str, str]
) -> dict[str, float]:
    """Per name, the sum over the proxies' /metrics of the values ``patterns[name]`` matches
    (group 1, one line each); a name that matches nothing is left out."""
    figures: dict[str, float] = {}
    for proxy in proxies:
        async with session.get(f"http://127.0.0.1:{proxy.admin}/metrics") as response:
            text = await response.text()
        for name, pattern in patterns.items():
            for match in re.finditer(pattern, text, re.MULTILINE):
                figures[name] = figures.get(name, 0.0) + float(match.group(1))
    return figures


def request_lines(proxy: Service, offset: int, route: str) -> list[dict[str, Any]]:
    """The proxy's request log lines for ``route`` written past byte ``offset`` of its log."""
    with proxy.log.open("rb") as log:
        log.seek(offset)
        data = log.read()
    lines = (json.loads(raw) for raw in data.splitlines() if raw.strip())
    return [line for line in lines if line.get("event") == "request" and line["route"] == route]
