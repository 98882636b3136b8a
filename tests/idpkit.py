"""What tests of the stand-in identity provider share: a tenant, its apps, their credentials, and
the files a client library reads (the CA bundle that trusts the provider, the app's key + cert).
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import trustme
from aiohttp import web

from proxy.simulator.directory import DEFAULT_LIFETIME, App, Directory
from proxy.simulator.identity import IdpSite, Provider, make_idp_app, tls_context
from tests.procs import Process, start_cli

TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
APP = "0ba0c3a5-1111-4b2d-9c1e-0000000000a1"
SECRET = "s3cret-value~of.the_app"
OLD_SECRET = "an-expired-secret"
DEFENDER = "https://api.securitycenter.microsoft.com/.default"
GRAPH = "https://graph.microsoft.com/.default"
ROLES = ("Machine.Read.All", "Alert.Read.All")


@dataclass(frozen=True)
class Files:
    """The provider's TLS pair, the bundle that trusts it, and the app's certificate files."""

    server_cert: Path
    server_key: Path
    ca_bundle: Path
    #: The registered certificate (PEM), and the same with its private key, as a client holds it.
    app_cert: Path
    app_key_and_cert: Path
    #: A certificate with its key that is registered nowhere.
    stranger_key_and_cert: Path


def write_files(root: Path) -> Files:
    """A fresh CA, a leaf for 127.0.0.1, and two app certificates, written under ``root``."""
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    files = Files(
        root / "idp.crt",
        root / "idp.key",
        root / "ca.pem",
        root / "app.crt",
        root / "app.pem",
        root / "stranger.pem",
    )
    server.cert_chain_pems[0].write_to_path(str(files.server_cert))
    server.private_key_pem.write_to_path(str(files.server_key))
    ca.cert_pem.write_to_path(str(files.ca_bundle))
    # RSA: azure-identity signs client assertions with RSA keys only.
    rsa = trustme.KeyType.RSA
    signer = trustme.CA(key_type=rsa)
    app = signer.issue_cert("app.example", common_name="defender-proxy", key_type=rsa)
    app.cert_chain_pems[0].write_to_path(str(files.app_cert))
    files.app_key_and_cert.write_bytes(app.private_key_and_cert_chain_pem.bytes())
    stranger = signer.issue_cert("stranger.example", common_name="stranger", key_type=rsa)
    files.stranger_key_and_cert.write_bytes(stranger.private_key_and_cert_chain_pem.bytes())
    return files


@dataclass
class Idp:
    """A running identity provider, its state, and what a client needs to trust and reach it."""

    url: str
    provider: Provider
    files: Files

    def credential_kwargs(self) -> dict[str, Any]:
        """The keyword arguments that point an azure-identity credential at this provider."""
        return {
            "authority": self.url,
            "disable_instance_discovery": True,
            "connection_verify": str(self.files.ca_bundle),
        }

    async def control(self, method: str, path: str, body: object = None) -> Any:
        """Call a ``/_sim/identity`` endpoint; its JSON answer."""
        connector = aiohttp.TCPConnector(ssl=tls_client(self.files))
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            session.request(method, f"{self.url}{path}", json=body) as response,
        ):
            return await response.json()


def tls_client(files: Files) -> ssl.SSLContext:
    """A client TLS context trusting the provider's CA."""
    return ssl.create_default_context(cafile=str(files.ca_bundle))


@asynccontextmanager
async def running_idp(
    files: Files, apps: tuple[App, ...], token_lifetime: int = DEFAULT_LIFETIME
) -> AsyncIterator[Idp]:
    """The identity provider on an HTTPS port of 127.0.0.1, knowing ``apps``."""
    provider = Provider(Directory(apps, token_lifetime))
    site = IdpSite(0, str(files.server_cert), str(files.server_key), provider.directory)
    runner = web.AppRunner(make_idp_app(provider))
    await runner.setup()
    tcp = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls_context(site))
    await tcp.start()
    port = runner.addresses[0][1]
    try:
        yield Idp(f"https://127.0.0.1:{port}", provider, files)
    finally:
        await runner.cleanup()


_LISTENING = re.compile(r"^(simulator|identity provider) listening on (\S+)")


async def start_simulate_with_idp(
    tls: Files | Path, apps: Path, *args: str, printed: list[str] | None = None
) -> tuple[Process, dict[str, str]]:
    """``defender-proxy simulate`` with its identity provider on ``apps`` and ``args`` more: the
    process and the origins it printed, by what listens on them (``simulator``, ``identity
    provider``); the rest of its output is left unread (the simulator writes no line per
    request, so its pipe does not fill). ``tls`` is the provider's
    pair (``Files``), or a directory for ``--idp-tls-dir`` to write one into; each line read
    until both listen is added to ``printed``."""
    pair = (
        ["--idp-tls-dir", str(tls)]
        if isinstance(tls, Path)
        else ["--idp-cert", str(tls.server_cert), "--idp-key", str(tls.server_key)]
    )
    process = await start_cli(
        "simulate", "--port", "0", "--idp-port", "0", *pair, "--idp-apps", str(apps), *args,
    )  # fmt: skip
    found: dict[str, str] = {}
    try:
        async with asyncio.timeout(15):
            while len(found) < 2:
                await process.wait_for("_text")
                for line in process.lines:
                    if printed is not None:
                        printed.append(line.get("text", ""))
                    if (match := _LISTENING.match(line.get("text", ""))) is not None:
                        found[match[1]] = match[2]
                process.lines.clear()
    except BaseException:
        await process.stop()
        raise
    return process, found


def held_config(
    upstream: str, idp: Idp, section: dict[str, Any], read: float = 5, **top: Any
) -> dict[str, Any]:
    """A proxy config for ``upstream`` holding the app's credential (``section`` over it: the
    proof, say), minted by ``idp`` and trusting its CA; ``top`` more keys at the top."""
    return {
        "upstream": upstream,
        "tls": {"ca_bundle": str(idp.files.ca_bundle)},
        "timeouts": {"connect": 1, "read": read},
        "credentials": {
            "tenant_id": TENANT,
            "client_id": APP,
            "authority": idp.url,
            "scope": DEFENDER,
            **section,
        },
        **top,
    }
