"""The ``credentials`` section as an operator meets it: through ``parse_settings``,
``load_settings`` and ``defender-proxy check-config``, with the ``AZURE_*`` variables over it."""

from __future__ import annotations

import contextlib
import datetime
import io
import os
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import trustme
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy import cli
from proxy.config import ConfigError, Settings, load_settings, parse_settings
from proxy.credentials import Credentials, describe
from tests.idpkit import APP, TENANT, write_files

OTHER_APP = "0ba0c3a5-1111-4b2d-9c1e-0000000000a2"
DEFENDER_SCOPE = "https://api.securitycenter.microsoft.com/.default"
GRAPH_SCOPE = "https://graph.microsoft.com/.default"
KNOWN = (
    "tenant_id, client_id, client_secret_file, certificate_file, federated_token_file, "
    "authority, scope, client_secret_expires"
)
NO_PROOF = (
    "required: one of client_secret_file, certificate_file, federated_token_file "
    "(or AZURE_CLIENT_SECRET, AZURE_CLIENT_CERTIFICATE_PATH, AZURE_FEDERATED_TOKEN_FILE)"
)
PROOFS = "give exactly one of client_secret_file, certificate_file, federated_token_file; got"
NO_SCOPE = (
    "it is not a Defender or Graph host, so the scope of its tokens cannot be derived "
    "(e.g. https://api.securitycenter.microsoft.com/.default)"
)
THE_SECRET = "s3cret-value~of.the_app"
AZURE = (
    "AZURE_TENANT_ID",
    "AZURE_CLIENT_ID",
    "AZURE_CLIENT_SECRET",
    "AZURE_CLIENT_CERTIFICATE_PATH",
    "AZURE_FEDERATED_TOKEN_FILE",
    "AZURE_AUTHORITY_HOST",
)


@dataclass(frozen=True)
class Kit:
    """Files a credentials section names: one of each kind, and broken ones beside them."""

    root: Path
    secret: Path
    certificate: Path
    #: the app's certificate alone, without its key
    certificate_alone: Path
    #: another app's key with this app's certificate
    mismatched: Path
    token: Path

    def section(self, **changes: object) -> dict[str, object]:
        """A valid section with a secret file, with ``changes`` over it (None drops a key)."""
        section: dict[str, object] = {
            "tenant_id": TENANT,
            "client_id": APP,
            "client_secret_file": str(self.secret),
        }
        section.update(changes)
        return {key: value for key, value in section.items() if value is not None}

    def with_proof(self, key: str, path: object) -> dict[str, object]:
        """A valid section whose one proof is ``key``, naming ``path``."""
        return {**self.section(client_secret_file=None), key: path}


def make_kit(root: Path) -> Kit:
    """A ``Kit`` written under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    files = write_files(root)
    secret = root / "client-secret"
    secret.write_text(f"{THE_SECRET}\n", encoding="utf-8")
    token = root / "azure-identity-token"
    token.write_text("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJwb2QifQ.c2ln\n", encoding="utf-8")
    stranger_key = files.stranger_key_and_cert.read_bytes().split(b"-----BEGIN CERTIFICATE")[0]
    mismatched = root / "mismatched.pem"
    mismatched.write_bytes(stranger_key + files.app_cert.read_bytes())
    return Kit(root, secret, files.app_key_and_cert, files.app_cert, mismatched, token)


@pytest.fixture(scope="module")
def shared_kit(tmp_path_factory: pytest.TempPathFactory) -> Kit:
    """Credential files made once for this module (RSA keys take a while); tests only read them."""
    return make_kit(tmp_path_factory.mktemp("kit"))


@pytest.fixture
def kit(shared_kit: Kit, tmp_path: Path) -> Kit:
    """The module's credential files, with a root of this test's own for the files it makes."""
    return replace(shared_kit, root=tmp_path)


def settings_of(data: object, environ: dict[str, str] | None = None) -> Settings:
    """``parse_settings`` of ``data`` from contoso.yaml, with ``environ`` alone as environment."""
    return parse_settings(data, "contoso.yaml", environ or {})


def problems_of(data: object, environ: dict[str, str] | None = None) -> list[str]:
    """The problems ``parse_settings`` reports for ``data`` (fails if it accepts it)."""
    with pytest.raises(ConfigError) as caught:
        settings_of(data, environ)
    return caught.value.problems


def held(settings: Settings) -> Credentials:
    """The credentials of the one listener of ``settings``."""
    (listener,) = settings.listeners
    assert listener.credentials is not None
    return listener.credentials


def not_after(path: Path) -> float:
    """The notAfter of the first certificate in the PEM file at ``path``, as a Unix time."""
    (certificate, *_) = x509.load_pem_x509_certificates(path.read_bytes())
    return certificate.not_valid_after_utc.timestamp()


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> float:
    """The Unix time of a UTC date and time."""
    return datetime.datetime(year, month, day, hour, minute, tzinfo=datetime.UTC).timestamp()


# Each kind parses


def test_a_secret_file_gives_secret_credentials(kit: Kit) -> None:
    """A section with client_secret_file is a secret credential naming the file, with the
    default authority and the scope of the default upstream (Defender)."""
    credentials = held(settings_of({"credentials": kit.section()}))
    assert credentials == Credentials(
        tenant_id=TENANT,
        client_id=APP,
        kind="secret",
        file=str(kit.secret),
        authority="https://login.microsoftonline.com",
        scope=DEFENDER_SCOPE,
    )


def test_a_certificate_file_gives_its_expiry(kit: Kit) -> None:
    """A certificate file (an RSA key and its certificate) is a certificate credential whose
    expiry is the certificate's notAfter."""
    section = kit.section(client_secret_file=None, certificate_file=str(kit.certificate))
    credentials = held(settings_of({"credentials": section}))
    assert (credentials.kind, credentials.file) == ("certificate", str(kit.certificate))
    assert credentials.secret_expires == not_after(kit.certificate)


def test_a_federated_token_file_gives_federated_credentials(kit: Kit) -> None:
    """A federated token file (workload identity) is a federated credential with no expiry."""
    section = kit.section(client_secret_file=None, federated_token_file=str(kit.token))
    credentials = held(settings_of({"credentials": section}))
    assert (credentials.kind, credentials.file, credentials.secret_expires) == (
        "federated",
        str(kit.token),
        None,
    )


def test_guids_and_a_tenant_domain_are_read_in_lower_case(kit: Kit) -> None:
    """Ids in upper case and a tenant given by its domain are accepted, in lower case."""
    section = kit.section(tenant_id="Contoso.OnMicrosoft.com", client_id=f" {APP.upper()} ")
    credentials = held(settings_of({"credentials": section}))
    assert (credentials.tenant_id, credentials.client_id) == ("contoso.onmicrosoft.com", APP)


def test_the_example_of_the_readme_parses_from_a_file(kit: Kit) -> None:
    """load_settings reads the README's section shape from YAML, its date as the secret's end."""
    path = kit.root / "contoso.yaml"
    path.write_text(
        "credentials:\n"
        f"  tenant_id: {TENANT}\n"
        f"  client_id: {APP}\n"
        f"  client_secret_file: {kit.secret}\n"
        "  authority: https://login.microsoftonline.com\n"
        f"  scope: {DEFENDER_SCOPE}\n"
        "  client_secret_expires: 2027-03-01\n",
        encoding="utf-8",
    )
    credentials = held(load_settings(str(path), environ={}))
    assert credentials.secret_expires == utc(2027, 3, 1)
    assert credentials.scope == DEFENDER_SCOPE


# The scope


@pytest.mark.parametrize(
    ("upstream", "scope"),
    [
        ("https://api.security.microsoft.com", DEFENDER_SCOPE),
        ("https://api.securitycenter.microsoft.com", DEFENDER_SCOPE),
        ("https://eu.api.security.microsoft.com", DEFENDER_SCOPE),
        ("https://api-eu.securitycenter.microsoft.com", DEFENDER_SCOPE),
        (
            "https://api-gcc.securitycenter.microsoft.us",
            "https://api-gcc.securitycenter.microsoft.us/.default",
        ),
        (
            "https://api-gov.securitycenter.microsoft.us",
            "https://api-gov.securitycenter.microsoft.us/.default",
        ),
        ("https://api-gcc.security.microsoft.us", "https://api-gcc.securitycenter.microsoft.us/.default"),
        ("https://api-gov.security.microsoft.us", "https://api-gov.securitycenter.microsoft.us/.default"),
        ("https://graph.microsoft.com", GRAPH_SCOPE),
        ("https://graph.microsoft.us", "https://graph.microsoft.us/.default"),
        ("https://dod-graph.microsoft.us", "https://dod-graph.microsoft.us/.default"),
    ],
)  # fmt: skip
def test_the_scope_defaults_from_the_upstreams_host(kit: Kit, upstream: str, scope: str) -> None:
    """Without scope, a Defender or Graph host gives the scope of its own API and cloud."""
    credentials = held(settings_of({"upstream": upstream, "credentials": kit.section()}))
    assert credentials.scope == scope


@pytest.mark.parametrize(
    "upstream", ["http://127.0.0.1:9", "https://proxy.contoso.example", "https://[::1]:8443"]
)
def test_the_scope_is_required_for_any_other_host(kit: Kit, upstream: str) -> None:
    """Without scope, an upstream that is not a Defender or Graph host is a problem at
    credentials.scope naming the upstream."""
    problems = problems_of({"upstream": upstream, "credentials": kit.section()})
    assert problems == [f"contoso.yaml: credentials.scope: required for {upstream}: {NO_SCOPE}"]


@pytest.mark.parametrize("upstream", ["http://127.0.0.1:9", "https://graph.microsoft.com"])
def test_an_explicit_scope_is_kept(kit: Kit, upstream: str) -> None:
    """A scope given is the scope, whatever the upstream's host would give."""
    section = kit.section(scope=" api://defender-proxy-tests/.default ")
    credentials = held(settings_of({"upstream": upstream, "credentials": section}))
    assert credentials.scope == "api://defender-proxy-tests/.default"


@pytest.mark.parametrize(
    "scope", ["https://graph.microsoft.com", "a b/.default", "", ["x/.default"], 5, "/.default"]
)
def test_a_scope_that_is_not_one_default_scope_is_a_problem(kit: Kit, scope: object) -> None:
    """A scope must be one scope ending in /.default (the client credentials grant's form)."""
    (problem,) = problems_of({"credentials": kit.section(scope=scope)})
    assert problem.startswith(
        "contoso.yaml: credentials.scope: expected one scope ending in /.default, such as "
        "https://api.securitycenter.microsoft.com/.default, got "
    )


def test_each_entry_settles_the_top_level_section_for_its_own_origin(kit: Kit) -> None:
    """With upstreams, the top-level section is each entry's without its own, each with the
    scope of its own origin; an entry's own section (and its scope) stays its own."""
    own = kit.section(
        client_id=OTHER_APP,
        client_secret_file=None,
        federated_token_file=str(kit.token),
        scope="api://lab/.default",
    )
    upstreams = [
        {"name": "defender", "origin": "https://api.security.microsoft.com", "listen": "127.0.0.1:1"},
        {"name": "graph", "origin": "https://graph.microsoft.com", "listen": "127.0.0.1:2"},
        {"name": "lab", "origin": "http://127.0.0.1:9", "listen": "127.0.0.1:3", "credentials": own},
    ]  # fmt: skip
    loaded = settings_of({"upstreams": upstreams, "credentials": kit.section()})
    by_name = {u.name: u.credentials for u in loaded.listeners}
    assert {name: (c and (c.client_id, c.kind, c.scope)) for name, c in by_name.items()} == {
        "defender": (APP, "secret", DEFENDER_SCOPE),
        "graph": (APP, "secret", GRAPH_SCOPE),
        "lab": (OTHER_APP, "federated", "api://lab/.default"),
    }


def test_entries_without_any_section_hold_no_credentials(kit: Kit) -> None:
    """Without a top-level section, only the entry that names credentials holds them."""
    upstreams = [
        {"name": "a", "origin": "https://graph.microsoft.com", "listen": "127.0.0.1:1"},
        {
            "name": "b",
            "origin": "https://graph.microsoft.com",
            "listen": "127.0.0.1:2",
            "credentials": kit.section(),
        },
    ]
    loaded = settings_of({"upstreams": upstreams})
    assert [u.credentials is not None for u in loaded.listeners] == [False, True]
    assert loaded.credentials is None


def test_a_top_level_section_without_a_scope_names_each_entry_that_needs_one(kit: Kit) -> None:
    """The top-level section settled for two entries it cannot derive a scope for: one problem
    per entry, each naming the entry; an entry's own section is named by its own path."""
    upstreams = [
        {"name": "lab", "origin": "http://127.0.0.1:9", "listen": "127.0.0.1:1"},
        {"name": "graph", "origin": "https://graph.microsoft.com", "listen": "127.0.0.1:2"},
        {"name": "mock", "origin": "http://localhost:7", "listen": "127.0.0.1:3"},
        {
            "name": "own",
            "origin": "http://127.0.0.1:8",
            "listen": "127.0.0.1:4",
            "credentials": kit.section(),
        },
    ]
    assert problems_of({"upstreams": upstreams, "credentials": kit.section()}) == [
        "contoso.yaml: credentials.scope: required for upstreams[0] (lab), "
        f"http://127.0.0.1:9: {NO_SCOPE}",
        "contoso.yaml: credentials.scope: required for upstreams[2] (mock), "
        f"http://localhost:7: {NO_SCOPE}",
        f"contoso.yaml: upstreams[3].credentials.scope: required for http://127.0.0.1:8: {NO_SCOPE}",
    ]


# client_secret_expires


@pytest.mark.parametrize(
    ("value", "expires"),
    [
        (datetime.date(2027, 3, 1), utc(2027, 3, 1)),
        (datetime.datetime(2027, 3, 1, 12, 30), utc(2027, 3, 1, 12, 30)),
        (
            datetime.datetime(2027, 3, 1, 12, tzinfo=datetime.timezone(datetime.timedelta(hours=2))),
            utc(2027, 3, 1, 10),
        ),
        ("2027-03-01", utc(2027, 3, 1)),
        (" 2027-03-01T12:00:00+02:00 ", utc(2027, 3, 1, 10)),
        ("2027-03-01T12:00:00Z", utc(2027, 3, 1, 12)),
    ],
    ids=["date", "datetime", "datetime-offset", "string-date", "string-offset", "string-z"],
)  # fmt: skip
def test_a_secrets_end_is_read_as_a_moment(kit: Kit, value: object, expires: float) -> None:
    """client_secret_expires is a date (taken as that day begins, UTC), a date and time
    (UTC unless it says), or either written as a string."""
    credentials = held(settings_of({"credentials": kit.section(client_secret_expires=value)}))
    assert credentials.secret_expires == expires


@pytest.mark.parametrize("value", ["soon", "2027-02-30", 1803859200, True, ["2027-03-01"], ""])
def test_a_secrets_end_that_is_no_date_is_a_problem(kit: Kit, value: object) -> None:
    """A number, a list or text that is no date is a problem naming the key."""
    (problem,) = problems_of({"credentials": kit.section(client_secret_expires=value)})
    assert problem.startswith(
        "contoso.yaml: credentials.client_secret_expires: expected a date such as 2027-03-01, got "
    )


@pytest.mark.parametrize(
    ("key", "says"),
    [
        ("certificate_file", "a certificate credential says when it expires itself"),
        ("federated_token_file", "a federated credential has no end date"),
    ],
)
def test_a_secrets_end_beside_another_proof_is_a_problem(kit: Kit, key: str, says: str) -> None:
    """client_secret_expires is for a client secret only: beside a certificate or a federated
    token it is refused, saying why."""
    files = {"certificate_file": kit.certificate, "federated_token_file": kit.token}
    section = kit.section(
        client_secret_file=None, client_secret_expires="2027-03-01", **{key: str(files[key])}
    )
    assert problems_of({"credentials": section}) == [
        f"contoso.yaml: credentials.client_secret_expires: only for a client secret: {says}"
    ]


# Every problem at once, each with its key path


def test_every_problem_of_a_section_is_reported_at_once(kit: Kit) -> None:
    """A section with many problems reports them all, each under its own key path."""
    section = {
        "tenant_id": "common",
        "client_id": "not-a-guid",
        "client_secret": THE_SECRET,
        "bogus": 1,
        "authority": "http://login.microsoftonline.com",
        "client_secret_file": str(kit.secret),
        "certificate_file": str(kit.certificate),
        "scope": "graph",
    }
    assert problems_of({"credentials": section}) == [
        "contoso.yaml: credentials.client_secret: a config file does not hold secrets: write the "
        "secret to a file and name it with client_secret_file, or give it in AZURE_CLIENT_SECRET",
        f"contoso.yaml: credentials.bogus: unknown key (known: {KNOWN})",
        "contoso.yaml: credentials.tenant_id: 'common' names no one tenant; the client "
        "credentials grant needs the tenant's id (a GUID) or one of its domains",
        "contoso.yaml: credentials.client_id: expected the app registration's client_id "
        "(a GUID), got 'not-a-guid'",
        "contoso.yaml: credentials.authority: must be an https:// URL (the secret travels to "
        "it), got 'http://login.microsoftonline.com'",
        "contoso.yaml: credentials.scope: expected one scope ending in /.default, such as "
        "https://api.securitycenter.microsoft.com/.default, got 'graph'",
        f"contoso.yaml: credentials: {PROOFS} client_secret_file and certificate_file",
    ]


def test_problems_of_the_section_come_with_the_rest_of_the_file(kit: Kit) -> None:
    """A broken credentials section does not hide the file's other problems, nor they it."""
    problems = problems_of({"log_level": "loud", "credentials": kit.section(client_id=None)})
    assert problems == [
        "contoso.yaml: log_level: expected one of debug, info, warning, error, got 'loud'",
        "contoso.yaml: credentials.client_id: required: credentials need the app's client_id",
    ]


def test_an_empty_section_names_every_missing_key() -> None:
    """An empty mapping lacks the tenant, the client and a proof: three problems."""
    assert problems_of({"credentials": {}}) == [
        "contoso.yaml: credentials.tenant_id: required: credentials need the app's tenant_id",
        "contoso.yaml: credentials.client_id: required: credentials need the app's client_id",
        f"contoso.yaml: credentials: {NO_PROOF}",
    ]


def test_a_null_section_is_no_credentials() -> None:
    """``credentials:`` left empty (null) turns nothing on, as any other empty section."""
    assert settings_of(yaml.safe_load("credentials:\n")).credentials is None


@pytest.mark.parametrize("section", ["x", 5, ["tenant_id"], True])
def test_a_section_that_is_no_mapping_is_one_problem(section: object) -> None:
    """A scalar or a list where the section belongs is one problem saying what is expected."""
    (problem,) = problems_of({"credentials": section})
    assert problem.startswith(
        "contoso.yaml: credentials: expected a mapping with tenant_id, client_id and one of "
        "client_secret_file, certificate_file, federated_token_file, got a "
    )


def _all_three(kit: Kit) -> dict[str, object]:
    return {
        "client_secret_file": str(kit.secret),
        "certificate_file": str(kit.certificate),
        "federated_token_file": str(kit.token),
    }


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"tenant_id": None}, "credentials.tenant_id: required: credentials need the app's tenant_id"),
        ({"client_id": None}, "credentials.client_id: required: credentials need the app's client_id"),
        (
            {"tenant_id": "72f988bf-86f1-41af-91ab"},
            "credentials.tenant_id: expected the tenant's id (a GUID) or one of its domains "
            "(contoso.onmicrosoft.com), got '72f988bf-86f1-41af-91ab'",
        ),
        (
            {"tenant_id": 42},
            "credentials.tenant_id: expected the tenant's id (a GUID) or one of its domains "
            "(contoso.onmicrosoft.com), got 42",
        ),
        (
            {"client_id": f"{APP}x"},
            f"credentials.client_id: expected the app registration's client_id (a GUID), got '{APP}x'",
        ),
        (
            {"client_id": "contoso.onmicrosoft.com"},
            "credentials.client_id: expected the app registration's client_id (a GUID), "
            "got 'contoso.onmicrosoft.com'",
        ),
        *(
            (
                {"tenant_id": name},
                f"credentials.tenant_id: {name.strip()!r} names no one tenant; the client "
                "credentials grant needs the tenant's id (a GUID) or one of its domains",
            )
            for name in ("common", "Organizations", " consumers ")
        ),
        ({"client_secret_file": None}, f"credentials: {NO_PROOF}"),
        (
            {"client_secret": "x"},
            "credentials.client_secret: a config file does not hold secrets: write the secret "
            "to a file and name it with client_secret_file, or give it in AZURE_CLIENT_SECRET",
        ),
        ({"tenant": TENANT}, f"credentials.tenant: unknown key (known: {KNOWN})"),
        (
            {"authority": "http://login.microsoftonline.com"},
            "credentials.authority: must be an https:// URL (the secret travels to it), "
            "got 'http://login.microsoftonline.com'",
        ),
        (
            {"authority": "https://login.microsoftonline.com/contoso.onmicrosoft.com"},
            "credentials.authority: must be an origin without a path, "
            "got path '/contoso.onmicrosoft.com'",
        ),
        (
            {"authority": "https://admin:hunter2@login.microsoftonline.com"},
            "credentials.authority: must not carry credentials; the proxy never sends its own",
        ),
        (
            {"authority": "https://login.microsoftonline.com?tenant=x"},
            "credentials.authority: must not have a query or fragment, "
            "got 'https://login.microsoftonline.com?tenant=x'",
        ),
        (
            {"client_secret_file": ""},
            "credentials.client_secret_file: expected a file path, got ''",
        ),
        (
            {"client_secret_file": ["/a"]},
            "credentials.client_secret_file: expected a file path, got a list of 1 items",
        ),
    ],
)  # fmt: skip
def test_each_problem_has_its_own_text(kit: Kit, changes: dict[str, object], problem: str) -> None:
    """Each broken key of an otherwise valid section is one problem, at its path, saying
    what is expected."""
    assert problems_of({"credentials": kit.section(**changes)}) == [f"contoso.yaml: {problem}"]


@pytest.mark.parametrize(
    ("keys", "named"),
    [
        (("client_secret_file", "certificate_file"), "client_secret_file and certificate_file"),
        (("client_secret_file", "federated_token_file"), "client_secret_file and federated_token_file"),
        (
            ("client_secret_file", "certificate_file", "federated_token_file"),
            "client_secret_file and certificate_file and federated_token_file",
        ),
    ],
)  # fmt: skip
def test_two_proofs_are_one_problem_naming_both(
    kit: Kit, keys: tuple[str, ...], named: str
) -> None:
    """More than one of the three proof keys is one problem naming each one given."""
    files = _all_three(kit)
    section = {**kit.section(client_secret_file=None), **{key: files[key] for key in keys}}
    assert problems_of({"credentials": section}) == [f"contoso.yaml: credentials: {PROOFS} {named}"]


# The files


@dataclass(frozen=True)
class Broken:
    """A file a credentials key names that cannot be used, and what the problem says of it."""

    name: str
    key: str
    says: str

    def make(self, kit: Kit) -> Path:
        """Create the broken file under ``kit.root``; its path."""
        path = kit.root / self.name
        if self.name == "missing":
            return path
        if self.name == "fifo":
            os.mkfifo(path)
        elif self.name == "directory":
            path.mkdir()
        elif self.name == "loop":
            path.symlink_to(path)
        elif self.name == "under-a-file":
            return kit.secret / "x"
        elif self.name == "oversize":
            path.write_bytes(b"a" * (64 * 1024 + 1))
        elif self.name == "empty":
            path.write_text(" \n\t\n", encoding="utf-8")
        elif self.name == "two-lines":
            path.write_text(f"{THE_SECRET}\n{THE_SECRET}2\n", encoding="utf-8")
        elif self.name == "control":
            path.write_text(f"{THE_SECRET}\x07", encoding="utf-8")
        elif self.name == "latin-1":
            path.write_bytes(f"{THE_SECRET}\xe9".encode("latin-1"))
        elif self.name == "certificate-alone":
            return kit.certificate_alone
        elif self.name == "mismatched":
            return kit.mismatched
        elif self.name == "key-alone":
            pem = kit.certificate.read_bytes()
            path.write_bytes(pem.split(b"-----BEGIN CERTIFICATE")[0])
        elif self.name == "encrypted":
            _write_encrypted(kit.certificate, path)
        elif self.name == "ec-key":
            leaf = trustme.CA().issue_cert("app.example")  # trustme's default: ECDSA
            path.write_bytes(leaf.private_key_and_cert_chain_pem.bytes())
        else:  # pragma: no cover - a name without its file is a mistake in the table
            raise AssertionError(self.name)
        return path


def _write_encrypted(source: Path, path: Path) -> None:
    """The key and certificate of ``source`` to ``path``, the key encrypted with a password."""
    pem = source.read_bytes()
    key = serialization.load_pem_private_key(pem, password=None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase"),
    )
    path.write_bytes(
        encrypted + b"-----BEGIN CERTIFICATE" + pem.split(b"-----BEGIN CERTIFICATE", 1)[1]
    )


SECRET_FILES = [
    Broken("missing", "client_secret_file", "cannot read {path}: No such file or directory"),
    Broken("under-a-file", "client_secret_file", "cannot read {path}: Not a directory"),
    Broken("loop", "client_secret_file", "cannot read {path}: Too many levels of symbolic links"),
    Broken("fifo", "client_secret_file", "{path} is not a regular file"),
    Broken("directory", "client_secret_file", "{path} is not a regular file"),
    Broken("oversize", "client_secret_file", "{path} is over the limit of 64 KiB"),
    Broken("empty", "client_secret_file", "{path} is empty"),
    Broken("two-lines", "client_secret_file", "{path} holds more than one line or unprintable characters"),
    Broken("control", "client_secret_file", "{path} holds more than one line or unprintable characters"),
    Broken("latin-1", "client_secret_file", "{path} is not UTF-8 text"),
    Broken("missing", "federated_token_file", "cannot read {path}: No such file or directory"),
    Broken("directory", "federated_token_file", "{path} is not a regular file"),
    Broken("empty", "federated_token_file", "{path} is empty"),
    Broken("missing", "certificate_file", "cannot read {path}: No such file or directory"),
    Broken("fifo", "certificate_file", "{path} is not a regular file"),
    Broken("oversize", "certificate_file", "{path} is over the limit of 64 KiB"),
    Broken("certificate-alone", "certificate_file", "{path} holds no PEM private key; expected the key and the certificate in one file"),
    Broken("key-alone", "certificate_file", "{path} holds no PEM certificate; expected the app's certificate and its private key"),
    Broken("encrypted", "certificate_file", "{path}: the private key is encrypted; give it unencrypted (the file's mode protects it, as for a client secret)"),
    Broken("ec-key", "certificate_file", "{path}: the key is not an RSA key; Entra ID client assertions are signed with RSA"),
    Broken("mismatched", "certificate_file", "{path}: no certificate in it matches its private key"),
]  # fmt: skip


@pytest.mark.parametrize("broken", SECRET_FILES, ids=lambda b: f"{b.key}-{b.name}")
def test_a_file_that_cannot_be_used_is_a_problem_naming_the_file(kit: Kit, broken: Broken) -> None:
    """A missing, unreadable, FIFO, directory, oversize, empty, many-line or otherwise unusable
    file is one problem at its key, naming the file and saying why, at load (no FIFO blocks)."""
    path = broken.make(kit)
    section = kit.with_proof(broken.key, str(path))
    says = broken.says.format(path=repr(str(path)))
    assert problems_of({"credentials": section}) == [
        f"contoso.yaml: credentials.{broken.key}: {says}"
    ]


@pytest.mark.parametrize("broken", SECRET_FILES, ids=lambda b: f"{b.key}-{b.name}")
def test_a_broken_file_leaves_no_descriptor_open(kit: Kit, broken: Broken) -> None:
    """Checking a file that cannot be used closes what it opened (a reload checks them again)."""
    path = broken.make(kit)
    section = kit.with_proof(broken.key, str(path))
    before = set(os.listdir("/proc/self/fd"))
    problems_of({"credentials": section})
    assert set(os.listdir("/proc/self/fd")) <= before


def test_a_secret_file_behind_a_symlink_is_read(kit: Kit) -> None:
    """A mounted Secret is a symlink (kubelet's ..data): the file it points to is the one read."""
    link = kit.root / "linked-secret"
    link.symlink_to(kit.secret)
    credentials = held(settings_of({"credentials": kit.section(client_secret_file=str(link))}))
    assert credentials.file == str(link)


def test_the_contents_of_a_broken_secret_file_are_never_shown(kit: Kit) -> None:
    """A secret file refused for holding two lines names the file, never what it holds."""
    path = Broken("two-lines", "client_secret_file", "").make(kit)
    problems = problems_of({"credentials": kit.section(client_secret_file=str(path))})
    assert problems
    assert THE_SECRET[:6] not in "\n".join(problems)


# The AZURE_* variables


@pytest.mark.parametrize(
    ("variable", "value", "attribute", "expected"),
    [
        ("AZURE_TENANT_ID", "contoso.onmicrosoft.com", "tenant_id", "contoso.onmicrosoft.com"),
        ("AZURE_CLIENT_ID", OTHER_APP, "client_id", OTHER_APP),
        ("AZURE_AUTHORITY_HOST", "https://login.microsoftonline.us", "authority", "https://login.microsoftonline.us"),
        ("AZURE_AUTHORITY_HOST", "login.microsoftonline.us", "authority", "https://login.microsoftonline.us"),
        ("AZURE_AUTHORITY_HOST", "https://login.microsoftonline.us/", "authority", "https://login.microsoftonline.us"),
        ("AZURE_AUTHORITY_HOST", " login.chinacloudapi.cn/ ", "authority", "https://login.chinacloudapi.cn"),
    ],
    ids=["tenant", "client", "authority-url", "authority-host", "authority-slash", "authority-blanks"],
)  # fmt: skip
def test_a_variable_fills_its_key_over_the_file(
    kit: Kit, variable: str, value: str, attribute: str, expected: str
) -> None:
    """Each AZURE_* variable sets its key of the top-level section, over the file's value."""
    section = kit.section(authority="https://login.microsoftonline.com")
    credentials = held(settings_of({"credentials": section}, {variable: value}))
    assert getattr(credentials, attribute) == expected


@pytest.mark.parametrize(
    ("variable", "kind"),
    [("AZURE_CLIENT_CERTIFICATE_PATH", "certificate"), ("AZURE_FEDERATED_TOKEN_FILE", "federated")],
)
def test_a_proof_variable_fills_the_proof(kit: Kit, variable: str, kind: str) -> None:
    """AZURE_CLIENT_CERTIFICATE_PATH and AZURE_FEDERATED_TOKEN_FILE give the proof of a
    section that names none."""
    path = {"certificate": kit.certificate, "federated": kit.token}[kind]
    section = kit.section(client_secret_file=None)
    credentials = held(settings_of({"credentials": section}, {variable: str(path)}))
    assert (credentials.kind, credentials.file) == (kind, str(path))


def test_the_variables_alone_give_credentials(kit: Kit) -> None:
    """Without a section in the file, the workload identity webhook's four variables are the
    whole section."""
    environ = {
        "AZURE_TENANT_ID": TENANT,
        "AZURE_CLIENT_ID": APP,
        "AZURE_FEDERATED_TOKEN_FILE": str(kit.token),
        "AZURE_AUTHORITY_HOST": "https://login.microsoftonline.com/",
    }
    credentials = held(settings_of(None, environ))
    assert credentials == Credentials(
        TENANT,
        APP,
        "federated",
        str(kit.token),
        authority="https://login.microsoftonline.com",
        scope=DEFENDER_SCOPE,
    )


@pytest.mark.parametrize(
    ("origin", "authority"),
    [
        ("https://api.securitycenter.microsoft.com", "https://login.microsoftonline.com"),
        ("https://api-gcc.securitycenter.microsoft.us", "https://login.microsoftonline.com"),
        ("https://api-gov.securitycenter.microsoft.us", "https://login.microsoftonline.us"),
        ("https://api-gov.security.microsoft.us", "https://login.microsoftonline.us"),
        ("https://graph.microsoft.us", "https://login.microsoftonline.us"),
        ("https://dod-graph.microsoft.us", "https://login.microsoftonline.us"),
        ("https://graph.microsoft.com", "https://login.microsoftonline.com"),
    ],
)
def test_the_authority_follows_the_upstreams_cloud(kit: Kit, origin: str, authority: str) -> None:
    """Without ``authority``, GCC High and DoD hosts sign in at login.microsoftonline.us, GCC
    and the commercial cloud at login.microsoftonline.com; a given authority is kept."""
    section = kit.section()
    assert held(settings_of({"upstream": origin, "credentials": section})).authority == authority
    given = kit.section(authority="https://login.example.test")
    kept = held(settings_of({"upstream": origin, "credentials": given}))
    assert kept.authority == "https://login.example.test"


def test_the_client_secret_variable_is_the_secret_itself() -> None:
    """AZURE_CLIENT_SECRET gives a secret credential with no file, holding the value (its
    surrounding blanks trimmed), which its repr never shows."""
    environ = {
        "AZURE_TENANT_ID": TENANT,
        "AZURE_CLIENT_ID": APP,
        "AZURE_CLIENT_SECRET": f" {THE_SECRET}\n",
    }
    loaded = settings_of(None, environ)
    credentials = held(loaded)
    assert (credentials.kind, credentials.file, credentials.secret) == ("secret", None, THE_SECRET)
    assert THE_SECRET not in repr(loaded)
    assert THE_SECRET not in repr(loaded.listeners)


@pytest.mark.parametrize(
    "environ",
    [
        {"AZURE_CLIENT_ID": APP},
        {"AZURE_CLIENT_ID": APP, "AZURE_TENANT_ID": TENANT},
        {"AZURE_CLIENT_ID": APP, "AZURE_TENANT_ID": TENANT, "AZURE_AUTHORITY_HOST": "x"},
        {"AZURE_CLIENT_SECRET": "", "AZURE_CLIENT_ID": APP, "AZURE_TENANT_ID": TENANT},
        {"AZURE_FEDERATED_TOKEN_FILE": "  ", "AZURE_CLIENT_ID": APP},
    ],
    ids=["client-id", "client-and-tenant", "with-authority", "empty-secret", "blank-token-file"],
)
def test_variables_without_a_proof_turn_nothing_on(environ: dict[str, str]) -> None:
    """AZURE_CLIENT_ID (and its companions) without a proof, or a proof variable left empty,
    is no credentials: many pods carry these for other reasons."""
    loaded = settings_of(None, environ)
    assert loaded.credentials is None
    assert [u.credentials for u in loaded.listeners] == [None]


def test_a_proof_variable_beside_the_files_proof_is_one_problem_naming_both(kit: Kit) -> None:
    """A client_secret_file in the file and AZURE_FEDERATED_TOKEN_FILE from the webhook are two
    proofs: one problem naming the key and the variable."""
    environ = {"AZURE_FEDERATED_TOKEN_FILE": str(kit.token)}
    assert problems_of({"credentials": kit.section()}, environ) == [
        f"contoso.yaml: credentials: {PROOFS} client_secret_file and AZURE_FEDERATED_TOKEN_FILE"
    ]


def test_the_secret_variable_beside_a_secret_file_is_one_problem_naming_both(kit: Kit) -> None:
    """AZURE_CLIENT_SECRET beside a client_secret_file is two proofs, named without the value."""
    environ = {"AZURE_CLIENT_SECRET": THE_SECRET}
    problems = problems_of({"credentials": kit.section()}, environ)
    assert problems == [
        f"contoso.yaml: credentials: {PROOFS} AZURE_CLIENT_SECRET and client_secret_file"
    ]


def test_two_proof_variables_are_one_problem_naming_both(kit: Kit) -> None:
    """AZURE_CLIENT_CERTIFICATE_PATH and AZURE_FEDERATED_TOKEN_FILE together name both."""
    environ = {
        "AZURE_TENANT_ID": TENANT,
        "AZURE_CLIENT_ID": APP,
        "AZURE_CLIENT_CERTIFICATE_PATH": str(kit.certificate),
        "AZURE_FEDERATED_TOKEN_FILE": str(kit.token),
    }
    assert problems_of(None, environ) == [
        f"AZURE_* variables: credentials: {PROOFS} "
        "AZURE_CLIENT_CERTIFICATE_PATH and AZURE_FEDERATED_TOKEN_FILE"
    ]


@pytest.mark.parametrize(
    ("variable", "value", "problem"),
    [
        (
            "AZURE_TENANT_ID",
            "common",
            "'common' names no one tenant; the client credentials grant needs the tenant's id "
            "(a GUID) or one of its domains",
        ),
        (
            "AZURE_CLIENT_ID",
            "my-app",
            "expected the app registration's client_id (a GUID), got 'my-app'",
        ),
        (
            "AZURE_AUTHORITY_HOST",
            "http://login.microsoftonline.com",
            "must be an https:// URL (the secret travels to it), got 'http://login.microsoftonline.com'",
        ),
        (
            "AZURE_AUTHORITY_HOST",
            "https://login.microsoftonline.com/tenant",
            "must be an origin without a path, got path '/tenant'",
        ),
        (
            "AZURE_FEDERATED_TOKEN_FILE",
            "/var/run/secrets/azure/tokens/absent",
            "cannot read '/var/run/secrets/azure/tokens/absent': No such file or directory",
        ),
    ],
)  # fmt: skip
def test_a_problem_with_a_variables_value_names_the_variable(
    kit: Kit, variable: str, value: str, problem: str
) -> None:
    """A bad value from an AZURE_* variable is reported under the variable's name, as a
    DEFENDER_PROXY_* variable's is, whether the file has a section or not."""
    with_file = {"credentials": kit.section(client_secret_file=None)}
    environ = {"AZURE_CLIENT_CERTIFICATE_PATH": str(kit.certificate), variable: value}
    if variable == "AZURE_FEDERATED_TOKEN_FILE":
        environ.pop("AZURE_CLIENT_CERTIFICATE_PATH")
    assert problems_of(with_file, environ) == [f"{variable}: {problem}"]
    alone = {"AZURE_TENANT_ID": TENANT, "AZURE_CLIENT_ID": APP, **environ}
    assert problems_of(None, alone) == [f"{variable}: {problem}"]


def test_a_section_of_variables_alone_names_its_missing_keys() -> None:
    """AZURE_CLIENT_SECRET without the tenant and client: the problems say the section came
    from the AZURE_* variables, never the secret."""
    problems = problems_of(None, {"AZURE_CLIENT_SECRET": THE_SECRET})
    assert problems == [
        "AZURE_* variables: credentials.tenant_id: required: credentials need the app's tenant_id",
        "AZURE_* variables: credentials.client_id: required: credentials need the app's client_id",
    ]


# Who may reach a listener that holds credentials


@pytest.mark.parametrize(
    "listen", ["0.0.0.0:8080", "10.1.2.3:8080", "[::]:8080", "proxy.contoso.example:8080"]
)
@pytest.mark.parametrize("allow_from", [None, ["0.0.0.0/0"], ["::/0"], ["10.0.0.0/8", "::/0"]])
def test_credentials_beyond_loopback_without_a_restriction_are_refused(
    kit: Kit, listen: str, allow_from: list[str] | None
) -> None:
    """A listener others can reach holds credentials only when allow_from restricts callers:
    no allow_from, or one spanning every address, is one problem naming the port and the app."""
    data: dict[str, Any] = {"listen": listen, "credentials": kit.section()}
    if allow_from is not None:
        data["allow_from"] = allow_from
    assert problems_of(data) == [
        f"contoso.yaml: credentials: the proxy port {listen} (default) can be reached from beyond "
        f"this host, and every caller that reaches it acts as app {APP}: restrict callers with "
        "allow_from (e.g. [10.1.0.0/16]) or listen on 127.0.0.1"
    ]  # fmt: skip


@pytest.mark.parametrize(
    "listen", ["0.0.0.0:8080", "10.1.2.3:8080", "[::]:8080", "proxy.contoso.example:8080"]
)
@pytest.mark.parametrize(
    "allow_from", [["10.0.0.0/8"], ["10.1.0.0/16", "fd00::/8"], ["127.0.0.1/32"]]
)
def test_credentials_beyond_loopback_with_a_restriction_are_accepted(
    kit: Kit, listen: str, allow_from: list[str]
) -> None:
    """allow_from naming networks (none spanning every address) lets any listener hold them."""
    loaded = settings_of({"listen": listen, "allow_from": allow_from, "credentials": kit.section()})
    assert held(loaded).client_id == APP  # fmt: skip


@pytest.mark.parametrize(
    "listen", ["127.0.0.1:8080", "127.0.0.2:8080", "[::1]:8080", "localhost:8080"]
)
def test_credentials_on_loopback_need_no_restriction(kit: Kit, listen: str) -> None:
    """A loopback listener (a sidecar's) holds credentials without allow_from."""
    assert held(settings_of({"listen": listen, "credentials": kit.section()})).client_id == APP  # fmt: skip


def test_the_loopback_rule_names_each_entry_and_the_section_it_holds(kit: Kit) -> None:
    """With upstreams, each reachable entry that holds credentials is one problem, under the
    section it holds (its own, or the top-level one) and naming the entry; a reachable entry
    without credentials, and a loopback one with them, are no problem."""
    own = kit.section(client_id=OTHER_APP)
    upstreams: list[dict[str, object]] = [
        {"name": "side", "origin": "https://graph.microsoft.com", "listen": "127.0.0.1:1"},
        {"name": "wide", "origin": "https://graph.microsoft.com", "listen": "0.0.0.0:2"},
        {"name": "mine", "origin": "https://graph.microsoft.com", "listen": "[::]:3", "credentials": own},
    ]  # fmt: skip
    assert problems_of({"upstreams": upstreams, "credentials": kit.section()}) == [
        "contoso.yaml: credentials: the proxy port 0.0.0.0:2 (wide) can be reached from beyond "
        f"this host, and every caller that reaches it acts as app {APP}: restrict callers with "
        "allow_from (e.g. [10.1.0.0/16]) or listen on 127.0.0.1",
        "contoso.yaml: upstreams[2].credentials: the proxy port [::]:3 (mine) can be reached "
        f"from beyond this host, and every caller that reaches it acts as app {OTHER_APP}: "
        "restrict callers with allow_from (e.g. [10.1.0.0/16]) or listen on 127.0.0.1",
    ]
    alone = [{**upstreams[0], "credentials": own}, upstreams[1]]
    assert [u.credentials for u in settings_of({"upstreams": alone}).listeners][1:] == [None]


def test_the_loopback_rule_names_the_listen_variable_as_the_listener(kit: Kit) -> None:
    """DEFENDER_PROXY_LISTEN moving the listener beyond loopback is refused beside credentials."""
    problems = problems_of({"credentials": kit.section()}, {"DEFENDER_PROXY_LISTEN": "0.0.0.0:9"})
    assert [problem.split(" can be")[0] for problem in problems] == [
        "contoso.yaml: credentials: the proxy port 0.0.0.0:9 (default)"
    ]


@pytest.mark.parametrize("own", [False, True], ids=["top-level", "entry"])
def test_credentials_with_tls_verify_false_are_refused(kit: Kit, own: bool) -> None:
    """tls.verify false beside any credentials is one problem at tls.verify: the secret would
    go to an authority whose certificate is not checked."""
    data: dict[str, Any] = {"tls": {"verify": False}}
    if own:
        entry = {"name": "a", "origin": "https://graph.microsoft.com", "listen": "127.0.0.1:1"}
        data["upstreams"] = [{**entry, "credentials": kit.section()}]
    else:
        data["credentials"] = kit.section()
    assert problems_of(data) == [
        "contoso.yaml: tls.verify: false, but credentials are given: the app's secret would go to "
        "an authority whose certificate is not checked; trust a private CA with tls.ca_bundle "
        "instead"
    ]


# Secrets never shown


MARK = "sEcr3T"


def _texts(data: object, environ: dict[str, str]) -> str:
    """Everything validation says of ``data``: its problems, or the settings' repr."""
    try:
        loaded = settings_of(data, environ)
    except ConfigError as error:
        return "\n".join([str(error), *error.problems])
    return "\n".join([repr(loaded), repr(loaded.listeners), str(loaded.listeners)])


breakage = st.fixed_dictionaries(
    {},
    optional={
        "tenant_id": st.sampled_from(["common", "x", None]),
        "client_id": st.sampled_from(["not-a-guid", None]),
        "authority": st.sampled_from(["http://login.example", "https://login.example/x"]),
        "client_secret": st.just("inline"),
        "certificate_file": st.just("/nonexistent/cert.pem"),
        "scope": st.just("no-default"),
    },
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    text=st.text(st.characters(exclude_categories=["Cs"]), max_size=60),
    via_variable=st.booleans(),
    broken=breakage,
    listen=st.sampled_from(["127.0.0.1:8080", "0.0.0.0:8080"]),
)
def test_no_secret_reaches_a_problem_or_a_repr(
    shared_kit: Kit, text: str, via_variable: bool, broken: dict[str, object], listen: str
) -> None:
    """Any text as the secret, in its file or in AZURE_CLIENT_SECRET, with any other problems
    beside it: no problem text and no repr of the settings holds any of it."""
    secret = f"{MARK}{text}{MARK}"
    with tempfile.TemporaryDirectory() as directory:
        section, environ = _holding_secret(shared_kit, secret, via_variable, broken, directory)
        said = _texts({"listen": listen, "credentials": section}, environ)
    assert MARK not in said


def _holding_secret(
    kit: Kit, secret: str, via_variable: bool, broken: dict[str, object], directory: str
) -> tuple[dict[str, object], dict[str, str]]:
    """A section (with ``broken`` over it) and environment that give ``secret``: in a file in
    ``directory``, or in AZURE_CLIENT_SECRET when ``via_variable``."""
    path = Path(directory) / "client-secret"
    path.write_text(secret, encoding="utf-8")
    section = kit.section(client_secret_file=str(path), **broken)
    environ: dict[str, str] = {}
    if via_variable:
        section.pop("client_secret_file")
        environ["AZURE_CLIENT_SECRET"] = secret
    return section, environ


def check_config(text: str, environ: dict[str, str]) -> tuple[int, str]:
    """``defender-proxy check-config`` in-process on ``text`` with ``environ`` over the
    AZURE_* and DEFENDER_PROXY_* variables: its exit code and all it printed."""
    out = io.StringIO()
    kept = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("AZURE_", "DEFENDER_PROXY_", "OTEL_"))
    }
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "contoso.yaml")
        with open(path, "w", encoding="utf-8") as file:
            file.write(text)
        with (
            mock.patch.dict(os.environ, {**kept, **environ}, clear=True),
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(out),
        ):
            code = cli.main(["check-config", path])
    return code, out.getvalue().replace(path, "contoso.yaml")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    text=st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\0"), max_size=40),
    via_variable=st.booleans(),
    broken=breakage,
)
def test_no_secret_reaches_check_configs_output(
    shared_kit: Kit, text: str, via_variable: bool, broken: dict[str, object]
) -> None:
    """check-config, accepting or refusing, prints nothing of the secret, from a file or from
    AZURE_CLIENT_SECRET."""
    secret = f"{MARK}{text}{MARK}"
    with tempfile.TemporaryDirectory() as directory:
        section, environ = _holding_secret(shared_kit, secret, via_variable, broken, directory)
        code, printed = check_config(yaml.safe_dump({"credentials": section}), environ)
    assert code in (0, 2)
    assert MARK not in printed


# No value makes validation raise anything but ConfigError


def _dates() -> st.SearchStrategy[object]:
    offsets = st.integers(-23 * 60, 23 * 60).map(
        lambda minutes: datetime.timezone(datetime.timedelta(minutes=minutes))
    )
    far = datetime.timezone(datetime.timedelta(hours=-23))
    return st.one_of(
        st.sampled_from(
            [
                "0001-01-01T00:00:00+05:00",
                "9999-12-31T23:59:59-05:00",
                datetime.datetime(9999, 12, 31, 12, tzinfo=far),
                datetime.datetime.min,
                datetime.date.max,
            ]
        ),
        st.dates(),
        st.datetimes(),
        st.datetimes(timezones=offsets),
    )


def _values(kit: Kit) -> st.SearchStrategy[object]:
    files = [str(path) for path in (kit.secret, kit.certificate, kit.token, kit.mismatched)]
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(),
        st.text(max_size=30),
        st.sampled_from(
            [
                *files,
                str(kit.root),
                "/dev/null",
                "/proc/self/mem",
                "\0",
                "",
                "common",
                TENANT,
                APP,
                f"{APP}\n",
                "login.microsoftonline.us",
                "https://user:pw@login.example",
                "https://login.example:99999",
                "https://[::1",
                "api://x/.default",
                "x" * 5000 + "/.default",
                10**400,
            ]
        ),
        _dates(),
    )
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
        max_leaves=5,
    )  # fmt: skip


KEYS = [*KNOWN.split(", "), "client_secret", "bogus"]


@st.composite
def documents(draw: st.DrawFn, kit: Kit) -> tuple[dict[str, object], dict[str, str]]:
    """A document with a credentials section (top-level, in an entry, or both): a valid one
    with some keys dropped or given arbitrary values (or something else than a mapping), and
    AZURE_* variables over it."""
    values = _values(kit)
    proofs = {
        "client_secret_file": kit.secret,
        "certificate_file": kit.certificate,
        "federated_token_file": kit.token,
    }

    def section() -> object:
        if draw(st.integers(0, 9)) == 0:
            return draw(values)  # not a mapping at all
        proof = draw(st.sampled_from(sorted(proofs)))
        drawn: dict[str, object] = {
            "tenant_id": TENANT,
            "client_id": APP,
            proof: str(proofs[proof]),
        }
        if proof == "client_secret_file" and draw(st.booleans()):
            drawn["client_secret_expires"] = draw(_dates())
        for key in draw(st.lists(st.sampled_from(KEYS), max_size=3, unique=True)):
            if draw(st.booleans()):
                drawn.pop(key, None)
            else:
                drawn[key] = draw(values)
        return drawn

    document: dict[str, object] = {}
    if draw(st.booleans()):
        document["credentials"] = section()
    if draw(st.booleans()):
        entry: dict[str, object] = {
            "name": "a",
            "origin": draw(st.sampled_from(["https://graph.microsoft.com", "http://127.0.0.1:9"])),
            "listen": draw(st.sampled_from(["127.0.0.1:1", "0.0.0.0:1", "[::]:1"])),
        }
        if draw(st.booleans()):
            entry["credentials"] = section()
        document["upstreams"] = [entry]
    else:
        document["listen"] = draw(st.sampled_from(["127.0.0.1:8080", "0.0.0.0:8080"]))
    if draw(st.booleans()):
        document["allow_from"] = draw(st.sampled_from([["0.0.0.0/0"], ["10.0.0.0/8"], ["::/0"]]))
    if draw(st.booleans()):
        document["tls"] = {"verify": draw(st.booleans())}
    fitting = {
        "AZURE_TENANT_ID": TENANT,
        "AZURE_CLIENT_ID": APP,
        "AZURE_CLIENT_SECRET": "a-secret",
        "AZURE_CLIENT_CERTIFICATE_PATH": str(kit.certificate),
        "AZURE_FEDERATED_TOKEN_FILE": str(kit.token),
        "AZURE_AUTHORITY_HOST": "login.microsoftonline.us/",
    }
    environ: dict[str, str] = {}
    for name in draw(st.lists(st.sampled_from(AZURE), max_size=3, unique=True)):
        environ[name] = fitting[name] if draw(st.booleans()) else draw(st.text(max_size=20))
    return document, environ


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_no_section_makes_validation_raise_anything_but_config_error(
    shared_kit: Kit, data: st.DataObject
) -> None:
    """Any credentials section, anywhere, with any AZURE_* variables: settings or a
    ConfigError, and check-config's description of any credentials accepted never raises."""
    document, environ = data.draw(documents(shared_kit))
    try:
        loaded = settings_of(document, environ)
    except ConfigError as error:
        problems = error.problems
    else:
        problems = []
    assert all(isinstance(problem, str) and problem for problem in problems)
    if problems:
        return
    for upstream in loaded.listeners:
        if upstream.credentials is not None:
            assert upstream.credentials.scope is not None
            assert describe(upstream.credentials, 0.0)


# What check-config says of the credentials


def test_check_config_describes_the_shorthands_credentials(kit: Kit) -> None:
    """check-config prints a line on the credential: the app, its tenant, the kind of proof
    and its file, its end, the scope and the authority; never the secret."""
    section = kit.section(client_secret_expires="2999-03-01")
    code, printed = check_config(yaml.safe_dump({"credentials": section}), {})
    assert code == 0
    assert printed.splitlines()[1] == (
        f"  credentials: app {APP} of tenant {TENANT}, client secret in {str(kit.secret)!r} "
        f"(expires 2999-03-01 00:00 UTC), scope {DEFENDER_SCOPE}, "
        "authority https://login.microsoftonline.com"
    )
    assert THE_SECRET not in printed


def test_check_config_describes_each_upstreams_credentials(kit: Kit) -> None:
    """With upstreams, check-config prints one credentials line per entry that holds some,
    with that entry's own scope, after the table of entries."""
    upstreams = [
        {"name": "defender", "origin": "https://api.security.microsoft.com", "listen": "127.0.0.1:1"},
        {"name": "graph", "origin": "https://graph.microsoft.com", "listen": "127.0.0.1:2"},
    ]  # fmt: skip
    section = kit.section(client_secret_file=None, certificate_file=str(kit.certificate))
    document = {"upstreams": upstreams, "credentials": section}
    code, printed = check_config(yaml.safe_dump(document), {})
    assert code == 0
    ends = datetime.datetime.fromtimestamp(not_after(kit.certificate), datetime.UTC)
    proof = f"certificate in {str(kit.certificate)!r} (expires {ends:%Y-%m-%d %H:%M} UTC)"
    assert printed.splitlines()[4:] == [
        f"  credentials of {name}: app {APP} of tenant {TENANT}, {proof}, scope {scope}, "
        "authority https://login.microsoftonline.com"
        for name, scope in (("defender", DEFENDER_SCOPE), ("graph", GRAPH_SCOPE))
    ]


def test_check_config_names_the_secret_variable_never_its_value(kit: Kit) -> None:
    """A secret from AZURE_CLIENT_SECRET is described by the variable's name alone."""
    environ = {"AZURE_TENANT_ID": TENANT, "AZURE_CLIENT_ID": APP, "AZURE_CLIENT_SECRET": THE_SECRET}
    code, printed = check_config("log_level: info\n", environ)
    assert code == 0
    assert printed.splitlines()[1] == (
        f"  credentials: app {APP} of tenant {TENANT}, client secret from AZURE_CLIENT_SECRET, "
        f"scope {DEFENDER_SCOPE}, authority https://login.microsoftonline.com"
    )
    assert THE_SECRET not in printed


def test_check_config_without_credentials_prints_no_credentials_line() -> None:
    """A config without credentials prints the one ok line, as before."""
    code, printed = check_config("log_level: info\n", {})
    assert (code, len(printed.splitlines())) == (0, 1)


def test_check_config_refuses_credentials_beyond_loopback(kit: Kit) -> None:
    """check-config exits 2 on credentials on 0.0.0.0 without allow_from, naming the rule."""
    document = {"listen": "0.0.0.0:8080", "credentials": kit.section()}
    code, printed = check_config(yaml.safe_dump(document), {})
    assert code == 2
    assert printed.startswith("contoso.yaml: credentials: the proxy port 0.0.0.0:8080 (default)")


@pytest.mark.parametrize(
    ("expires", "now", "says"),
    [
        (utc(2027, 3, 1), utc(2026, 1, 1), "(expires 2027-03-01 00:00 UTC)"),
        (utc(2027, 3, 1), utc(2027, 3, 1), "(expired 2027-03-01 00:00 UTC)"),
        (utc(2020, 1, 1, 8, 5), utc(2026, 1, 1), "(expired 2020-01-01 08:05 UTC)"),
        (253402318799.0, 0.0, "(expires Unix time 253402318799)"),
    ],
    ids=["ahead", "at-the-moment", "past", "past-year-9999"],
)
def test_a_description_says_whether_the_credential_has_expired(
    expires: float, now: float, says: str
) -> None:
    """The credential's end reads as expires or expired against the moment given; one past
    what a date can show (9999-12-31 with a negative offset) by its Unix time."""
    credentials = Credentials(
        TENANT, APP, "secret", "/s", scope=DEFENDER_SCOPE, secret_expires=expires
    )
    assert f"'/s' {says}, scope" in describe(credentials, now)  # fmt: skip
