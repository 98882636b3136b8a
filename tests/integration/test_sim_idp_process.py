"""`defender-proxy simulate` with its identity provider: the flags, the apps file, and a token
from the real client library that the same simulator's API accepts."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
from azure.identity.aio import ClientSecretCredential

from tests.idpkit import APP, DEFENDER, ROLES, SECRET, TENANT, start_simulate_with_idp, write_files
from tests.procs import start_cli


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
    process, origins = await start_simulate_with_idp(files, apps, "--check-tokens")
    try:
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
