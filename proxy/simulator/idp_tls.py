"""The identity provider's throwaway TLS pair (``defender-proxy simulate --idp-tls-dir DIR``).

MSAL and azure-identity reach an authority over https only, so the stand-in Entra ID needs a
certificate its clients trust. For a demo or a quick trial, ``write_pair`` makes one at start with
``cryptography`` alone (no test-only package): a CA of its own, and a leaf it signs for
``127.0.0.1``, ``::1`` and ``localhost``, both EC P-256 and valid for a day. It writes

- ``ca.pem``: the CA certificate, what a client trusts (``tls.ca_bundle``, ``curl --cacert``);
- ``idp.crt``: the leaf the provider serves;
- ``idp.key``: the leaf's private key, mode 0600.

The CA's own key is never written: nothing can be signed with it once the process has it no
more. Each file is written whole, under a temporary name then renamed, so a client that reads
``ca.pem`` while the pair is made never gets half of it.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["LIFETIME", "NAMES", "TlsPair", "TlsPairError", "write_pair"]

#: How long the pair is valid: a throwaway for one run, not a certificate to keep.
LIFETIME: Final = datetime.timedelta(days=1)
#: How far before now the validity starts, for a client whose clock is a little behind.
_SKEW: Final = datetime.timedelta(minutes=5)
#: The DNS names and addresses the leaf is valid for: the provider listens on the loopback.
NAMES: Final = ("localhost", "127.0.0.1", "::1")
_ORGANISATION: Final = "defender-proxy simulate"


class TlsPairError(Exception):
    """The pair cannot be written; the text names the directory or file and the reason."""


@dataclass(frozen=True, slots=True)
class TlsPair:
    """The files of a pair written by ``write_pair``, and when its certificates expire."""

    ca: Path
    cert: Path
    key: Path
    not_after: datetime.datetime


def write_pair(
    directory: str | os.PathLike[str],
    now: datetime.datetime | None = None,
    lifetime: datetime.timedelta = LIFETIME,
) -> TlsPair:
    """Make a CA and a leaf for the loopback, and write them into ``directory`` (created if
    missing); raises ``TlsPairError`` when it cannot."""
    root = Path(directory)
    # Whole seconds: what a certificate holds, so not_after is the certificates' own.
    start = (now or datetime.datetime.now(datetime.UTC)).replace(microsecond=0) - _SKEW
    end = start + _SKEW + lifetime
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("throwaway CA of the identity provider")
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (
        _builder(ca_name, ca_name, ca_key.public_key(), start, end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_usage(key_cert_sign=True), critical=True)
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName(NAMES[0])]
    names += [x509.IPAddress(ipaddress.ip_address(address)) for address in NAMES[1:]]
    leaf = (
        _builder(_name("identity provider"), ca_name, leaf_key.public_key(), start, end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_usage(key_cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(leaf_key.public_key()), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    key_pem = leaf_key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    pair = TlsPair(root / "ca.pem", root / "idp.crt", root / "idp.key", end)
    try:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as error:
        raise TlsPairError(f"{root}: cannot create the directory: {_reason(error)}") from None
    # The key first: a directory that holds a certificate always holds its key.
    _write(pair.key, key_pem, 0o600)
    _write(pair.cert, leaf.public_bytes(pem), 0o644)
    _write(pair.ca, ca.public_bytes(pem), 0o644)
    return pair


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORGANISATION),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    key: ec.EllipticCurvePublicKey,
    start: datetime.datetime,
    end: datetime.datetime,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
    )


def _usage(*, key_cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=key_cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write ``path`` whole with ``mode``: a temporary file (created 0600) renamed over it."""
    try:
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    except OSError as error:
        raise TlsPairError(f"{path.parent}: cannot write {path.name}: {_reason(error)}") from None
    try:
        with os.fdopen(fd, "wb") as file:
            os.fchmod(file.fileno(), mode)
            file.write(data)
        os.replace(temporary, path)
    except OSError as error:
        Path(temporary).unlink(missing_ok=True)
        raise TlsPairError(f"{path.parent}: cannot write {path.name}: {_reason(error)}") from None


def _reason(error: OSError) -> str:
    return error.strerror or str(error)
