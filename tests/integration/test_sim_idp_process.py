"""`defender-proxy simulate` with its identity provider: the flags, the apps file, and a token
from the real client library that the same simulator's API accepts."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import aiohttp
from azure.identity.aio import ClientSecretCredential

from tests.idpkit import APP, DEFENDER, ROLES, SECRET, TENANT, write_files
from tests.procs import Process, start_cli

_LISTENING = re.compile(r"^(simulator|identity provider) listening on (\S+)")


async def _origins(process: Process) -> dict[str, str]:
    """The origins the simulator printed, by what listens on them."""
    found: dict[str, str] = {}
    async with asyncio.timeout(15):
        while len(found) < 2:
            await process.wait_for("_text")
            for line in process.lines:
                if (match := _LISTENING.match(line.get("text", ""))) is not None:
                    found[match[1]] = match[2]
            process.lines.clear()
    return found


async def test_simulate_serves_tokens_its_api_accepts(tmp_path: Path) -> None:
    """--idp-port/--idp-cert/--idp-key/--idp-apps start the HTTPS token service next to the API;
    ClientSecretCredential's token for the Defender scope is served by --check-tokens."""
    files = write_files(tmp_path)
    apps = tmp_path / "apps.yaml"
    roles = ", ".join(ROLES)
    apps.write_text(
        f"apps:\n  - {{tenant: {TENANT}, client_id: {APP}, roles: [{roles}],"
        f" secrets: [{{value: {SECRET}}}]}}\n",
        encoding="utf-8",
    )
    process = await start_cli(
        "simulate", "--port", "0", "--check-tokens", "--idp-port", "0",
        "--idp-cert", str(files.server_cert), "--idp-key", str(files.server_key),
        "--idp-apps", str(apps),
    )  # fmt: skip
    try:
        origins = await _origins(process)
        async with ClientSecretCredential(
            TENANT,
            APP,
            SECRET,
            authority=origins["identity provider"],
            disable_instance_discovery=True,
            connection_verify=str(files.ca_bundle),
        ) as credential:
            token = (await credential.get_token(DEFENDER)).token
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                f"{origins['simulator']}/api/machines",
                headers={"Authorization": f"Bearer {token}"},
            ) as response,
        ):
            assert response.status == 200
    finally:
        await process.stop()


async def test_simulate_refuses_an_incomplete_or_bad_identity_provider(tmp_path: Path) -> None:
    """A missing --idp option, or an apps file with problems, stops simulate with status 2 and
    says what is wrong (every problem of the file)."""
    process = await start_cli("simulate", "--port", "0", "--idp-port", "0")
    assert await asyncio.wait_for(process.proc.wait(), 15) == 2
    await process.drain_output()
    text = "".join(line.get("text", "") for line in process.lines)
    assert "--idp-cert, --idp-key, --idp-apps" in text
    apps = tmp_path / "apps.yaml"
    apps.write_text("apps: [{client_id: x}]\nextra: 1\n", encoding="utf-8")
    process = await start_cli(
        "simulate", "--port", "0", "--idp-port", "0", "--idp-cert", "c", "--idp-key", "k",
        "--idp-apps", str(apps),
    )  # fmt: skip
    assert await asyncio.wait_for(process.proc.wait(), 15) == 2
    await process.drain_output()
    text = "".join(line.get("text", "") for line in process.lines)
    assert "extra: unknown key" in text
    assert "apps[0].tenant" in text
