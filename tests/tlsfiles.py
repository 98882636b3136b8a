"""Certificates for HTTPS on the proxy port in tests: a trustme CA, the leaves it issues, and a
directory laid out as the kubelet mounts a Secret volume, rotated as the kubelet rotates it.

The kubelet writes each version of a Secret into a directory of its own (``..2024_05_01_…``),
points the symlink ``..data`` at it, and exposes ``tls.crt`` and ``tls.key`` as symlinks through
``..data``; a new version is a new directory and one atomic rename of a new ``..data`` link over
the old, after which the old directory is removed. A path read at any moment names a whole pair.
"""

from __future__ import annotations

import itertools
import os
import shutil
from pathlib import Path

import trustme
from cryptography import x509

from proxy.listen_tls import ListenTls

_VERSIONS = itertools.count(1)


def issue(ca: trustme.CA, name: str = "gateway") -> trustme.LeafCert:
    """A leaf for 127.0.0.1 and ``localhost``, with ``name`` as its common name."""
    return ca.issue_cert("127.0.0.1", "localhost", common_name=name)


def serial(leaf: trustme.LeafCert) -> int:
    """The serial number of ``leaf``'s certificate."""
    return x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes()).serial_number


def der_serial(der: bytes) -> int:
    """The serial number of a DER certificate, as a TLS peer sent it."""
    return x509.load_der_x509_certificate(der).serial_number


class SecretDir:
    """A directory holding ``tls.crt`` and ``tls.key`` the way a Secret volume does."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root

    @property
    def files(self) -> ListenTls:
        """The two paths a config names."""
        return ListenTls(str(self.root / "tls.crt"), str(self.root / "tls.key"))

    def put(self, leaf: trustme.LeafCert) -> None:
        """Publish ``leaf``'s chain and key as the kubelet does: a new version directory, then one
        rename of ``..data``."""
        self.publish(
            {
                "tls.crt": b"".join(pem.bytes() for pem in leaf.cert_chain_pems),
                "tls.key": leaf.private_key_pem.bytes(),
            }
        )

    def publish(self, contents: dict[str, bytes]) -> None:
        """Publish files by name, as the kubelet does: a new version directory, then one rename
        of ``..data``; each name is a symlink through ``..data``."""
        version = self.root / f"..version_{next(_VERSIONS)}"
        version.mkdir()
        for name, content in contents.items():
            (version / name).write_bytes(content)
        data = self.root / "..data"
        old = os.readlink(data) if data.is_symlink() else None
        staged = self.root / "..data_tmp"
        os.symlink(version.name, staged)
        os.replace(staged, data)
        for name in contents:
            link = self.root / name
            if not link.is_symlink():
                os.symlink(f"..data/{name}", link)
        if old is not None:
            shutil.rmtree(self.root / old)

    def overwrite(self, name: str, content: bytes) -> None:
        """Write one file of the pair in place, as a tool that is not the kubelet might."""
        (self.root / name).write_bytes(content)
