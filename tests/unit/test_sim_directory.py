"""The stand-in identity provider's directory file: apps and credentials, every problem at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.simulator.directory import DEFAULT_LIFETIME, DirectoryError, load_directory
from tests.idpkit import APP, SECRET, TENANT, write_files


def test_a_directory_file_lists_apps_and_their_credentials(tmp_path: Path) -> None:
    """Tenant, client id, roles, secrets (one expired), a certificate and a federated credential
    are read; paths are relative to the file; the token lifetime defaults to Entra's 3599 s."""
    write_files(tmp_path)
    (tmp_path / "issuer.pem").write_bytes((tmp_path / "app.crt").read_bytes())
    path = tmp_path / "apps.yaml"
    path.write_text(
        f"""
apps:
  - tenant: {TENANT}
    client_id: {APP}
    roles: [Machine.Read.All]
    secrets:
      - value: {SECRET}
      - {{value: old, expired: true}}
    certificates: [app.crt]
    federated:
      - {{issuer: "https://issuer.example", subject: "system:serviceaccount:a:b", key: issuer.pem}}
""",
        encoding="utf-8",
    )
    directory = load_directory(path)
    app = directory.app(TENANT.upper(), APP)
    assert app is not None
    assert app.roles == ("Machine.Read.All",)
    assert [secret.expired for secret in app.secrets] == [False, True]
    assert len(app.certificates[0].sha256) == 32
    assert app.federated[0].audience == "api://AzureADTokenExchange"
    assert directory.token_lifetime == DEFAULT_LIFETIME
    assert directory.app(TENANT, "someone-else") is None


def test_every_problem_is_reported_with_its_key(tmp_path: Path) -> None:
    """Unknown keys, missing values, wrong types, unreadable files and a lifetime out of bounds
    are all reported together, each with its key."""
    (tmp_path / "not-a-cert.pem").write_text("hello", encoding="utf-8")
    path = tmp_path / "apps.yaml"
    path.write_text(
        """
token_lifetime: 2
colour: blue
apps:
  - client_id: x
    secrets: [{value: s, expired: maybe, note: 1}]
    certificates: [missing.pem, not-a-cert.pem]
    federated: [{issuer: i, subject: s, key: not-a-cert.pem}]
    roles: nope
""",
        encoding="utf-8",
    )
    with pytest.raises(DirectoryError) as caught:
        load_directory(path)
    keys = [problem.split(": ")[1] for problem in caught.value.problems]
    assert keys == [
        "colour",
        "token_lifetime",
        "apps[0].roles",
        "apps[0].secrets[0].note",
        "apps[0].secrets[0].expired",
        "apps[0].certificates[0]",
        "apps[0].certificates[1]",
        "apps[0].federated[0].key",
        "apps[0].tenant",
    ]


def test_an_unreadable_file_is_one_problem(tmp_path: Path) -> None:
    """A missing file, or YAML that does not parse, is reported as the file's one problem."""
    with pytest.raises(DirectoryError, match="cannot be read"):
        load_directory(tmp_path / "absent.yaml")
    (tmp_path / "bad.yaml").write_text("apps: [", encoding="utf-8")
    with pytest.raises(DirectoryError, match="cannot be read"):
        load_directory(tmp_path / "bad.yaml")
