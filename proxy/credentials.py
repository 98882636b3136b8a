"""The app credential the proxy holds for an upstream: its config section and the files it names.

``credentials`` (top level, and each ``upstreams`` entry's own) names one app registration:
``tenant_id``, ``client_id`` and exactly one of ``client_secret_file``, ``certificate_file``
(PEM, key included) or ``federated_token_file`` (workload identity), with the ``authority`` that
mints its tokens and the ``scope`` they are for. The standard ``AZURE_*`` variables fill the
top-level section, each over its key, as azure-identity reads them (``from_environment``);
``AZURE_CLIENT_SECRET`` is the one way to give a secret's value itself: a config file never
holds one.

Files are checked here once, at load, and read again at every mint (``read_secret``,
``read_certificate``): a rotated file is what the next token is minted with. Nothing read from
them is ever shown: problems name the key and the file, never contents.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Final
from urllib.parse import urlsplit

from proxy.catalogue import DEFENDER, GRAPH, catalogue_for_origin
from proxy.endpoints import parse_upstream
from proxy.throttle_config import NestedValueError
from proxy.units import PATH_CHARACTERS, shown, shown_key

__all__ = [
    "DEFAULT_AUTHORITY",
    "ENVIRONMENT",
    "KINDS",
    "US_GOVERNMENT_AUTHORITY",
    "CredentialFileError",
    "Credentials",
    "default_authority",
    "default_scope",
    "describe",
    "from_environment",
    "parse_credentials",
    "read_certificate",
    "read_secret",
    "restricts",
    "with_scope",
]

DEFAULT_AUTHORITY: Final = "https://login.microsoftonline.com"
#: Where GCC High and DoD tenants sign in.
US_GOVERNMENT_AUTHORITY: Final = "https://login.microsoftonline.us"
#: The keys that name the app's proof, each with the kind of credential it makes.
KINDS: Final = {
    "client_secret_file": "secret",
    "certificate_file": "certificate",
    "federated_token_file": "federated",
}
_KEYS: Final = (
    "tenant_id",
    "client_id",
    *KINDS,
    "authority",
    "scope",
    "client_secret_expires",
)
#: The variables azure-identity reads, and the key of the section each one fills.
ENVIRONMENT: Final = {
    "AZURE_TENANT_ID": "tenant_id",
    "AZURE_CLIENT_ID": "client_id",
    "AZURE_CLIENT_SECRET": "client_secret",
    "AZURE_CLIENT_CERTIFICATE_PATH": "certificate_file",
    "AZURE_FEDERATED_TOKEN_FILE": "federated_token_file",
    "AZURE_AUTHORITY_HOST": "authority",
}
#: The variables that give the app's proof: any of them asks for credentials.
_PROOF_VARIABLES: Final = (
    "AZURE_CLIENT_SECRET",
    "AZURE_CLIENT_CERTIFICATE_PATH",
    "AZURE_FEDERATED_TOKEN_FILE",
)
#: The largest secret, certificate or federated token file read (a PEM chain is a few KiB).
MAX_FILE: Final = 64 << 10
_GUID: Final = re.compile(r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")
_DOMAIN: Final = re.compile(
    r"(?=.{1,253}\Z)[A-Za-z0-9](?:[A-Za-z0-9-]{0,62})(?:\.[A-Za-z0-9-]{1,63})+"
)
_SCOPE: Final = re.compile(r"[!-~]{1,256}/\.default")
#: Tenants that name no one tenant: the client credentials grant refuses them.
_NO_TENANT: Final = ("common", "organizations", "consumers")


class CredentialFileError(Exception):
    """A credential file that cannot be used now; the text names the file, never its contents."""


@dataclass(frozen=True, slots=True)
class Credentials:
    """One app registration and its proof, as configured (files, not what they hold)."""

    tenant_id: str
    client_id: str
    #: ``secret``, ``certificate`` or ``federated`` (``KINDS``)
    kind: str
    #: the file named by the kind's key (None: a secret given by ``AZURE_CLIENT_SECRET``)
    file: str | None
    #: "" until settled against the upstream (``with_scope``) when the config names none
    authority: str = ""
    #: None until settled against the upstream (``with_scope``)
    scope: str | None = None
    #: when the secret expires, as a Unix time (``client_secret_expires``), if given
    secret_expires: float | None = None
    #: the secret itself, from ``AZURE_CLIENT_SECRET`` only; never shown
    secret: str | None = field(default=None, repr=False)

    @property
    def key(self) -> tuple[str, str, str, str | None]:
        """What one token belongs to: one token source serves every upstream with this key."""
        return (self.authority, self.tenant_id, self.client_id, self.scope)


def default_scope(origin: str) -> str | None:
    """The scope of tokens for ``origin``'s API; None when its host does not say."""
    host = (urlsplit(origin).hostname or "").rstrip(".")
    name = catalogue_for_origin(origin)
    if name == GRAPH:
        return f"https://{host}/.default"
    if name == DEFENDER:
        if host.endswith(".microsoft.us"):
            cloud = "gcc" if "gcc" in host.partition(".")[0] else "gov"
            return f"https://api-{cloud}.securitycenter.microsoft.us/.default"
        return "https://api.securitycenter.microsoft.com/.default"
    return None


def default_authority(origin: str) -> str:
    """The authority that mints tokens for ``origin``'s API: US Government's for the hosts of
    GCC High and DoD (Defender's ``api-gov``, Graph's ``.us`` hosts), else the global one (GCC
    signs in at the global authority)."""
    host = (urlsplit(origin).hostname or "").rstrip(".")
    name = catalogue_for_origin(origin)
    if host.endswith(".microsoft.us") and (
        name == GRAPH or (name == DEFENDER and "gcc" not in host.partition(".")[0])
    ):
        return US_GOVERNMENT_AUTHORITY
    return DEFAULT_AUTHORITY


def with_scope(credentials: Credentials, origin: str) -> Credentials:
    """``credentials`` with its scope and authority settled for ``origin``; raises ValueError
    (saying why) if the scope cannot be."""
    if not credentials.authority:
        credentials = replace(credentials, authority=default_authority(origin))
    if credentials.scope is not None:
        return credentials
    scope = default_scope(origin)
    if scope is None:
        raise ValueError(
            "it is not a Defender or Graph host, so the scope of its tokens cannot be derived "
            "(e.g. https://api.securitycenter.microsoft.com/.default)"
        )
    return replace(credentials, scope=scope)


#: How ``describe`` names each kind's proof.
_PROOFS: Final = {
    "secret": "client secret",
    "certificate": "certificate",
    "federated": "federated token",
}


def _moment(timestamp: float) -> str:
    try:
        moment = datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
    except (ValueError, OverflowError, OSError):  # past year 9999 (an offset can take it there)
        return f"Unix time {timestamp:.0f}"
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def describe(credentials: Credentials, now: float) -> str:
    """One line on ``credentials`` for ``check-config``: the app, its proof and where it is
    kept, the scope and the authority; never the secret."""
    proof = _PROOFS[credentials.kind]
    where = (
        "from AZURE_CLIENT_SECRET"
        if credentials.file is None
        else f"in {shown(credentials.file, PATH_CHARACTERS)}"
    )
    expires = credentials.secret_expires
    if expires is not None:
        ends = "expired" if expires <= now else "expires"
        where = f"{where} ({ends} {_moment(expires)})"
    return (
        f"app {credentials.client_id} of tenant {credentials.tenant_id}, {proof} {where}, "
        f"scope {credentials.scope or '(unsettled)'}, authority {credentials.authority}"
    )


def restricts(networks: tuple[str, ...]) -> bool:
    """Whether ``allow_from``'s ``networks`` keep out some callers (none spans every address)."""
    return bool(networks) and all(
        ipaddress.ip_network(network, strict=False).prefixlen > 0 for network in networks
    )


def _read(path: str) -> bytes:
    """The bytes of the regular file at ``path`` (at most ``MAX_FILE``); never blocks on a FIFO."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as error:
        raise CredentialFileError(
            f"cannot read {shown(path, PATH_CHARACTERS)}: {error.strerror or error}"
        ) from None
    # Checked before fdopen, which raises on a directory and leaves the descriptor open.
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise CredentialFileError(f"{shown(path, PATH_CHARACTERS)} is not a regular file")
    with os.fdopen(fd, "rb") as file:
        try:
            raw = file.read(MAX_FILE + 1)
        except OSError as error:
            raise CredentialFileError(
                f"cannot read {shown(path, PATH_CHARACTERS)}: {error.strerror or error}"
            ) from None
    if len(raw) > MAX_FILE:
        raise CredentialFileError(
            f"{shown(path, PATH_CHARACTERS)} is over the limit of {MAX_FILE // 1024} KiB"
        )
    return raw


def read_secret(path: str) -> str:
    """The secret (or federated token) in the file at ``path``, without surrounding whitespace."""
    try:
        text = _read(path).decode("utf-8").strip()
    except UnicodeDecodeError:
        raise CredentialFileError(f"{shown(path, PATH_CHARACTERS)} is not UTF-8 text") from None
    if not text:
        raise CredentialFileError(f"{shown(path, PATH_CHARACTERS)} is empty")
    if not text.isprintable():
        raise CredentialFileError(
            f"{shown(path, PATH_CHARACTERS)} holds more than one line or unprintable characters"
        )
    return text


@dataclass(frozen=True, slots=True)
class CertificateFile:
    """A certificate file as azure-identity takes it, and when its certificate expires."""

    pem: bytes
    not_after: float


def read_certificate(path: str, check_key: bool = True) -> CertificateFile:
    """The PEM file at ``path``: an unencrypted RSA key and the certificate it belongs to.

    ``check_key`` runs OpenSSL's consistency checks of the RSA key (~40 ms of CPU for 2048
    bits, holding the GIL): at config time; a mint skips them, since azure-identity loads the
    same key with them right after."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

    pem = _read(path)
    where = shown(path, PATH_CHARACTERS)
    try:
        certificates = x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise CredentialFileError(
            f"{where} holds no PEM certificate; expected the app's certificate and its private key"
        ) from None
    try:
        key = serialization.load_pem_private_key(
            pem, password=None, unsafe_skip_rsa_key_validation=not check_key
        )
    except TypeError:
        raise CredentialFileError(
            f"{where}: the private key is encrypted; give it unencrypted (the file's mode "
            "protects it, as for a client secret)"
        ) from None
    except ValueError:
        raise CredentialFileError(
            f"{where} holds no PEM private key; expected the key and the certificate in one file"
        ) from None
    except Exception:  # an unsupported key type: cryptography raises its own kinds
        raise CredentialFileError(f"{where}: its private key cannot be read") from None
    if not isinstance(key, RSAPrivateKey):
        raise CredentialFileError(
            f"{where}: the key is not an RSA key; Entra ID client assertions are signed with RSA"
        )
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    encoding = serialization.Encoding.PEM
    mine = key.public_key().public_bytes(encoding, spki)
    for certificate in certificates:
        if certificate.public_key().public_bytes(encoding, spki) == mine:
            return CertificateFile(pem, certificate.not_valid_after_utc.timestamp())
    raise CredentialFileError(f"{where}: no certificate in it matches its private key")


def _guid(value: object, key: str) -> str:
    if isinstance(value, str) and _GUID.fullmatch(value.strip()):
        return value.strip().lower()
    raise ValueError(f"expected the app registration's {key} (a GUID), got {shown(value)}")


def _tenant(value: object) -> str:
    if isinstance(value, str):
        text = value.strip()
        if text.lower() in _NO_TENANT:
            raise ValueError(
                f"{text!r} names no one tenant; the client credentials grant needs the tenant's "
                "id (a GUID) or one of its domains"
            )
        if _GUID.fullmatch(text) or _DOMAIN.fullmatch(text):
            return text.lower()
    raise ValueError(
        f"expected the tenant's id (a GUID) or one of its domains (contoso.onmicrosoft.com), "
        f"got {shown(value)}"
    )


def _authority(value: object) -> str:
    text = value.strip() if isinstance(value, str) else value
    if isinstance(text, str) and "://" not in text:
        text = f"https://{text}"  # AZURE_AUTHORITY_HOST may be a bare host, as azure-identity takes
    if isinstance(text, str) and text.endswith("/"):
        text = text.rstrip("/")
    origin = parse_upstream(text)
    if not origin.startswith("https://"):
        raise ValueError(f"must be an https:// URL (the secret travels to it), got {shown(value)}")
    return origin


def _scope(value: object) -> str:
    if isinstance(value, str) and _SCOPE.fullmatch(value.strip()):
        return value.strip()
    raise ValueError(
        "expected one scope ending in /.default, such as "
        f"https://api.securitycenter.microsoft.com/.default, got {shown(value)}"
    )


def _expires(value: object) -> float:
    if isinstance(value, str):
        try:
            value = datetime.datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValueError(f"expected a date such as 2027-03-01, got {shown(value)}") from None
    if isinstance(value, datetime.datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=datetime.UTC)
        return moment.timestamp()
    if isinstance(value, datetime.date):
        # A date alone: the secret is taken to end as that day begins (UTC), the earlier reading.
        return datetime.datetime(
            value.year, value.month, value.day, tzinfo=datetime.UTC
        ).timestamp()
    raise ValueError(f"expected a date such as 2027-03-01, got {shown(value)}")


def _path(value: object) -> str:
    if isinstance(value, str) and value and "\0" not in value:
        return value
    raise ValueError(f"expected a file path, got {shown(value)}")


def _check_file(kind: str, path: str) -> float | None:
    """Check the file of a ``kind`` credential as a mint will read it; the certificate's expiry."""
    try:
        if kind == "certificate":
            return read_certificate(path).not_after
        read_secret(path)
    except CredentialFileError as error:
        raise ValueError(str(error)) from None
    return None


def parse_credentials(
    value: object,
    given_by: Mapping[str, str] | None = None,
    secret: str | None = None,
) -> Credentials:
    """A ``credentials`` section; every problem is raised at once as ``NestedValueError``.

    ``given_by`` maps the keys that came from the environment to their variables (two proofs
    are named by them; ``config`` names a key's variable beside its problem); ``secret`` is
    ``AZURE_CLIENT_SECRET``'s value.
    """
    if not isinstance(value, Mapping):
        raise ValueError(
            "expected a mapping with tenant_id, client_id and one of client_secret_file, "
            f"certificate_file, federated_token_file, got a {type(value).__name__}"
        )
    given_by = given_by or {}
    problems: list[tuple[str, str]] = []

    for key in value:
        if key == "client_secret":
            problems.append(
                (
                    ".client_secret",
                    "a config file does not hold secrets: write the secret to a file and name it "
                    "with client_secret_file, or give it in AZURE_CLIENT_SECRET",
                )
            )
        elif key not in _KEYS:
            problems.append((f".{shown_key(key)}", f"unknown key (known: {', '.join(_KEYS)})"))

    parsed: dict[str, object] = {}
    parsers = {
        "tenant_id": _tenant,
        "client_id": lambda raw: _guid(raw, "client_id"),
        "authority": _authority,
        "scope": _scope,
        "client_secret_expires": _expires,
        **dict.fromkeys(KINDS, _path),
    }
    for key, parse in parsers.items():
        raw = value.get(key)
        if raw is None:
            continue
        try:
            parsed[key] = parse(raw)
        except ValueError as error:
            problems.append((f".{key}", str(error)))
    problems.extend(
        (f".{key}", f"required: credentials need the app's {key}")
        for key in ("tenant_id", "client_id")
        if value.get(key) is None
    )

    proofs = [key for key in KINDS if value.get(key) is not None]
    named = [given_by.get(key, key) for key in proofs]
    if secret is not None:
        named.insert(0, "AZURE_CLIENT_SECRET")
    kind: str | None = None
    file: str | None = None
    expires: float | None = None
    if len(named) > 1:
        problems.append(
            (
                "",
                f"give exactly one of client_secret_file, certificate_file, "
                f"federated_token_file; got {' and '.join(named)}",
            )
        )
    elif not named:
        problems.append(
            (
                "",
                "required: one of client_secret_file, certificate_file, federated_token_file "
                "(or AZURE_CLIENT_SECRET, AZURE_CLIENT_CERTIFICATE_PATH, AZURE_FEDERATED_TOKEN_FILE)",
            )
        )
    elif secret is not None:
        kind = "secret"  # never blank: from_environment drops a blank variable
    else:
        key = proofs[0]
        kind = KINDS[key]
        if key in parsed:
            file = str(parsed[key])
            try:
                expires = _check_file(kind, file)
            except ValueError as error:
                problems.append((f".{key}", str(error)))
    if "client_secret_expires" in parsed:
        if kind is not None and kind != "secret":
            problems.append(
                (
                    ".client_secret_expires",
                    f"only for a client secret: a {kind} credential "
                    + (
                        "says when it expires itself"
                        if kind == "certificate"
                        else "has no end date"
                    ),
                )
            )
        else:
            expires = float(parsed["client_secret_expires"])  # type: ignore[arg-type]
    if problems:
        raise NestedValueError(problems)
    assert kind is not None
    return Credentials(
        tenant_id=str(parsed["tenant_id"]),
        client_id=str(parsed["client_id"]),
        kind=kind,
        file=file,
        authority=str(parsed.get("authority", "")),
        scope=None if "scope" not in parsed else str(parsed["scope"]),
        secret_expires=expires,
        secret=None if secret is None else secret.strip(),
    )


def from_environment(
    section: object, environ: Mapping[str, str]
) -> tuple[object, dict[str, str], str | None]:
    """The top-level section with the ``AZURE_*`` variables over its keys: the merged mapping
    (None when neither asks for credentials), which key each variable gave, and the secret.

    The variables ask for credentials only when one of them gives a proof (a secret, a
    certificate or a federated token file): ``AZURE_CLIENT_ID`` alone, which many pods carry
    for other reasons, turns nothing on.
    """
    present = {name: value for name in ENVIRONMENT if (value := environ.get(name, "").strip())}
    if section is None and not any(name in present for name in _PROOF_VARIABLES):
        return None, {}, None
    if section is not None and not isinstance(section, Mapping):
        return section, {}, None
    merged = dict(section or {})
    given_by: dict[str, str] = {}
    secret = None
    for name, value in present.items():
        key = ENVIRONMENT[name]
        if key == "client_secret":
            secret = environ[name]
            continue
        merged[key] = value
        given_by[key] = name
    return merged, given_by, secret
