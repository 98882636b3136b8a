"""The stand-in identity provider's directory: the tenants, their app registrations and each app's
credentials, read from a small YAML file (``defender-proxy simulate --idp-apps FILE``).

An app holds what Entra ID keeps for an app registration and its service principal: client
secrets (one may be marked expired, to draw AADSTS7000222), certificates (PEM files; an assertion
names one by its SHA-1 or SHA-256 thumbprint), federated credentials (an issuer, a subject, an
audience and the key that verifies that issuer's tokens: workload identity) and the application
roles granted to it, which its tokens carry. Every problem of the file is reported at once, each
with its key, and unknown keys are problems.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import Encoding, load_pem_public_key

#: Seconds an access token lives unless the file says otherwise (``expires_in``), as Entra's do.
DEFAULT_LIFETIME: Final = 3599
#: The audience Entra expects in a federated token unless the credential names another.
EXCHANGE_AUDIENCE: Final = "api://AzureADTokenExchange"
_LIFETIME_BOUNDS: Final = (5, 86_400)

#: The keys a client assertion may be signed with (RS256, PS256; ES256 for federated tokens).
VerifyingKey = RSAPublicKey | EllipticCurvePublicKey


class DirectoryError(Exception):
    """The directory file cannot be used; ``problems`` lists every reason, each with its key."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class Secret:
    """A client secret's value, and whether it has passed its end date."""

    value: str
    expired: bool = False


@dataclass(frozen=True, slots=True)
class Certificate:
    """A registered certificate: its public key and the thumbprints an assertion names it by."""

    key: VerifyingKey
    sha1: bytes
    sha256: bytes


@dataclass(frozen=True, slots=True)
class Federated:
    """A federated credential: tokens of ``issuer`` about ``subject`` for ``audience``, verified
    with ``key``."""

    issuer: str
    subject: str
    audience: str
    key: VerifyingKey


@dataclass(frozen=True, slots=True)
class App:
    """One app registration in one tenant."""

    tenant: str
    client_id: str
    roles: tuple[str, ...] = ()
    secrets: tuple[Secret, ...] = ()
    certificates: tuple[Certificate, ...] = ()
    federated: tuple[Federated, ...] = ()


@dataclass(frozen=True, slots=True)
class Directory:
    """Every app, and how long the tokens issued to them live."""

    apps: tuple[App, ...] = ()
    token_lifetime: int = DEFAULT_LIFETIME

    @property
    def tenants(self) -> frozenset[str]:
        """The tenants that exist: those of the apps, lower-cased."""
        return frozenset(app.tenant.lower() for app in self.apps)

    def app(self, tenant: str, client_id: str) -> App | None:
        """The app ``client_id`` registered in ``tenant``, or None."""
        for app in self.apps:
            if app.tenant.lower() == tenant.lower() and app.client_id.lower() == client_id.lower():
                return app
        return None


def certificate(pem: bytes) -> Certificate:
    """The registration of the first certificate in ``pem``."""
    cert = x509.load_pem_x509_certificate(pem)
    der = cert.public_bytes(Encoding.DER)
    return Certificate(
        public_key(pem),
        hashlib.sha1(der, usedforsecurity=False).digest(),
        hashlib.sha256(der).digest(),
    )


def public_key(pem: bytes) -> VerifyingKey:
    """The RSA or EC public key of a PEM certificate or public key; ValueError for another."""
    key = (
        x509.load_pem_x509_certificate(pem).public_key()
        if b"CERTIFICATE" in pem
        else load_pem_public_key(pem)
    )
    if not isinstance(key, RSAPublicKey | EllipticCurvePublicKey):
        raise ValueError("not an RSA or EC key")
    return key


def load_directory(path: str | Path) -> Directory:
    """The directory ``path`` describes; raises ``DirectoryError`` with every problem."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise DirectoryError([f"{path}: cannot be read: {exc}"]) from None
    reader = _Reader(path)
    directory = reader.directory(data)
    if reader.problems:
        raise DirectoryError(reader.problems)
    return directory


class _Reader:
    """Reads the file's data, noting each problem with its key instead of stopping at the first."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.problems: list[str] = []

    def problem(self, key: str, message: str) -> None:
        self.problems.append(f"{self.path}: {key}: {message}")

    def mapping(self, value: object, key: str, known: set[str]) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            self.problem(key, "must be a mapping")
            return {}
        for name in sorted(set(map(str, value)) - known):
            self.problem(f"{key}.{name}" if key else name, "unknown key")
        return value

    def text(self, value: object, key: str) -> str:
        if not isinstance(value, str) or not value:
            self.problem(key, "must be a non-empty string")
            return ""
        return value

    def items(self, value: object, key: str) -> list[Any]:
        if value is None:
            return []
        if not isinstance(value, list):
            self.problem(key, "must be a list")
            return []
        return value

    def file(self, value: object, key: str) -> bytes:
        name = self.text(value, key)
        if not name:
            return b""
        try:
            return (self.path.parent / name).read_bytes()
        except OSError as exc:
            self.problem(key, f"cannot be read: {exc.strerror}")
            return b""

    def directory(self, data: object) -> Directory:
        top = self.mapping(data, "", {"apps", "token_lifetime"})
        lifetime = top.get("token_lifetime", DEFAULT_LIFETIME)
        low, high = _LIFETIME_BOUNDS
        if type(lifetime) is not int or not low <= lifetime <= high:
            self.problem("token_lifetime", f"must be a whole number of seconds, {low} to {high}")
            lifetime = DEFAULT_LIFETIME
        if "apps" not in top:
            self.problem("apps", "is required: a list of app registrations")
        apps = [
            self.app(item, f"apps[{i}]")
            for i, item in enumerate(self.items(top.get("apps"), "apps"))
        ]
        return Directory(tuple(apps), lifetime)

    def app(self, data: object, key: str) -> App:
        known = {"tenant", "client_id", "roles", "secrets", "certificates", "federated"}
        item = self.mapping(data, key, known)
        roles = [
            self.text(role, f"{key}.roles[{i}]")
            for i, role in enumerate(self.items(item.get("roles"), f"{key}.roles"))
        ]
        secrets = [
            self.secret(secret, f"{key}.secrets[{i}]")
            for i, secret in enumerate(self.items(item.get("secrets"), f"{key}.secrets"))
        ]
        certificates = [
            self.certificate(name, f"{key}.certificates[{i}]")
            for i, name in enumerate(self.items(item.get("certificates"), f"{key}.certificates"))
        ]
        federated = [
            self.federated(entry, f"{key}.federated[{i}]")
            for i, entry in enumerate(self.items(item.get("federated"), f"{key}.federated"))
        ]
        return App(
            self.text(item.get("tenant"), f"{key}.tenant"),
            self.text(item.get("client_id"), f"{key}.client_id"),
            tuple(roles),
            tuple(secrets),
            tuple(cert for cert in certificates if cert is not None),
            tuple(entry for entry in federated if entry is not None),
        )

    def secret(self, data: object, key: str) -> Secret:
        item = self.mapping(data, key, {"value", "expired"})
        expired = item.get("expired", False)
        if not isinstance(expired, bool):
            self.problem(f"{key}.expired", "must be true or false")
            expired = False
        return Secret(self.text(item.get("value"), f"{key}.value"), expired)

    def certificate(self, value: object, key: str) -> Certificate | None:
        pem = self.file(value, key)
        if not pem:
            return None
        try:
            return certificate(pem)
        except ValueError:
            self.problem(key, "is not a PEM certificate with an RSA or EC key")
            return None

    def federated(self, data: object, key: str) -> Federated | None:
        item = self.mapping(data, key, {"issuer", "subject", "audience", "key"})
        issuer = self.text(item.get("issuer"), f"{key}.issuer")
        subject = self.text(item.get("subject"), f"{key}.subject")
        audience = self.text(item.get("audience", EXCHANGE_AUDIENCE), f"{key}.audience")
        pem = self.file(item.get("key"), f"{key}.key")
        if not pem:
            return None
        try:
            return Federated(issuer, subject, audience, public_key(pem))
        except ValueError:
            self.problem(f"{key}.key", "is not a PEM certificate or public key")
            return None
