"""The identity provider served over a real socket with the throwaway pair ``--idp-tls-dir``
writes: clients trusting its ca.pem (a default TLS context, and azure-identity) reach it."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from azure.identity.aio import ClientSecretCredential

from proxy.simulator.directory import App, Directory, Secret
from proxy.simulator.identity import IdpSite, Provider, make_idp_app, tls_context
from proxy.simulator.idp_tls import TlsPair, write_pair
from tests.idpkit import APP, DEFENDER, ROLES, SECRET, TENANT


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[TlsPair, int]]:
    """The provider on a port of 127.0.0.1 with a freshly written pair, and that port."""
    pair = write_pair(tmp_path / "tls")
    directory = Directory((App(TENANT, APP, ROLES, (Secret(SECRET),)),))
    site = IdpSite(0, str(pair.cert), str(pair.key), directory)
    runner = web.AppRunner(make_idp_app(Provider(directory)))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls_context(site)).start()
    try:
        yield pair, runner.addresses[0][1]
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_a_default_context_trusting_ca_pem_reaches_the_provider(
    served: tuple[TlsPair, int], host: str
) -> None:
    """ssl.create_default_context(cafile=ca.pem) verifies the served leaf by either name."""
    pair, port = served
    trusting = ssl.create_default_context(cafile=str(pair.ca))
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"https://{host}:{port}/_sim/identity", ssl=trusting) as response,
    ):
        assert response.status == 200
        assert (await response.json())["token_requests"] == 0


async def test_a_context_without_ca_pem_is_refused(served: tuple[TlsPair, int]) -> None:
    """The system's trust store alone does not accept the throwaway leaf."""
    _, port = served
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await session.get(f"https://127.0.0.1:{port}/_sim/identity")


async def test_azure_identity_trusting_ca_pem_gets_a_token(served: tuple[TlsPair, int]) -> None:
    """ClientSecretCredential with connection_verify=ca.pem, as the proxy's tls.ca_bundle
    gives it, is issued a token by the provider."""
    pair, port = served
    async with ClientSecretCredential(
        TENANT,
        APP,
        SECRET,
        authority=f"https://127.0.0.1:{port}",
        disable_instance_discovery=True,
        connection_verify=str(pair.ca),
    ) as credential:
        token = await credential.get_token(DEFENDER)
    assert token.token.count(".") == 2
