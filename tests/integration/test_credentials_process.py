"""`defender-proxy run` holding the app's credential, in front of `defender-proxy simulate` with its
identity provider: the processes as deployed, compared through what each of them recorded."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import aiohttp

from tests.faultkit import CliProxy, sample, start_proxy
from tests.idpkit import (
    APP,
    DEFENDER,
    ROLES,
    SECRET,
    TENANT,
    Files,
    start_simulate_with_idp,
    tls_client,
    write_files,
)


def _apps(root: Path, expired: bool = False) -> Path:
    apps = root / "apps.yaml"
    secret = f"{{value: {SECRET}, expired: {str(expired).lower()}}}"
    apps.write_text(
        f"apps:\n  - {{tenant: {TENANT}, client_id: {APP}, roles: [{', '.join(ROLES)}],"
        f" secrets: [{secret}]}}\n",
        encoding="utf-8",
    )
    return apps


def _config(root: Path, files: Files, origins: dict[str, str]) -> str:
    secret = root / "client-secret"
    secret.write_text(SECRET + "\n", encoding="utf-8")
    return (
        f"upstream: {origins['simulator']}\n"
        "listen: 127.0.0.1:0\n"
        "admin_listen: 127.0.0.1:0\n"
        f"tls: {{ca_bundle: {files.ca_bundle}}}\n"
        "credentials:\n"
        f"  tenant_id: {TENANT}\n"
        f"  client_id: {APP}\n"
        f"  client_secret_file: {secret}\n"
        f"  authority: {origins['identity provider']}\n"
        f"  scope: {DEFENDER}\n"
    )


async def _identity(
    files: Files, origins: dict[str, str], method: str = "GET", path: str = "", body: object = None
) -> Any:
    connector = aiohttp.TCPConnector(ssl=tls_client(files))
    url = f"{origins['identity provider']}/_sim/identity{path}"
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.request(method, url, json=body) as response,
    ):
        return await response.json()


async def _journal(origins: dict[str, str]) -> list[dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{origins['simulator']}/_sim/requests") as response,
    ):
        entries: list[dict[str, Any]] = (await response.json())["requests"]
    return entries


async def _calls(proxy: CliProxy, count: int) -> list[tuple[int, dict[str, Any]]]:
    async with aiohttp.ClientSession() as session:

        async def call() -> tuple[int, dict[str, Any]]:
            async with session.get(f"{proxy.url}/api/machines") as response:
                return response.status, await response.json()

        return await asyncio.gather(*(call() for _ in range(count)))


async def test_a_hundred_tokenless_callers_at_start_share_one_token_request(
    tmp_path: Path,
) -> None:
    """The proxy started while the provider answers slowly: 100 tokenless calls made the moment
    it listens all wait for the one mint under way, and the API admits each with that token."""
    files = write_files(tmp_path)
    simulate, origins = await start_simulate_with_idp(files, _apps(tmp_path), "--check-tokens")
    proxy = None
    try:
        await _identity(files, origins, "POST", "/delay", {"count": 1, "seconds": 2})
        proxy = await start_proxy(tmp_path, _config(tmp_path, files, origins))
        (listener,) = proxy.events("listening")[0]["listeners"]
        assert listener["credential"] == f"secret of app {APP} for {DEFENDER}"
        answers = await _calls(proxy, 100)
        assert [status for status, _ in answers] == [200] * 100
        stats = await _identity(files, origins)
        assert (stats["token_requests"], stats["issued"]) == (1, 1)
        received = await _journal(origins)
        assert len(received) == 100
        assert len({entry["token"] for entry in received}) == 1
        async with aiohttp.ClientSession() as session:
            exposition = await proxy.metrics(session)
        assert 'defender_proxy_token_requests_total{code="",result="ok"} 1.0' in exposition
        assert SECRET not in "".join(map(str, proxy.process.lines)) + exposition
    finally:
        if proxy is not None:
            await proxy.close()
        await simulate.stop()


async def test_an_expired_secret_gives_clear_503s_and_no_401_from_the_api(
    tmp_path: Path,
) -> None:
    """AADSTS7000222 from the provider: every call is a 503 naming it, counted by code; the API
    receives nothing, so no 401 wave reaches the tools."""
    files = write_files(tmp_path)
    apps = _apps(tmp_path, expired=True)
    simulate, origins = await start_simulate_with_idp(files, apps, "--check-tokens")
    proxy = None
    try:
        proxy = await start_proxy(tmp_path, _config(tmp_path, files, origins))
        answers = await _calls(proxy, 10)
        assert {status for status, _ in answers} == {503}
        assert all("AADSTS7000222" in body["error"]["message"] for _, body in answers)
        assert await _journal(origins) == []
        async with aiohttp.ClientSession() as session:
            exposition = await proxy.metrics(session)
        assert 'defender_proxy_token_requests_total{code="7000222",result="failed"}' in exposition
        stats = await _identity(files, origins)
        assert stats["token_requests"] <= 2  # the start's mint, and at most one after its back-off
    finally:
        if proxy is not None:
            await proxy.close()
        await simulate.stop()


async def test_sigterm_while_a_mint_hangs_exits_cleanly_without_waiting_for_it(
    tmp_path: Path,
) -> None:
    """SIGTERM while the start's token request is held by the provider (20 s) and 5 tokenless
    callers wait on it: the proxy exits 0 within its grace and some seconds, long before the
    provider answers, with no traceback or error line; nothing reached the API."""
    files = write_files(tmp_path)
    simulate, origins = await start_simulate_with_idp(files, _apps(tmp_path), "--check-tokens")
    proxy = None
    callers: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        await _identity(files, origins, "POST", "/delay", {"count": 1, "seconds": 20})
        config = _config(tmp_path, files, origins) + "shutdown_grace: 1s\ntimeouts: {read: 25s}\n"
        proxy = await start_proxy(tmp_path, config)
        for _ in range(5):
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            writer.write(b"GET /api/machines HTTP/1.1\r\nHost: proxy.test\r\n\r\n")
            callers.append((reader, writer))
        async with asyncio.timeout(10):
            while await _in_flight(proxy) < 5:  # noqa: ASYNC110 - another process, polled
                await asyncio.sleep(0.05)
        proxy.signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            code = await proxy.process.proc.wait()
            await proxy.reader
        assert code == 0
        answered = [await reader.read() for reader, _ in callers]
        assert all(raw == b"" or raw.startswith(b"HTTP/1.1 503") for raw in answered)
        lines = proxy.process.lines
        assert lines[-1]["event"] == "stopped"
        assert [line for line in lines if line["event"] == "_text"] == []
        assert [line for line in lines if line.get("level") in ("error", "critical")] == []
        assert await _journal(origins) == []
    finally:
        for _, writer in callers:
            writer.close()
        if proxy is not None:
            await proxy.close()
        await simulate.stop()


async def _in_flight(proxy: CliProxy) -> float:
    """The requests in flight, by the proxy's own gauge."""
    async with aiohttp.ClientSession() as session:
        exposition = await proxy.metrics(session)
    return sample(exposition, "defender_proxy_in_flight_requests") or 0.0
