"""The identity provider's throwaway TLS pair: what is written, with which modes, what the
certificates say, a handshake through them (in memory), and the errors of a directory that
cannot hold them."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from proxy.simulator.directory import Directory
from proxy.simulator.identity import IdpSite, tls_context
from proxy.simulator.idp_tls import LIFETIME, TlsPair, TlsPairError, write_pair

NOW = datetime.datetime(2026, 3, 1, 12, 0, tzinfo=datetime.UTC)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _certificate(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _handshake(pair: TlsPair, trusted: Path, name: str) -> None:
    """A TLS handshake, in memory, between the provider's server context serving ``pair`` and a
    default client context trusting ``trusted`` that asks for ``name``; raises as the client
    does."""
    server_context = tls_context(IdpSite(0, str(pair.cert), str(pair.key), Directory(())))
    client_context = ssl.create_default_context(cafile=str(trusted))
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_context.wrap_bio(to_client, to_server, server_hostname=name)
    server = server_context.wrap_bio(to_server, to_client, server_side=True)
    pending = {"client", "server"}
    for _ in range(10):
        for side, end in (("client", client), ("server", server)):
            try:
                end.do_handshake()
            except ssl.SSLWantReadError:
                continue
            pending.discard(side)
        if not pending:
            return
    raise AssertionError(f"the handshake did not finish: {sorted(pending)} still waiting")


def test_the_pair_is_written_with_the_key_for_its_owner_alone(tmp_path: Path) -> None:
    """write_pair creates a missing directory (0700) and writes ca.pem, idp.crt (0644) and
    idp.key (0600), and nothing else: the CA's own key is not kept."""
    root = tmp_path / "made" / "here"
    pair = write_pair(root)
    assert (pair.ca, pair.cert, pair.key) == (root / "ca.pem", root / "idp.crt", root / "idp.key")
    assert sorted(path.name for path in root.iterdir()) == ["ca.pem", "idp.crt", "idp.key"]
    assert _mode(root) == 0o700
    assert _mode(pair.key) == 0o600
    assert _mode(pair.cert) == 0o644
    assert _mode(pair.ca) == 0o644


def test_the_leaf_is_for_the_loopback_signed_by_the_ca_and_valid_for_a_day(tmp_path: Path) -> None:
    """The leaf names localhost, 127.0.0.1 and ::1, is a server certificate signed by the CA,
    matches idp.key, and both are valid from shortly before the given moment for LIFETIME."""
    pair = write_pair(tmp_path, now=NOW)
    ca, leaf = _certificate(pair.ca), _certificate(pair.cert)
    leaf.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    assert names.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    usage = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]
    for certificate in (ca, leaf):
        assert certificate.not_valid_after_utc == NOW + LIFETIME
        assert NOW - datetime.timedelta(hours=1) < certificate.not_valid_before_utc < NOW
    assert pair.not_after == NOW + LIFETIME
    key = serialization.load_pem_private_key(pair.key.read_bytes(), password=None)
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert key.public_key().public_bytes(*spki) == leaf.public_key().public_bytes(*spki)


@pytest.mark.parametrize("name", ["127.0.0.1", "localhost", "::1"])
def test_a_client_trusting_ca_pem_accepts_the_served_leaf(tmp_path: Path, name: str) -> None:
    """A default client context with cafile=ca.pem completes the handshake for each loopback name."""
    pair = write_pair(tmp_path)
    _handshake(pair, pair.ca, name)


def test_the_leaf_is_refused_for_another_name_another_ca_or_past_its_day(tmp_path: Path) -> None:
    """The check is real: another host name, a CA of another pair, or a pair made more than a
    day ago fails verification."""
    pair = write_pair(tmp_path / "one")
    other = write_pair(tmp_path / "two")
    with pytest.raises(ssl.SSLCertVerificationError, match="match"):
        _handshake(pair, pair.ca, "example.com")
    with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"):
        _handshake(pair, other.ca, "127.0.0.1")
    old = write_pair(tmp_path / "old", now=datetime.datetime.now(datetime.UTC) - 2 * LIFETIME)
    with pytest.raises(ssl.SSLCertVerificationError, match="expired"):
        _handshake(old, old.ca, "127.0.0.1")


def test_writing_again_replaces_the_pair_and_restores_the_key_mode(tmp_path: Path) -> None:
    """A second write_pair into the same directory leaves a new CA and leaf, the key 0600 again
    even when it had been opened up, and no temporary file."""
    first = write_pair(tmp_path)
    first.key.chmod(0o644)
    serial = _certificate(first.ca).serial_number
    second = write_pair(tmp_path)
    assert _certificate(second.ca).serial_number != serial
    _certificate(second.cert).verify_directly_issued_by(_certificate(second.ca))
    assert _mode(second.key) == 0o600
    assert sorted(path.name for path in tmp_path.iterdir()) == ["ca.pem", "idp.crt", "idp.key"]


def test_a_directory_that_cannot_be_made_is_named_with_the_reason(tmp_path: Path) -> None:
    """A directory below a regular file: TlsPairError naming the directory and why."""
    blocker = tmp_path / "file"
    blocker.write_text("not a directory\n")
    with pytest.raises(TlsPairError, match=r"file/tls: cannot create the directory: Not a dir"):
        write_pair(blocker / "tls")


def test_a_file_that_cannot_be_written_is_named_and_leaves_no_temporary(tmp_path: Path) -> None:
    """ca.pem taken by a directory: TlsPairError naming ca.pem and why, and the temporary file
    it was to replace it with is removed."""
    (tmp_path / "ca.pem").mkdir()
    with pytest.raises(TlsPairError, match=r"cannot write ca\.pem: Is a directory"):
        write_pair(tmp_path)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["ca.pem", "idp.crt", "idp.key"]
