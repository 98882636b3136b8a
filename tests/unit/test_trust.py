"""The system's trust store from its hashed directory, where it holds the bundle's certificates."""

from __future__ import annotations

import asyncio
import os
import shutil
import ssl
import subprocess
from pathlib import Path

import pytest
import trustme

from proxy import trust
from proxy.config import Settings
from proxy.forward import tls_context


def _store(root: Path, bundle: list[trustme.CA], directory: list[trustme.CA]) -> tuple[str, str]:
    """A bundle file of ``bundle``'s certificates and a directory of ``directory``'s, hashed by
    ``openssl rehash`` as ``update-ca-certificates`` does."""
    root.mkdir()
    cafile = root / "ca-certificates.crt"
    cafile.write_bytes(b"".join(ca.cert_pem.bytes() for ca in bundle))
    capath = root / "certs"
    capath.mkdir()
    for number, ca in enumerate(directory):
        (capath / f"ca-{number}.pem").write_bytes(ca.cert_pem.bytes())
    openssl = shutil.which("openssl")
    assert openssl is not None, "the tests need openssl (apt-get install openssl)"
    subprocess.run([openssl, "rehash", str(capath)], check=True, capture_output=True)
    return str(cafile), str(capath)


async def _handshake(context: ssl.SSLContext, ca: trustme.CA) -> None:
    """A TLS handshake with a server on 127.0.0.1 whose certificate ``ca`` issued."""
    server_side = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(server_side)

    async def answer(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=server_side)
    port = server.sockets[0].getsockname()[1]
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
        writer.close()
    finally:
        server.close()
        await server.wait_closed()


def test_the_directory_stands_in_when_it_holds_the_bundles_certificates(tmp_path: Path) -> None:
    """A directory with the bundle's certificates, and no others, is the one used."""
    first, second = trustme.CA(), trustme.CA()
    cafile, capath = _store(tmp_path / "store", [first, second], [second, first])
    assert trust.directory_for(cafile, capath) == capath


@pytest.mark.parametrize("extra", ["bundle", "directory"])
def test_a_certificate_in_one_place_only_keeps_the_bundle(tmp_path: Path, extra: str) -> None:
    """A CA appended to the bundle, or one in the directory alone, keeps the bundle."""
    common, more = trustme.CA(), trustme.CA()
    bundle = [common, more] if extra == "bundle" else [common]
    directory = [common, more] if extra == "directory" else [common]
    cafile, capath = _store(tmp_path / "store", bundle, directory)
    assert trust.directory_for(cafile, capath) is None


def test_line_width_does_not_matter(tmp_path: Path) -> None:
    """The same certificate wrapped at another width, in the bundle, is the same certificate."""
    ca = trustme.CA()
    cafile, capath = _store(tmp_path / "store", [ca], [ca])
    text = ssl.DER_cert_to_PEM_cert(ssl.PEM_cert_to_DER_cert(ca.cert_pem.bytes().decode()))
    body = "".join(text.splitlines()[1:-1])
    rewrapped = "\r\n".join(body[i : i + 76] for i in range(0, len(body), 76))
    Path(cafile).write_text(
        f"# a comment\n{text.splitlines()[0]}\r\n{rewrapped}\r\n{text.splitlines()[-1]}\n"
    )
    assert trust.directory_for(cafile, capath) == capath


@pytest.mark.parametrize(
    "block",
    [
        b"-----BEGIN TRUSTED CERTIFICATE-----\nAAAA\n-----END TRUSTED CERTIFICATE-----\n",
        b"-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n",
        b"-----BEGIN CERTIFICATE-----\nAAAA\n",
    ],
    ids=["trusted-certificate", "crl", "unterminated"],
)
def test_anything_but_certificates_in_the_bundle_keeps_it(tmp_path: Path, block: bytes) -> None:
    """OpenSSL's trust settings, a CRL or a block without its end in the bundle keeps the
    bundle: the directory would not say the same."""
    ca = trustme.CA()
    cafile, capath = _store(tmp_path / "store", [ca], [ca])
    with open(cafile, "ab") as bundle:
        bundle.write(block)
    assert trust.directory_for(cafile, capath) is None


def test_nothing_to_compare_keeps_the_bundle(tmp_path: Path) -> None:
    """No bundle, no directory, a directory without hashed entries, a hashed entry that does not
    read, or an empty bundle: None."""
    ca = trustme.CA()
    cafile, capath = _store(tmp_path / "store", [ca], [ca])
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "ca.pem").write_bytes(ca.cert_pem.bytes())
    empty = tmp_path / "empty.crt"
    empty.write_bytes(b"")
    assert trust.directory_for(None, capath) is None
    assert trust.directory_for(cafile, None) is None
    assert trust.directory_for(str(tmp_path / "missing.crt"), capath) is None
    assert trust.directory_for(cafile, str(tmp_path / "missing")) is None
    assert trust.directory_for(cafile, str(bare)) is None
    assert trust.directory_for(str(empty), capath) is None
    (Path(capath) / "0badc0de.0").symlink_to(tmp_path / "gone.pem")
    assert trust.directory_for(cafile, capath) is None


def test_an_entry_openssl_would_not_read_keeps_the_bundle(tmp_path: Path) -> None:
    """A certificate OpenSSL would never read (``<hash>.2`` with no ``<hash>.1``, or
    ``<hash>.00``) keeps the bundle; numbered ``.0`` again, the directory is used."""
    ca, moved = trustme.CA(), trustme.CA()
    cafile, capath = _store(tmp_path / "store", [ca, moved], [ca, moved])
    (entry,) = [
        link
        for link in Path(capath).iterdir()
        if link.suffix == ".0" and link.resolve().read_bytes() == moved.cert_pem.bytes()
    ]
    for unread in (".2", ".00"):
        entry.rename(entry.with_suffix(unread))
        assert trust.directory_for(cafile, capath) is None, unread
        entry.with_suffix(unread).rename(entry)
    assert trust.directory_for(cafile, capath) == capath


@pytest.mark.parametrize("entry", ["fifo", "device", "oversized"])
def test_an_entry_that_is_not_a_small_file_is_never_read(tmp_path: Path, entry: str) -> None:
    """A FIFO, a device or an oversized file named like a hashed entry keeps the bundle, and the
    check returns (a FIFO with no writer would block an open, a device never ends)."""
    ca = trustme.CA()
    cafile, capath = _store(tmp_path / "store", [ca], [ca])
    named = Path(capath) / "0badc0de.0"
    if entry == "fifo":
        os.mkfifo(named)
    elif entry == "device":
        named.symlink_to("/dev/zero")
    else:
        named.write_bytes(ca.cert_pem.bytes() + b"\n" * trust._MAX_FILE)
    assert trust.directory_for(cafile, capath) is None


async def test_the_upstream_context_reads_a_ca_when_a_handshake_needs_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no ca_bundle the upstream's context holds no CA until a handshake, then only the
    one that signed the server, and verifies as the bundle would."""
    used, other = trustme.CA(), trustme.CA()
    cafile, capath = _store(tmp_path / "store", [used, other], [used, other])
    monkeypatch.setenv("SSL_CERT_FILE", cafile)
    monkeypatch.setenv("SSL_CERT_DIR", capath)
    context = tls_context(Settings())
    assert context.cert_store_stats()["x509_ca"] == 0
    await _handshake(context, used)
    assert context.cert_store_stats()["x509_ca"] == 1
    with pytest.raises(ssl.SSLCertVerificationError):
        await _handshake(context, trustme.CA())


async def test_a_bundle_that_differs_is_loaded_whole_and_trusted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CA only the bundle holds (appended to it by hand) is trusted, as it was before."""
    common, appended = trustme.CA(), trustme.CA()
    cafile, capath = _store(tmp_path / "store", [common, appended], [common])
    monkeypatch.setenv("SSL_CERT_FILE", cafile)
    monkeypatch.setenv("SSL_CERT_DIR", capath)
    context = tls_context(Settings())
    assert context.cert_store_stats()["x509_ca"] == 2
    await _handshake(context, appended)
