"""``defender-proxy errors`` against a real proxy process in front of the simulator: the table, the
JSON, the admin address from the config, and one line with exit code 1 when nothing listens."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestServer

from proxy.simulator.behaviour import TARGET_HEADER
from tests.procs import Process, start_cli
from tests.support.ports import free_port


@dataclass
class Ran:
    """What one run of the command did."""

    code: int
    out: str
    err: str


async def errors_command(*args: str, env: dict[str, str] | None = None) -> Ran:
    """Run ``python -m proxy errors ARGS`` to its end, without the DEFENDER_PROXY_* environment
    of the test run unless ``env`` gives some."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DEFENDER_PROXY_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "errors", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env={**clean, **(env or {})},
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return Ran(proc.returncode, out.decode(), err.decode())


@dataclass
class Running:
    """A proxy process, its ports and config file, and the targets of the errors it answered
    (oldest first)."""

    process: Process
    port: int
    admin: int
    config: Path
    targets: list[str]

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin}"


@pytest.fixture
async def running(simulator: TestServer, tmp_path: Path) -> AsyncIterator[Running]:
    """The proxy CLI in front of the simulator, its admin port on every address (as by default)
    at a known port, after three upstream errors."""
    admin = free_port()
    config = tmp_path / "proxy.yaml"
    config.write_text(
        f"upstream: http://127.0.0.1:{simulator.port}\n"
        f"listen: 127.0.0.1:0\nadmin_listen: 0.0.0.0:{admin}\n"
        "timeouts: {connect: 1s, read: 10s}\nshutdown_grace: 1s\n"
    )
    process = await start_cli("run", "--config", str(config))
    try:
        line = await process.wait_for("listening")
        port = int(line["proxy"].rsplit(":", 1)[1])
        targets = []
        async with aiohttp.ClientSession() as session:
            for path, code in (
                ("/api/machines/1", "Forbidden"),
                ("/api/alerts", "NotFound"),
                ("/api/machines/2", "Unauthorized"),
            ):
                async with session.get(
                    f"http://127.0.0.1:{port}{path}", headers={"X-Simulate": f"error={code}"}
                ) as response:
                    await response.read()
                    targets.append(response.headers[TARGET_HEADER])
        yield Running(process, port, admin, config, targets)
    finally:
        await process.stop()


async def test_the_table_lists_the_targets_newest_first(running: Running) -> None:
    """The table has a header of time, upstream, route, status, code, cause, target and one row
    per error, newest first, each with the simulator's target."""
    ran = await errors_command("--admin", running.admin_url)
    assert ran.code == 0, ran.err
    header, *rows = ran.out.splitlines()
    assert header.split() == ["time", "upstream", "route", "status", "code", "cause", "target"]
    assert [row.split() for row in rows] == [
        [
            rows[0].split()[0],
            "default",
            "machines.get",
            "401",
            "Unauthorized",
            "no_token",
            running.targets[2],
        ],
        [rows[1].split()[0], "default", "alerts.list", "404", "NotFound", "-", running.targets[1]],
        [
            rows[2].split()[0],
            "default",
            "machines.get",
            "403",
            "Forbidden",
            "no_token",
            running.targets[0],
        ],
    ]
    assert all(row.split()[0].endswith("Z") for row in rows)


async def test_json_prints_the_view_as_fetched(running: Running) -> None:
    """``--json`` prints /errors' JSON, the same the admin port answers; ``--limit`` is passed on."""
    ran = await errors_command("--admin", running.admin_url, "--json", "--limit", "2")
    assert ran.code == 0, ran.err
    view = orjson.loads(ran.out)
    assert view["size"] == 200
    assert [e["target"] for e in view["errors"]] == running.targets[:0:-1]
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{running.admin_url}/errors?limit=2") as response:
            assert orjson.loads(await response.read()) == view


async def test_the_admin_address_comes_from_the_config(running: Running) -> None:
    """Without ``--admin`` the command reads admin_listen from ``--config`` or
    ``$DEFENDER_PROXY_CONFIG``, a wildcard host read as loopback."""
    by_option = await errors_command("--config", str(running.config), "--status", "404")
    by_variable = await errors_command(
        "--status", "404", env={"DEFENDER_PROXY_CONFIG": str(running.config)}
    )
    for ran in (by_option, by_variable):
        assert ran.code == 0, ran.err
        [_, row] = ran.out.splitlines()
        assert row.split()[-1] == running.targets[1]


async def test_a_refused_query_is_one_line_and_exit_one(running: Running) -> None:
    """A limit the view refuses is the view's own message on one line, and exit code 1."""
    ran = await errors_command("--admin", running.admin_url, "--limit", "201")
    assert ran.code == 1
    assert ran.out == ""
    assert ran.err.splitlines() == [
        f"defender-proxy errors: {running.admin_url}/errors?limit=201: 400 "
        "limit: expected a whole number from 1 to 200, got '201'"
    ]


async def test_nothing_listening_is_one_line_and_exit_one() -> None:
    """With no proxy at the address the command prints one line naming it and exits 1."""
    port = free_port()
    ran = await errors_command("--admin", f"127.0.0.1:{port}")
    assert ran.code == 1
    assert ran.out == ""
    [line] = ran.err.splitlines()
    assert line.startswith(
        f"defender-proxy errors: cannot reach the admin port at http://127.0.0.1:{port}: "
    )
