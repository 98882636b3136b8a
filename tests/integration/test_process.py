"""The real CLI as a subprocess: serving, admin endpoints, SIGTERM/SIGINT drain, check-config."""

from __future__ import annotations

import asyncio
import os
import platform
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families

from tests.procs import Process, start_cli


@pytest.fixture
async def running(simulator: TestServer, tmp_path: Path) -> AsyncIterator[tuple[Process, int, int]]:
    """The proxy CLI on free ports in front of the simulator: (process, proxy port, admin port)."""
    config = tmp_path / "proxy.yaml"
    config.write_text(
        f"upstream: http://127.0.0.1:{simulator.port}\n"
        "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\n"
        "timeouts: {connect: 1s, read: 10s}\nshutdown_grace: 5s\n"
    )
    process = await start_cli("run", "--config", str(config))
    try:
        line = await process.wait_for("listening")
        proxy_port = int(line["proxy"].rsplit(":", 1)[1])
        admin_port = int(line["admin"].rsplit(":", 1)[1])
        yield process, proxy_port, admin_port
    finally:
        await process.stop()


async def test_serves_metrics_and_readiness(running: tuple[Process, int, int]) -> None:
    """A started proxy forwards, and its admin port serves /metrics, /healthz and /readyz."""
    _, port, admin = running
    async with aiohttp.ClientSession() as session:
        async with session.get(
            f"http://127.0.0.1:{port}/api/machines/1", headers={"X-Simulate": "error=Forbidden"}
        ) as response:
            assert response.status == 403
        async with session.get(f"http://127.0.0.1:{admin}/readyz") as response:
            assert response.status == 200
        async with session.get(f"http://127.0.0.1:{admin}/healthz") as response:
            assert response.status == 200
        async with session.get(f"http://127.0.0.1:{admin}/metrics") as response:
            text = await response.text()
    assert (
        'defender_api_errors_total{code="Forbidden",route="machines.get",status="403"} 1.0' in text
    )
    assert "defender_proxy_build_info{" in text


def _proc_figures(pid: int) -> tuple[float, int, float]:
    """RSS in bytes, open fds and CPU seconds of ``pid``, read from /proc by this process."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss_kib = next(
        int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")
    )
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    # utime and stime, fields 14 and 15, counted after the parenthesised command name.
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return rss_kib * 1024.0, fds, (int(fields[11]) + int(fields[12])) / ticks


async def test_admin_port_serves_the_process_figures(running: tuple[Process, int, int]) -> None:
    """/metrics has process_* and python_* of the proxy process itself, matching its /proc."""
    process, _, admin = running
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{admin}/metrics") as response:
            text = await response.text()
    rss, fds, cpu = _proc_figures(process.proc.pid)
    samples = {
        sample.name: sample
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    value = {name: sample.value for name, sample in samples.items()}
    # The proxy's own figures, not the test's: a wrong unit (pages, KiB) is off by 1000 times.
    assert 0.5 * rss < value["process_resident_memory_bytes"] < 2 * rss
    # The scrape's own connection and directory handle may be open in one reading and not the other.
    assert 0 < value["process_open_fds"] <= value["process_max_fds"]
    assert abs(value["process_open_fds"] - fds) <= 4, (value["process_open_fds"], fds)
    # Read before this test's own reading of the same counters: never more (the collector adds
    # user and system time as floats, hence the rounding allowance).
    assert 0 < value["process_cpu_seconds_total"] <= cpu + 1e-9
    assert samples["python_info"].labels["version"] == platform.python_version()
    assert value["python_gc_collections_total"] >= 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_signal_drains_in_flight_then_exits_zero(
    running: tuple[Process, int, int], sig: signal.Signals
) -> None:
    """On SIGTERM/SIGINT /readyz turns 503 at once, the in-flight request completes, exit code is 0."""
    process, port, admin = running
    async with aiohttp.ClientSession() as session:
        slow = asyncio.create_task(
            session.get(f"http://127.0.0.1:{port}/api/alerts", headers={"X-Simulate": "slow=1.5s"})
        )
        await asyncio.sleep(0.3)
        process.proc.send_signal(sig)
        await process.wait_for("draining")
        async with session.get(f"http://127.0.0.1:{admin}/readyz") as ready:
            assert ready.status == 503
        response = await slow
        assert response.status == 200
        assert (await response.json())["value"] == []
    assert await asyncio.wait_for(process.proc.wait(), 10) == 0
    await process.drain_output()
    requests = [line for line in process.lines if line.get("event") == "request"]
    assert [line["status"] for line in requests] == [200]
    assert process.lines[-1]["event"] == "stopped"


async def test_check_config_accepts_a_good_file(tmp_path: Path) -> None:
    """check-config exits 0 on the documented example."""
    config = tmp_path / "ok.yaml"
    config.write_text(
        "upstream: https://api.security.microsoft.com\nlisten: 127.0.0.1:8080\n"
        "admin_listen: 0.0.0.0:9464\ntimeouts: {connect: 5s, read: 120s}\nlog_format: json\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "check-config", str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode == 0, err
    assert b"ok" in out


async def test_check_config_reports_every_problem(tmp_path: Path) -> None:
    """check-config exits 2 and names each bad key, all at once."""
    config = tmp_path / "bad.yaml"
    config.write_text("upstream: ftp://x\ntimeouts: {connect: soon}\nlisten: nowhere\nextra: 1\n")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "check-config", str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await proc.communicate()
    assert proc.returncode == 2
    text = err.decode()
    for key in ("upstream", "timeouts.connect", "listen", "extra"):
        assert f"{key}:" in text, text


async def test_run_refuses_a_bad_config_without_starting(tmp_path: Path) -> None:
    """run exits 2 with the problems when the config is invalid."""
    config = tmp_path / "bad.yaml"
    config.write_text("log_format: loud\n")
    process = await start_cli("run", "--config", str(config))
    assert await asyncio.wait_for(process.proc.wait(), 15) == 2
    await process.drain_output()
    assert any("log_format" in line.get("text", "") for line in process.lines)


async def test_simulate_subcommand_serves(unused_tcp_port: int) -> None:
    """`defender-proxy simulate --port N` serves the stand-in API."""
    process = await start_cli("simulate", "--port", str(unused_tcp_port))
    try:
        await process.wait_for("_text")
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                f"http://127.0.0.1:{unused_tcp_port}/api/machines",
                headers={"X-Simulate": "error=Unauthorized"},
            ) as response,
        ):
            assert response.status == 401
    finally:
        await process.stop()


def test_catalogue_lists_routes(capsys: Any) -> None:
    """`defender-proxy catalogue` prints every route with its limits."""
    from proxy.cli import main

    assert main(["catalogue"]) == 0
    out = capsys.readouterr().out
    assert "advancedqueries.run" in out
    assert "45/1m" in out
    assert "other" in out


def test_catalogue_prints_each_routes_permissions(capsys: Any, tmp_path: Any) -> None:
    """`catalogue` has a permissions column before the match: each endpoint's first permission."""
    from proxy.cli import main

    config = tmp_path / "both.yaml"  # an origin of neither family: both catalogues in one table
    config.write_text("upstream: http://127.0.0.1:9000\n", encoding="utf-8")
    assert main(["catalogue", "--config", str(config)]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(line for line in lines if line.startswith("route "))
    assert header.split() == ["route", "limits", "per", "priority", "mode", "permissions", "match"]
    # The column starts where its header does; the match column stays last.
    start, end = header.index("permissions"), header.index("match")
    rows = {line.split()[0]: line for line in lines if line and line != header and line[0] != "c"}
    column = {name: row[start:end].strip() for name, row in rows.items()}
    assert column["machines.isolate"] == "Machine.Isolate"
    assert column["machines.related"] == (
        "Alert.Read.All, User.Read.All, Software.Read.All, SecurityRecommendation.Read.All"
    )
    assert column["indicators.submit"] == "Ti.ReadWrite"
    assert column["graph.runHuntingQuery"] == "ThreatHunting.Read.All"
    assert column["other"] == "-"
    assert column["graph.batch"] == "-"
    assert rows["machines.isolate"].endswith("POST /api/machines/{id}/isolate")


def test_catalogue_prints_one_table_per_catalogue_served(capsys: Any, tmp_path: Any) -> None:
    """With two upstreams, `catalogue` prints each one's table, and whose quota each route is."""
    from proxy.cli import main

    config = tmp_path / "two.yaml"
    config.write_text(
        "upstreams:\n"
        "  - {name: mde, origin: https://api.security.microsoft.com, listen: 127.0.0.1:0}\n"
        "  - {name: msgraph, origin: https://graph.microsoft.com, listen: 127.0.0.1:0}\n"
        "throttle:\n"
        "  routes: [{name: machines.list, per: shared}]\n",
        encoding="utf-8",
    )
    assert main(["catalogue", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    defender, graph = out.split("\n\n")
    assert defender.startswith("catalogue defender (upstreams: mde)")
    assert graph.startswith("catalogue graph (upstreams: msgraph)")
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line and line[0] != "c"}
    assert rows["advancedqueries.run"][3] == "tenant"
    assert rows["graph.runHuntingQuery"][2] == "tenant"
    assert rows["machines.list"][3] == "shared"
    assert "graph.security" not in defender
    assert "machines.list" not in graph
