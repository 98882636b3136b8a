"""What tests of the stand-in identity provider share: a tenant, its apps, their credentials, and
the files a client library reads (the CA bundle that trusts the provider, the app's key + cert).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import trustme

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
