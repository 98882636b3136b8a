"""A reload in the running app (in-process): the file read again, what changes applied to the
requests after it, a waiter's slot kept, a file that does not validate refused as check-config
refuses it."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from proxy import app as wiring
from proxy import cli, logs
from proxy.callers import CallerServer
from proxy.config import ConfigError, load_settings
from proxy.handler import Proxy
from proxy.metrics import Metrics
from proxy.reload import MAX_LOGGED_PROBLEMS, Reloader
from proxy.simulator.app import JOURNAL
from tests.conftest import LogCapture
from tests.faultkit import until

REFUSED = "reload refused: the running settings stay"
RESTART = "reload: settings that need a restart were not applied"


@dataclass
class Running:
    """The app as ``serve`` wires it: one listener, its server, the admin app, the reloader."""

    path: Path | None
    reloader: Reloader
    proxy: Proxy
    server: CallerServer
    port: int
    admin: TestServer
    simulator: TestServer
    logs: LogCapture

    @property
    def metrics(self) -> Metrics:
        return self.proxy.metrics

    def write(self, text: str) -> None:
        """Replace the config file: the upstream and free ports, then ``text``."""
        assert self.path is not None
        self.path.write_text(_head(self.simulator) + text, encoding="utf-8")

    async def logged(self, event: str) -> list[dict[str, Any]]:
        """The lines of ``event`` so far, once the lines of this loop iteration are written."""
        await asyncio.sleep(0)
        return self.logs.lines(event)

    def reloads(self, result: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "defender_proxy_reloads_total", {"result": result}
        )
        return 0.0 if value is None else value

    def seen(self) -> list[str]:
        """The client-request-id of every request the simulator received, in order."""
        listed = self.simulator.app[JOURNAL].as_json()["requests"]
        assert isinstance(listed, list)
        return [entry["id"] for entry in listed]

    async def get(
        self,
        session: aiohttp.ClientSession,
        request_id: str,
        path: str = "/api/machines/m1",
        **headers: str,
    ) -> int:
        url = f"http://127.0.0.1:{self.port}{path}"
        headers = {"client-request-id": request_id, **headers}
        async with session.get(url, headers=headers) as response:
            await response.read()
            return response.status


def _head(simulator: TestServer) -> str:
    return (
        f"upstream: http://127.0.0.1:{simulator.port}\n"
        "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\n"
        "timeouts: {connect: 1s, read: 2s}\n"
    )


Start = Callable[..., Awaitable[Running]]


@pytest.fixture
async def start(
    simulator: TestServer,
    aiohttp_server: Callable[..., Any],
    captured_logs: LogCapture,
    tmp_path: Path,
) -> AsyncIterator[Start]:
    """Start the app on a config file holding ``text`` (None: no file, the environment alone),
    with ``environ`` as its environment."""
    runners: list[web.ServerRunner] = []

    async def go(text: str | None, environ: Mapping[str, str] | None = None) -> Running:
        env = dict(environ or {})
        path = None
        if text is None:
            env["DEFENDER_PROXY_UPSTREAM"] = f"http://127.0.0.1:{simulator.port}"
            env["DEFENDER_PROXY_LISTEN"] = env["DEFENDER_PROXY_ADMIN_LISTEN"] = "127.0.0.1:0"
        else:
            path = tmp_path / "proxy.yaml"
            path.write_text(_head(simulator) + text, encoding="utf-8")
        settings = load_settings(None if path is None else str(path), env)
        proxies, admin = wiring.build(settings)
        admin_server: TestServer = await aiohttp_server(admin)
        (proxy,) = proxies
        server = wiring.proxy_server(proxy)
        runner = web.ServerRunner(server)
        await runner.setup()
        runners.append(runner)
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        reloader = Reloader(
            None if path is None else str(path),
            settings,
            [(proxy, server)],
            admin[wiring.LIMITER],
            admin[wiring.ERRORS],
            admin[wiring.METRICS],
            environ=env,
        )
        port = int(runner.addresses[0][1])
        return Running(path, reloader, proxy, server, port, admin_server, simulator, captured_logs)

    yield go
    for runner in runners:
        await runner.cleanup()
    logs.set_level("debug")  # as captured_logs set it: a reload may have changed it


async def test_a_lowered_limit_governs_new_requests_and_waiters_keep_their_slots(
    start: Start,
) -> None:
    """4/3s → 2/3s while two callers wait: both are forwarded on the slots they held, and a
    caller after the reload, which the old limit would have admitted within 4 s, is refused."""
    running = await start("throttle: {routes: [{name: machines.get, limits: [4/3s]}]}\n")
    async with aiohttp.ClientSession() as session:
        first = [asyncio.create_task(running.get(session, f"first-{i}")) for i in range(6)]
        # Four forwarded at once, two asleep on their reservations.
        assert await until(lambda: len(running.seen()) == 4 and running.proxy.in_flight == 2, 10)
        running.write("throttle: {routes: [{name: machines.get, limits: [2/3s]}]}\n")
        assert await running.reloader.reload() == "ok"
        late = await running.get(session, "late", **{"X-Defender-Proxy-Max-Wait": "4s"})
        statuses = await asyncio.gather(*first)
    assert statuses == [200] * 6
    # The two waiters' slots, 3.5 s on, fill the new limit's window: the next slot is 3.5 s later.
    assert late == 429
    assert sorted(running.seen()) == sorted(f"first-{i}" for i in range(6))
    quota = [line["quota"] for line in await running.logged("request") if line["status"] == 200]
    assert sorted(quota) == ["admitted"] * 4 + ["waited"] * 2
    (reloaded,) = await running.logged("reloaded")
    assert reloaded["changed"] == ["throttle.routes"]
    assert running.reloads("ok") == 1


async def test_a_refused_file_with_many_problems_logs_the_first_and_their_count(
    start: Start,
) -> None:
    """A file of 500 unknown keys is refused with its first 50 problems in the warning and the
    count of all of them, so one log line stays bounded."""
    running = await start("")
    running.write("".join(f"unknown_{index}: 1\n" for index in range(500)))
    assert await running.reloader.reload() == "invalid"
    (line,) = await running.logged(REFUSED)
    assert line["problems_total"] == 500
    assert len(line["problems"]) == MAX_LOGGED_PROBLEMS
    assert "unknown_0: unknown key" in line["problems"][0]


async def test_a_file_that_does_not_validate_is_refused_as_check_config_refuses_it(
    start: Start, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reload of an invalid file logs check-config's problems, counts invalid, and the
    running limit stays."""
    running = await start("throttle: {routes: [{name: machines.get, limits: [1/1m]}]}\n")
    running.write(
        "throttle: {routes: [{name: machines.get, limits: [50/1m, oops]}], max_wait: 2h}\n"
        "log_level: loud\n"
    )
    assert await running.reloader.reload() == "invalid"
    assert running.path is not None
    with pytest.raises(ConfigError) as loaded:
        load_settings(str(running.path), {})
    (line,) = await running.logged(REFUSED)
    assert line["problems"] == loaded.value.problems
    assert line["level"] == "warning"
    assert len(loaded.value.problems) == 3
    for name in [n for n in os.environ if n.startswith("DEFENDER_PROXY_")]:
        monkeypatch.delenv(name)
    assert cli.main(["check-config", str(running.path)]) == 2
    assert capsys.readouterr().err.splitlines() == loaded.value.problems
    assert (running.reloads("invalid"), running.reloads("ok")) == (1, 0)
    async with aiohttp.ClientSession() as session:
        assert await running.get(session, "one") == 200
        assert await running.get(session, "two", **{"X-Defender-Proxy-Max-Wait": "0s"}) == 429


async def test_a_changed_listen_is_named_and_nothing_is_applied(start: Start) -> None:
    """A file that changes only listen: the warning names it, the result is unchanged, and the
    listener serves on where it was."""
    running = await start("")
    assert running.path is not None
    running.path.write_text(
        _head(running.simulator).replace("listen: 127.0.0.1:0\n", "listen: 127.0.0.1:1\n", 1),
        encoding="utf-8",
    )
    assert await running.reloader.reload() == "unchanged"
    (warning,) = await running.logged(RESTART)
    assert warning["needs_restart"] == ["listen"]
    assert await running.logged("reloaded") == []
    assert running.reloads("unchanged") == 1
    async with aiohttp.ClientSession() as session:
        assert await running.get(session, "still") == 200


async def test_a_file_read_again_unchanged_is_counted_and_stamped(start: Start) -> None:
    """Nothing differs: unchanged is counted, and the loaded timestamp moves on."""
    running = await start("log_level: info\n")
    name = "defender_proxy_config_loaded_timestamp_seconds"
    before = running.metrics.registry.get_sample_value(name)
    assert await running.reloader.reload() == "unchanged"
    assert await running.logged("reload: nothing to apply")
    after = running.metrics.registry.get_sample_value(name)
    assert before is not None
    assert after is not None
    assert after > before
    assert running.reloads("unchanged") == 1


async def test_without_a_file_the_environment_alone_is_read_again(start: Start) -> None:
    """A process started without a file re-reads only its environment: nothing to apply."""
    running = await start(None)
    assert running.reloader.path is None
    assert await running.reloader.reload() == "unchanged"
    (line,) = await running.logged("reload: nothing to apply")
    assert line["file"] is None


async def test_the_environment_still_wins_over_the_file(start: Start) -> None:
    """DEFENDER_PROXY_REWRITE_LINKS overrides the reloaded file as it did the first one."""
    environ = {"DEFENDER_PROXY_REWRITE_LINKS": "false"}
    running = await start("rewrite_links: true\n", environ)
    running.write("rewrite_links: true\nlog_level: warning\n")
    assert await running.reloader.reload() == "ok"
    assert running.proxy.settings.rewrite_links is False
    assert running.proxy.settings.log_level == "warning"


async def test_a_request_in_flight_keeps_the_settings_it_started_with(start: Start) -> None:
    """allow_from narrowed while a caller waits for its slot: that caller is answered 200, a
    caller arriving after the reload is refused 403."""
    running = await start("throttle: {routes: [{name: machines.get, limits: [1/2s]}]}\n")
    async with aiohttp.ClientSession() as session:
        assert await running.get(session, "first") == 200
        waiter = asyncio.create_task(running.get(session, "waiter"))
        assert await until(lambda: running.proxy.in_flight == 1, 10)
        running.write(
            "throttle: {routes: [{name: machines.get, limits: [1/2s]}]}\nallow_from: [10.0.0.0/8]\n"
        )
        assert await running.reloader.reload() == "ok"
        assert await running.get(session, "after") == 403
        assert await waiter == 200
    assert running.seen() == ["first", "waiter"]


async def test_timeouts_log_level_and_the_errors_view_follow_a_reload(start: Start) -> None:
    """timeouts.read, timeouts.caller, limits.caller_connections, log_level and
    limits.recent_errors apply to what comes after the reload."""
    running = await start("")
    slow = {"X-Simulate": "slow=1s"}
    async with aiohttp.ClientSession() as session:
        assert await running.get(session, "slow-before", **slow) == 200
        running.write(
            "timeouts: {connect: 1s, read: 300ms, caller: 7s}\n"
            "limits: {recent_errors: 0, caller_connections: 40}\nlog_level: warning\n"
        )
        assert await running.reloader.reload() == "ok"
        assert await running.get(session, "slow-after", **slow) == 504
        async with session.get(f"http://127.0.0.1:{running.admin.port}/errors") as response:
            assert response.status == 404
    assert (running.server.caller_timeout, running.server.cap) == (7.0, 40)
    # The 504 came after the level went to warning: no request line for it.
    assert [line["request_id"] for line in await running.logged("request")] == ["slow-before"]


async def test_a_second_signal_during_a_reload_runs_one_more_after_it(start: Start) -> None:
    """Signals before a reload has begun are served by it; two during it make one more after
    it, never a second one at the same time."""
    running = await start("")
    for _ in range(3):
        running.reloader.request()
    await running.reloader.wait()
    assert running.reloads("unchanged") == 1
    running.reloader.request()
    await asyncio.sleep(0)  # the reload has begun: it is reading the file in a thread
    running.reloader.request()
    running.reloader.request()
    await running.reloader.wait()
    assert running.reloads("unchanged") == 3
