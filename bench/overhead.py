"""What the proxy costs over the direct call and next to nginx: latency, throughput, memory, CPU.

Run with ``make bench`` (or ``python -m bench.overhead``). One run starts, all on 127.0.0.1:

- the simulator (the upstream), pinned to core 1 with a private ``redis-server``, this script,
  its load generator and ``wrk``;
- four proxies pinned to core 0, every feature on (routing, a quota too large ever to hold the
  load, classification, metrics, a JSON log line per request written to a file): ``proxy-memory``
  with the in-process quota store and tracing off (the default: nothing of OpenTelemetry is
  imported; on jemalloc where the machine has it, as ``run`` starts), ``proxy-system`` the same
  on CPython's and glibc's allocators (``allocator: system``), ``proxy-traced`` the same with tracing on (``OTEL_TRACES_EXPORTER=otlp``, every
  request sampled: three spans each, exported over OTLP/HTTP to the stand-in collector
  ``tests.otlp_collector``, on core 1, which decodes and counts them), ``proxy-redis`` with
  ``throttle.store`` on the private Redis;
- nginx pinned to core 0 (``bench.nginx``: one worker, ``proxy_pass`` to an upstream keep-alive
  pool of 32, an access log line per request in the ``combined`` format, written to a file).

Each round measures every system in turn, the order rotating from round to round (``direct`` is the
simulator itself), and the table holds the medians over the rounds:

- latency at fixed rates (200 and 1,000 req/s; ``BENCH_SECONDS`` and half of it): open-loop, from a
  separate process on uvloop writing raw HTTP/1.1 on keep-alive sockets (a pool of 64, opened and
  used once before the clock starts; a request due while every socket is busy opens one more and is
  timed from when it was due). Each request is timed from its write to the last byte of its answer;
  the achieved rate is checked against the target (±5 %), and how late the sends were is reported.
  Added latency is the system's percentile minus the direct call's, in the same round;
- the same at 200 req/s once more, each system paired with the direct call in one segment: both
  driven together at 200 req/s, the direct call half a period after each request to the system
  (neither waits for the other at the simulator; the system's core sees only its own requests).
  Added latency from one segment, not two taken a minute apart: on a shared machine the direct
  call's p50 at 200 req/s moves by a third from one minute to the next (0.36 to 0.53 ms in one
  run), and the system's with it;
- saturation on the mix: ``wrk`` (1 thread, 32 connections, ``BENCH_SATURATION_SECONDS``) with a
  Lua script asking for an error answer on every 10th request (codes in turn; never 429, which
  would pause the route's quota), so the error envelopes are parsed, counted and logged. Besides
  wrk's req/s, the system's CPU time over the run (``/proc/<pid>/stat``) gives its share of the
  core, CPU per 1,000 requests, and requests per CPU-second: the "per core" figure the targets
  use. wrk's req/s understates it twice over: nginx never fills its core (the simulator and wrk
  fill core 1 first), and on a shared machine the proxy does not get all of core 0 either (the
  table shows how much it had, and how much other processes took from /proc/stat);
- RSS idle (after 300 requests, before the rounds), with 1,000 idle keep-alive client connections
  open (each after one request), and its growth while 1 GiB streams through. For nginx, the
  worker's RSS and CPU (the master only supervises);
- RSS once the rounds are over: a second after them, and again after ``BENCH_QUIET_SECONDS`` (55)
  of quiet, time for the upstream connections the rounds opened to pass their keepalive (30 s)
  and for the proxy to give back what it can (``proxy.trim``, which looks every 10 s); each also
  as a multiple of the RSS idle before the rounds.

Settings from the environment: ``BENCH_ROUNDS`` (3), ``BENCH_SECONDS`` (10),
``BENCH_SATURATION_SECONDS`` (8), ``BENCH_QUIET_SECONDS`` (55), ``BENCH_LOG_DIR`` (keep the configs and logs there), and
``BENCH_BASELINE``: another checkout of the project (``git worktree add /tmp/base main``), whose
proxy (the in-process store, tracing off) runs as a sixth system, ``proxy-baseline``, in the same
rounds: ``proxy-memory``'s figures over its, a change's cost measured under the same neighbours.
The table is also written to ``bench/results/overhead.json``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from bench.nginx import start_nginx, worker_pid
from bench.services import (
    BENCH_THROTTLE,
    ROOT,
    Service,
    scratch_dir,
    start_collector,
    start_proxy,
    start_redis,
    start_simulator,
    stop_all,
    tracing_env,
    unwind_on_sigterm,
)
from bench.stats import cpu_seconds, finite, median, meets, percentile, rss_mib, write_json

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
SECONDS = float(os.environ.get("BENCH_SECONDS", "10"))
SATURATION_SECONDS = int(os.environ.get("BENCH_SATURATION_SECONDS", "8"))
#: seconds after the rounds before the RSS "once quiet" is read
QUIET = float(os.environ.get("BENCH_QUIET_SECONDS", "55"))
#: req/s → seconds of each fixed-rate segment (5,000+ samples at 1,000 req/s)
RATES = {200: SECONDS, 1000: SECONDS / 2}
#: the rate at which each system is measured once more, paired with the direct call (``_paired``)
PAIRED = 200
POOL = 64
HELD = 1000
STREAM_BYTES = 2**30
#: another checkout of the project (a directory), whose proxy runs as ``proxy-baseline``
BASELINE = os.environ.get("BENCH_BASELINE", "")
SYSTEMS = ("direct", "proxy-memory", "proxy-system", "proxy-traced", "proxy-redis", "nginx") + (
    ("proxy-baseline",) if BASELINE else ()
)
PROXIES = SYSTEMS[1:]
PATH = "/api/machines"
REQUEST = f"GET {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)")

# Every 10th request asks the simulator for an error answer, the codes in turn. TooManyRequests
# is left out: an upstream 429 pauses the route, which would turn the run into one of waiting.
MIX_LUA = """\
local codes = {"BadRequest", "NotFound", "Forbidden", "Unauthorized", "InternalServerError",
               "InvalidInput", "ResourceNotFound", "DisallowedOperation"}
local plain, errors, n = nil, {}, 0
init = function(args)
  plain = wrk.format("GET", "/api/machines")
  for i, code in ipairs(codes) do
    errors[i] = wrk.format("GET", "/api/machines", {["X-Simulate"] = "error=" .. code})
  end
end
request = function()
  n = n + 1
  if n % 10 == 0 then
    return errors[math.floor(n / 10) % #codes + 1]
  end
  return plain
end
"""


# -- the fixed-rate load generator, run in its own process ------------------------------------


class _Connection(asyncio.Protocol):
    """One keep-alive client connection: a request out, timed until its answer is fully read."""

    def __init__(self, done: Callable[[_Connection, int, float], None]) -> None:
        self.transport: asyncio.Transport | None = None
        self._done = done
        self._buffer = bytearray()
        self._length = -1  # of the whole answer, once its head is in
        self._status = 0
        self._started = 0.0
        self._busy = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, started: float) -> None:
        assert self.transport is not None
        self._started, self._busy = started, True
        self.transport.write(REQUEST)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self._length < 0:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self._buffer[:end]).lower()
            match = _LENGTH.search(head)
            if match is None:  # every system answers this path with a Content-Length
                self._fail()
                self.transport.close()  # type: ignore[union-attr]
                return
            self._status = int(head[9:12])
            self._length = end + 4 + int(match.group(1))
        if len(self._buffer) >= self._length:
            elapsed = (time.perf_counter() - self._started) * 1000
            del self._buffer[: self._length]
            self._length, self._busy = -1, False
            self._done(self, self._status, elapsed)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail()

    def _fail(self) -> None:
        if self._busy:
            self._busy = False
            self._done(self, 0, float("nan"))


async def _segment(
    port: int,
    rate: float,
    seconds: float,
    offset: float = 0.0,
    together: asyncio.Barrier | None = None,
) -> dict[str, float]:
    """Requests to ``port`` at ``rate`` for ``seconds``, open loop; the figures of the segment.

    With ``together``, the clock starts once every segment sharing it has its connections open
    and warm, ``offset`` seconds later for this one (``_paired``)."""
    loop = asyncio.get_running_loop()
    idle: list[_Connection] = []
    latencies: list[float] = []
    failures = outstanding = opened = 0
    settled = asyncio.Event()
    every: list[_Connection] = []
    late_opens: set[asyncio.Task[None]] = set()

    def done(conn: _Connection, status: int, ms: float) -> None:
        nonlocal failures, outstanding
        outstanding -= 1
        if status == 200:
            latencies.append(ms)
        else:
            failures += 1
        if status:
            idle.append(conn)
        if outstanding == 0:
            settled.set()

    async def connect() -> _Connection:
        _, conn = await loop.create_connection(lambda: _Connection(done), "127.0.0.1", port)
        every.append(conn)
        return conn

    async def connect_and_send(due: float) -> None:
        (await connect()).send(due)

    conns = await asyncio.gather(*(connect() for _ in range(POOL)))
    settled.clear()
    outstanding = len(conns)
    for conn in conns:
        conn.send(time.perf_counter())
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(settled.wait(), 10)
    if outstanding:
        raise RuntimeError(f"{outstanding} of the first {POOL} requests to {port} unanswered")
    latencies.clear()
    failures = 0
    total = round(rate * seconds)
    late: list[float] = []
    settled.clear()
    if together is not None:
        await together.wait()
    begin = time.perf_counter() + 0.01 + offset
    for index in range(total):
        due = begin + index / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        now = time.perf_counter()
        late.append((now - due) * 1000)
        outstanding += 1
        if idle:
            idle.pop().send(now)
        else:
            opened += 1
            task = loop.create_task(connect_and_send(due))
            late_opens.add(task)
            task.add_done_callback(late_opens.discard)
    sending = time.perf_counter() - begin
    if outstanding:
        settled.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(settled.wait(), 10)
    for conn in every:
        if conn.transport is not None:
            conn.transport.close()
    return {
        "rate": (total - 1) / sending if total > 1 else float("nan"),
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "answers": len(latencies),
        "failures": failures + outstanding,
        "late_p99_ms": percentile(late, 99),
        "max_ms": max(latencies, default=float("nan")),
        "opened": opened,
    }


async def _paired(port: int, direct: int, rate: float, seconds: float) -> dict[str, float]:
    """``port`` and ``direct`` driven together, each at ``rate``, the direct call half a period
    after each request to ``port``: the figures of ``port``, and the direct call's p50 and p99
    over the same seconds (``paired_direct_…``).

    Added latency from one segment, not two taken a minute apart: on a shared machine the direct
    call's p50 at 200 req/s moves by a third from one minute to the next, the system's with it.
    Half a period apart, neither request waits for the other at the simulator; the system's core
    sees its own requests only, as in its own segment.
    """
    together = asyncio.Barrier(2)
    mine, theirs = await asyncio.gather(
        _segment(port, rate, seconds, 0.0, together),
        _segment(direct, rate, seconds, 0.5 / rate, together),
    )
    return {
        **mine,
        "paired_direct_p50_ms": theirs["p50_ms"],
        "paired_direct_p99_ms": theirs["p99_ms"],
    }


def _generate(segments: list[tuple[int, float, float, int]]) -> None:
    """Run the segments one after the other on uvloop; print their figures (and CPU) as JSON.

    A segment is (port, rate, seconds, direct port): with a direct port other than 0 it is paired
    with the direct call (``_paired``)."""
    import uvloop

    async def run_all() -> list[dict[str, float]]:
        results = []
        for port, rate, seconds, direct in segments:
            before = resource.getrusage(resource.RUSAGE_SELF)
            if direct:
                result = await _paired(port, direct, rate, seconds)
            else:
                result = await _segment(port, rate, seconds)
            after = resource.getrusage(resource.RUSAGE_SELF)
            cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
            results.append({**result, "generator_cpu_share": cpu / seconds})
            await asyncio.sleep(0.3)
        return results

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        print(json.dumps(runner.run(run_all())))


def _fixed_rate(segments: list[tuple[int, float, float, int]]) -> list[dict[str, float]]:
    """The generator's figures for each ``(port, rate, seconds, direct port)``, from its own
    process."""
    out = subprocess.run(
        [sys.executable, "-m", "bench.overhead", "fixed-rate", json.dumps(segments)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=sum(seconds + 25 for _, _, seconds, _ in segments),
        check=False,
    )
    if out.returncode:
        raise RuntimeError(f"the load generator exited with {out.returncode}:\n{out.stderr}")
    results: list[dict[str, float]] = json.loads(out.stdout)
    return results


# -- saturation, memory -----------------------------------------------------------------------


def _core_busy(core: int) -> float:
    """Seconds ``core`` has spent busy (anything but idle and iowait), from /proc/stat."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{core} "):
            ticks = [int(field) for field in line.split()[1:]]
            return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")
    return float("nan")


def _saturate(port: int, pid: int, upstream_pid: int, script: Path) -> dict[str, float]:
    """wrk on the mix against ``port``: req/s, the error share, and ``pid``'s CPU over the run."""
    binary = shutil.which("wrk")
    if binary is None:
        raise RuntimeError("wrk is needed for saturation figures: apt-get install wrk")
    core = next(iter(os.sched_getaffinity(pid)))
    cpu, upstream_cpu, started = cpu_seconds(pid), cpu_seconds(upstream_pid), time.perf_counter()
    busy = _core_busy(core)
    out = subprocess.run(
        [binary, "-t", "1", "-c", "32", "-d", f"{SATURATION_SECONDS}s", "-s", str(script),
         f"http://127.0.0.1:{port}/"],
        capture_output=True, text=True, timeout=SATURATION_SECONDS + 30, check=True,
    ).stdout  # fmt: skip
    elapsed = time.perf_counter() - started
    busy = _core_busy(core) - busy
    cpu = cpu_seconds(pid) - cpu
    upstream_cpu = cpu_seconds(upstream_pid) - upstream_cpu
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    done = re.search(r"(\d+) requests in", out)
    if rps is None or done is None:
        raise RuntimeError(f"cannot read wrk's output:\n{out}")
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sockets = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    requests = int(done.group(1))
    return {
        "sat_rps": float(rps.group(1)),
        "sat_busy_pct": cpu / elapsed * 100,
        "sat_others_pct": (busy - cpu) / elapsed * 100,
        "sat_rps_per_core": requests / cpu if cpu else float("nan"),
        "cpu_ms_per_1000": cpu / requests * 1e6,
        "sat_upstream_busy_pct": upstream_cpu / elapsed * 100,
        "sat_error_pct": int(errors.group(1)) / requests * 100 if errors else 0.0,
        "sat_socket_errors": sum(int(n) for n in sockets.groups()) if sockets else 0,
    }


async def _answer(reader: asyncio.StreamReader) -> int:
    head = (await reader.readuntil(b"\r\n\r\n")).lower()
    match = _LENGTH.search(head)
    await reader.readexactly(int(match.group(1)) if match else 0)
    return int(head[9:12])


async def _held_rss(port: int, pid: int) -> float:
    """RSS of ``pid`` with ``HELD`` idle keep-alive connections open, each after one request."""
    writers: list[asyncio.StreamWriter] = []
    try:
        for start in range(0, HELD, 250):
            opened = await asyncio.gather(
                *(asyncio.open_connection("127.0.0.1", port) for _ in range(min(250, HELD - start)))
            )
            for _, writer in opened:
                writer.write(REQUEST)
                writers.append(writer)
            statuses = await asyncio.gather(*(_answer(reader) for reader, _ in opened))
            if set(statuses) != {200}:
                raise RuntimeError(f"holding connections: answers {sorted(set(statuses))}")
        await asyncio.sleep(1.0)
        return rss_mib(pid)
    finally:
        for writer in writers:
            writer.transport.abort()


async def _stream(port: int, pid: int) -> tuple[float, float]:
    """(RSS growth in MiB, MiB/s) while 1 GiB streams through ``port`` and is discarded."""
    before = peak = rss_mib(pid)
    received = chunks = 0
    started = time.perf_counter()
    headers = {"X-Simulate": f"download={STREAM_BYTES}"}
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        async with session.get(f"http://127.0.0.1:{port}{PATH}", headers=headers) as response:
            async for chunk in response.content.iter_chunked(2**16):
                received += len(chunk)
                chunks += 1
                if chunks % 64 == 0:
                    peak = max(peak, rss_mib(pid))
    elapsed = time.perf_counter() - started
    if received != STREAM_BYTES:
        raise RuntimeError(f"streamed {received} bytes, expected {STREAM_BYTES}")
    return max(peak, rss_mib(pid)) - before, STREAM_BYTES / 2**20 / elapsed


async def _warm(port: int) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(300):
            async with session.get(f"http://127.0.0.1:{port}{PATH}") as response:
                await response.read()


async def _spans_per_request(collector: Service, traced: Service) -> float:
    """Spans the collector received per request the traced proxy answered, once the proxy's
    batch processor had the time to export what it holds (below 3: spans were dropped)."""
    await asyncio.sleep(6.0)  # OTEL_BSP_SCHEDULE_DELAY's default is 5 s
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{collector.url}/stats") as response:
            exported: dict[str, int] = await response.json()
        async with session.get(f"http://127.0.0.1:{traced.admin}/metrics") as response:
            text = await response.text()
    answered = sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("defender_proxy_requests_total{")
    )
    return exported["spans"] / answered if answered else float("nan")


# -- the run ----------------------------------------------------------------------------------


def _round(
    number: int, ports: dict[str, int], pids: dict[str, int], script: Path
) -> dict[str, dict[str, float]]:
    """One round: every figure of every system, the systems in this round's order."""
    shift = (number - 1) % len(SYSTEMS)
    order = SYSTEMS[shift:] + SYSTEMS[:shift]
    row: dict[str, dict[str, float]] = {system: {} for system in SYSTEMS}
    segments = [
        (ports[s], float(rate), seconds, 0) for rate, seconds in RATES.items() for s in order
    ]
    paired = [s for s in order if s != "direct"]
    segments += [(ports[s], float(PAIRED), RATES[PAIRED], ports["direct"]) for s in paired]
    results = iter(_fixed_rate(segments))
    for rate in RATES:
        for system in order:
            result = next(results)
            # A system that falls behind (a busy core) fails requests: counted and warned
            # about, and the round's other figures kept.
            for key in ("p50_ms", "p99_ms", "max_ms", "rate", "late_p99_ms", "opened", "failures"):
                row[system][f"{key}@{rate}"] = result[key]
            row[system][f"generator_cpu_pct@{rate}"] = result["generator_cpu_share"] * 100
    for system in paired:
        result = next(results)
        for q in ("p50", "p99"):
            added = result[f"{q}_ms"] - result[f"paired_direct_{q}_ms"]
            row[system][f"paired_added_{q}_ms@{PAIRED}"] = added
        row[system][f"paired_failures@{PAIRED}"] = result["failures"]
    for system in order:
        time.sleep(0.5)
        row[system].update(_saturate(ports[system], pids[system], pids["direct"], script))
    for system in (s for s in order if s in PROXIES):
        time.sleep(0.5)
        row[system]["rss_held_mib"] = asyncio.run(_held_rss(ports[system], pids[system]))
        time.sleep(0.5)
        growth, speed = asyncio.run(_stream(ports[system], pids[system]))
        row[system]["stream_growth_mib"] = growth
        row[system]["stream_mib_per_s"] = speed
    for system in PROXIES:
        for rate in RATES:
            for q in ("p50", "p99"):
                direct = row["direct"][f"{q}_ms@{rate}"]
                row[system][f"added_{q}_ms@{rate}"] = row[system][f"{q}_ms@{rate}"] - direct
    memory = row["proxy-memory"]
    for rate in RATES:
        for system, key in (("proxy-redis", "redis_extra"), ("proxy-traced", "traced_extra")):
            row[system][f"{key}_p50_ms@{rate}"] = (
                row[system][f"p50_ms@{rate}"] - memory[f"p50_ms@{rate}"]
            )
    traced = row["proxy-traced"]
    traced["traced_extra_cpu_pct"] = (
        traced["cpu_ms_per_1000"] / memory["cpu_ms_per_1000"] - 1
    ) * 100
    if "proxy-baseline" in row:
        base = row["proxy-baseline"]
        for rate in RATES:
            memory[f"vs_baseline_p50_ms@{rate}"] = memory[f"p50_ms@{rate}"] - base[f"p50_ms@{rate}"]
        key = f"paired_added_p50_ms@{PAIRED}"
        memory[f"vs_baseline_paired_p50_ms@{PAIRED}"] = memory[key] - base[key]
        memory["vs_baseline_cpu_pct"] = (
            memory["cpu_ms_per_1000"] / base["cpu_ms_per_1000"] - 1
        ) * 100
    for system in ("proxy-memory", "proxy-system", "proxy-traced", "proxy-redis"):
        row[system]["per_core_vs_nginx"] = (
            row[system]["sat_rps_per_core"] / row["nginx"]["sat_rps_per_core"]
        )
    return row


ROWS: list[tuple[str, str, str]] = [
    ("p50_ms@200", "latency p50 at 200 req/s, ms", ".3f"),
    ("p99_ms@200", "latency p99 at 200 req/s, ms", ".3f"),
    ("added_p50_ms@200", "added p50 at 200 req/s, ms", ".3f"),
    ("added_p99_ms@200", "added p99 at 200 req/s, ms", ".3f"),
    ("rate@200", "achieved rate (target 200), req/s", ".1f"),
    ("paired_added_p50_ms@200", "added p50 at 200, paired with direct, ms", ".3f"),
    ("paired_added_p99_ms@200", "added p99 at 200, paired with direct, ms", ".3f"),
    ("p50_ms@1000", "latency p50 at 1,000 req/s, ms", ".3f"),
    ("p99_ms@1000", "latency p99 at 1,000 req/s, ms", ".3f"),
    ("added_p50_ms@1000", "added p50 at 1,000 req/s, ms", ".3f"),
    ("added_p99_ms@1000", "added p99 at 1,000 req/s, ms", ".3f"),
    ("rate@1000", "achieved rate (target 1,000), req/s", ".1f"),
    ("late_p99_ms@1000", "generator: sends late p99 at 1,000, ms", ".3f"),
    ("failures@1000", "requests failed at 1,000 req/s", ".0f"),
    ("redis_extra_p50_ms@200", "Redis store: p50 over memory at 200, ms", ".3f"),
    ("redis_extra_p50_ms@1000", "Redis store: p50 over memory at 1,000, ms", ".3f"),
    ("traced_extra_p50_ms@200", "tracing on: p50 over off at 200, ms", ".3f"),
    ("traced_extra_p50_ms@1000", "tracing on: p50 over off at 1,000, ms", ".3f"),
    ("traced_extra_cpu_pct", "tracing on: CPU per request over off, %", ".1f"),
    ("vs_baseline_p50_ms@200", "over BENCH_BASELINE: p50 at 200, ms", ".3f"),
    ("vs_baseline_p50_ms@1000", "over BENCH_BASELINE: p50 at 1,000, ms", ".3f"),
    ("vs_baseline_paired_p50_ms@200", "over BENCH_BASELINE: paired p50 at 200, ms", ".3f"),
    ("vs_baseline_cpu_pct", "over BENCH_BASELINE: CPU per request, %", ".1f"),
    ("sat_rps", "saturation on the mix (wrk), req/s", ".0f"),
    ("sat_busy_pct", "its CPU during it, % of its core", ".0f"),
    ("sat_others_pct", "other processes on that core, %", ".0f"),
    ("sat_upstream_busy_pct", "the simulator's CPU during it, %", ".0f"),
    ("sat_rps_per_core", "requests per CPU-second (per core)", ".0f"),
    ("per_core_vs_nginx", "per core, × nginx's", ".3f"),
    ("sat_error_pct", "error answers in the mix, %", ".1f"),
    ("cpu_ms_per_1000", "CPU per 1,000 requests, ms", ".1f"),
    ("rss_idle_mib", "RSS idle, MiB", ".1f"),
    ("rss_held_mib", f"RSS with {HELD:,} open connections, MiB", ".1f"),
    ("stream_growth_mib", "RSS growth streaming 1 GiB, MiB", ".1f"),
    ("stream_mib_per_s", "streaming speed, MiB/s", ".0f"),
    ("rss_after_mib", "RSS idle after the rounds, MiB", ".1f"),
    ("rss_after_ratio", "  the same, × RSS idle", ".3f"),
    ("rss_quiet_mib", f"RSS after {QUIET:g} s more of quiet, MiB", ".1f"),
    ("rss_quiet_ratio", "  the same, × RSS idle", ".3f"),
    ("spans_per_request", "spans exported per request", ".2f"),
]

# (system, figure, op, bound); MB in the targets is read as MiB, as in bench.first.
TARGETS: list[tuple[str, str, str, float]] = [
    ("proxy-memory", "added_p50_ms@200", "<=", 0.5),
    ("proxy-memory", "added_p99_ms@200", "<=", 2.0),
    ("proxy-memory", "paired_added_p50_ms@200", "<=", 0.5),
    ("proxy-memory", "paired_added_p99_ms@200", "<=", 2.0),
    ("proxy-memory", "added_p50_ms@1000", "<=", 1.0),
    ("proxy-memory", "sat_rps_per_core", ">=", 4000.0),
    ("proxy-memory", "per_core_vs_nginx", ">=", 0.10),
    ("proxy-memory", "rss_idle_mib", "<=", 40.0),
    ("proxy-memory", "rss_quiet_ratio", "<=", 1.10),
    ("proxy-memory", "rss_held_mib", "<=", 80.0),
    ("proxy-memory", "stream_growth_mib", "<=", 10.0),
    ("proxy-redis", "redis_extra_p50_ms@200", "<=", 0.3),
    ("proxy-redis", "redis_extra_p50_ms@1000", "<=", 0.3),
]


def _summary(rounds: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    return {
        system: {key: median([row[system][key] for row in rounds]) for key in rounds[0][system]}
        for system in SYSTEMS
    }


def _warnings(rounds: list[dict[str, dict[str, float]]]) -> list[str]:
    """What makes a round's figures doubtful: a rate missed, a mix that is not the mix."""
    found = []
    for number, row in enumerate(rounds, 1):
        for system, figures in row.items():
            for rate in RATES:
                if figures[f"failures@{rate}"]:
                    failed = figures[f"failures@{rate}"]
                    found.append(f"round {number}, {system}: {failed:.0f} failed at {rate} req/s")
                if abs(figures[f"rate@{rate}"] - rate) > 0.05 * rate:
                    achieved = figures[f"rate@{rate}"]
                    found.append(f"round {number}, {system}: {achieved:.0f} req/s for {rate}")
            if figures.get(f"paired_failures@{PAIRED}"):
                failed = figures[f"paired_failures@{PAIRED}"]
                found.append(
                    f"round {number}, {system}: {failed:.0f} failed paired at {PAIRED} req/s"
                )
            if not 9 <= figures["sat_error_pct"] <= 11:
                share = figures["sat_error_pct"]
                found.append(f"round {number}, {system}: {share:.1f} % errors in the mix")
            if figures["sat_socket_errors"]:
                errors = figures["sat_socket_errors"]
                found.append(f"round {number}, {system}: wrk saw {errors:.0f} socket errors")
    return found


def _print_table(summary: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    """Print the table of medians with the targets' verdicts; return the verdicts."""
    verdicts = []
    print(f"\nmedians of {ROUNDS} rounds")
    # A column one wider than its longest name, so that no two names run together.
    width = max(14, *(len(s) + 1 for s in SYSTEMS))
    print(f"{'figure':<42}" + "".join(f"{s:>{width}}" for s in SYSTEMS) + "  target")
    for key, label, fmt in ROWS:
        cells = []
        for system in SYSTEMS:
            value = summary[system].get(key)
            cells.append(f"{value:>{width}{fmt}}" if value is not None else f"{'—':>{width}}")
        notes = []
        for system, figure, op, bound in TARGETS:
            if figure == key:
                met = meets(summary[system][key], op, bound)
                verdicts.append({"system": system, "figure": key, "op": op, "bound": bound,
                                 "value": summary[system][key], "met": met})  # fmt: skip
                notes.append(f"{system} {op} {bound:g}: {'met' if met else 'MISSED'}")
        print(f"{label:<42}" + "".join(cells) + "  " + "; ".join(notes))
    return verdicts


def main() -> None:
    """Start every system, run the rounds, print and write the table."""
    if sys.argv[1:2] == ["fixed-rate"]:
        _generate([tuple(segment) for segment in json.loads(sys.argv[2])])
        return
    unwind_on_sigterm()
    if (os.cpu_count() or 1) >= 2:
        # This script, the generator, wrk and Redis share core 1 with the simulator.
        os.sched_setaffinity(0, {1})
    started, load = time.perf_counter(), os.getloadavg()[0]
    rounds: list[dict[str, dict[str, float]]] = []
    with scratch_dir("bench-overhead-") as work, contextlib.ExitStack() as stack:
        running: list[Service] = []
        stack.callback(stop_all, running)
        running.append(redis := start_redis(work))
        running.append(sim := start_simulator(1))
        store = f"throttle:\n  store: redis://127.0.0.1:{redis.port}/0\n"
        shared_config = BENCH_THROTTLE.replace("throttle:\n", store, 1)
        running.append(collector := start_collector(1))
        running.append(memory := start_proxy(sim.port, 0, log=work / "proxy-memory.log"))
        running.append(
            system_allocator := start_proxy(
                sim.port, 0, log=work / "proxy-system.log", DEFENDER_PROXY_ALLOCATOR="system"
            )
        )
        running.append(
            traced := start_proxy(
                sim.port,
                0,
                BENCH_THROTTLE,
                work / "proxy-traced.log",
                None,
                **tracing_env(collector),
            )
        )
        running.append(shared := start_proxy(sim.port, 0, shared_config, work / "proxy-redis.log"))
        running.append(nginx := start_nginx(sim.port, work, cpu=0))
        launched = {
            "direct": sim,
            "proxy-memory": memory,
            "proxy-system": system_allocator,
            "proxy-traced": traced,
            "proxy-redis": shared,
            "nginx": nginx,
        }
        if BASELINE:
            launched["proxy-baseline"] = start_proxy(
                sim.port, 0, log=work / "proxy-baseline.log", cwd=Path(BASELINE)
            )
            running.append(launched["proxy-baseline"])
        ports = {system: launched[system].port for system in SYSTEMS}
        pids = {system: launched[system].pid for system in SYSTEMS}
        pids["nginx"] = worker_pid(nginx)
        script = work / "mix.lua"
        script.write_text(MIX_LUA)
        for port in ports.values():
            asyncio.run(_warm(port))
        time.sleep(1.0)
        idle = {system: rss_mib(pids[system]) for system in PROXIES}
        for number in range(1, ROUNDS + 1):
            rounds.append(_round(number, ports, pids, script))
            print(f"round {number} ({time.perf_counter() - started:.0f} s):", flush=True)
            for system, figures in rounds[-1].items():
                print(
                    f"  {system:<13} p50 {figures['p50_ms@200']:.2f} / {figures['p50_ms@1000']:.2f}"
                    f" ms at 200 / 1,000 req/s, {figures['sat_rps']:.0f} req/s on the mix",
                    flush=True,
                )
        ended = time.perf_counter()
        time.sleep(1.0)
        after = {system: rss_mib(pids[system]) for system in PROXIES}
        spans = asyncio.run(_spans_per_request(collector, traced))
        time.sleep(max(0.0, QUIET - (time.perf_counter() - ended)))
        quiet = {system: rss_mib(pids[system]) for system in PROXIES}
    summary = _summary(rounds)
    summary["proxy-traced"]["spans_per_request"] = spans
    for system in PROXIES:
        summary[system]["rss_idle_mib"] = idle[system]
        summary[system]["rss_after_mib"] = after[system]
        summary[system]["rss_after_ratio"] = after[system] / idle[system]
        summary[system]["rss_quiet_mib"] = quiet[system]
        summary[system]["rss_quiet_ratio"] = quiet[system] / idle[system]
    verdicts = _print_table(summary)
    for warning in _warnings(rounds):
        print(f"WARNING: {warning}")
    elapsed = time.perf_counter() - started
    loads = [load, os.getloadavg()[0]]
    print(f"load average (1 min) {loads[0]:.2f} at the start, {loads[1]:.2f} at the end")
    out = write_json(
        "overhead.json",
        finite(
            {
                "settings": {"rounds": ROUNDS, "seconds": SECONDS,
                             "saturation_seconds": SATURATION_SECONDS, "run_seconds": elapsed,
                             "load_average": loads},
                "median": summary,
                "targets": verdicts,
                "rounds": rounds,
            }
        ),
    )  # fmt: skip
    print(f"\nrun time {elapsed:.0f} s; written to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
