"""`defender-proxy simulate` with its identity provider: the flags, the apps file, and a token
from the real client library that the same simulator's API accepts."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
from azure.identity.aio import ClientSecretCredential

from tests.idpkit import APP, DEFENDER, ROLES, SECRET, TENANT, start_simulate_with_idp, write_files
from tests.procs import start_cli


def _apps(tmp_path: Path) -> Path:
    apps = tmp_path / "apps.yaml"
    roles = ", ".join(ROLES)
    apps.write_text(
        f"apps:\n  - {{tenant: {TENANT}, client_id: {APP}, roles: [{roles}],"
        f" secrets: [{{value: {SECRET}}}]}}\n",
        encoding="utf-8",
    )
    return apps


async def _refused(*args: str) -> str:
    """What ``defender-proxy ARGS`` printed, once it has stopped with status 2."""
    process = await start_cli(*args)
    assert await asyncio.wait_for(process.proc.wait(), 15) == 2
    await process.drain_output()
    return "".join(line.get("text", "") for line in process.lines)


async def test_simulate_serves_tokens_its_api_accepts(tmp_path: Path) -> None:
    """--idp-port/--idp-cert/--idp-key/--idp-apps start the HTTPS token service next to the API;
    ClientSecretCredential's token for the Defender scope is served by --check-tokens."""
    files = write_files(tmp_path)
    process, origins = await start_simulate_with_idp(files, _apps(tmp_path), "--check-tokens")
    try:
        await _token_is_accepted(origins, files.ca_bundle)
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


async def test_simulate_makes_its_own_tls_pair_with_idp_tls_dir(tmp_path: Path) -> None:
    """--idp-tls-dir in place of --idp-cert/--idp-key: the pair is written there, the CA's file
    is printed, and a client trusting it gets a token the API accepts."""
    tls = tmp_path / "tls"
    printed: list[str] = []
    process, origins = await start_simulate_with_idp(
        tls, _apps(tmp_path), "--check-tokens", printed=printed
    )
    try:
        shown = f"identity provider's throwaway CA (trust it): {tls / 'ca.pem'}, valid until "
        assert any(line.startswith(shown) for line in printed)
        await _token_is_accepted(origins, tls / "ca.pem")
    finally:
        await process.stop()
    assert sorted(path.name for path in tls.iterdir()) == ["ca.pem", "idp.crt", "idp.key"]


async def test_simulate_refuses_both_tls_ways_or_a_directory_it_cannot_write(
    tmp_path: Path,
) -> None:
    """--idp-tls-dir with --idp-cert or --idp-key, or a directory that cannot be made: status 2
    and a message saying which; a start refused for another reason writes no pair."""
    apps = str(_apps(tmp_path))
    tls = tmp_path / "tls"
    text = await _refused(
        "simulate", "--port", "0", "--idp-port", "0", "--idp-apps", apps,
        "--idp-tls-dir", str(tls), "--idp-key", "k",
    )  # fmt: skip
    assert "give it or --idp-cert and --idp-key, not both (got --idp-tls-dir and --idp-key)" in text
    blocker = tmp_path / "file"
    blocker.write_text("")
    text = await _refused(
        "simulate", "--port", "0", "--idp-port", "0", "--idp-apps", apps,
        "--idp-tls-dir", str(blocker / "tls"),
    )  # fmt: skip
    assert f"--idp-tls-dir: {blocker / 'tls'}: cannot create the directory: Not a directory" in text
    text = await _refused("simulate", "--port", "0", "--idp-tls-dir", str(tls))
    assert "the identity provider also needs --idp-port, --idp-apps" in text
    assert not tls.exists()


async def _token_is_accepted(origins: dict[str, str], ca_bundle: Path) -> None:
    """ClientSecretCredential gets a Defender token from the provider at ``origins``, trusting
    ``ca_bundle``, and the simulator's API (checking tokens) answers 200 to it."""
    async with ClientSecretCredential(
        TENANT,
        APP,
        SECRET,
        authority=origins["identity provider"],
        disable_instance_discovery=True,
        connection_verify=str(ca_bundle),
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
