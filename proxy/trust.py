"""The certificates the upstream's TLS is verified against when no ``tls.ca_bundle`` is set.

``ssl.create_default_context()`` loads the system's bundle file whole: OpenSSL parses every CA
in it (142 to 144 on Debian 12) into the context and keeps them, 0.8 MiB of a process that idles at
under 50, for the one or two a Microsoft endpoint's chain is signed by. The same trust store is
also a hashed directory (``/etc/ssl/certs``, ``<subject hash>.<n>`` links kept by
``update-ca-certificates``), from which OpenSSL reads a CA the first time a handshake needs it
and keeps only that one.

The directory stands in for the bundle only where it holds the very same certificates: every
certificate of the bundle and of the directory's hashed entries is compared, as two sets, once
at start (~10 ms for Debian's). A bundle someone appended a CA to, a custom
``SSL_CERT_FILE``, a directory without hash links (Red Hat's layout) or anything unreadable
keeps the bundle, loaded as before: the trust the upstream is verified against is the same,
only read later. One difference: a CA added to or removed from the directory after start
(``update-ca-certificates`` in a running container) counts from the next handshake that looks
for it, where a bundle read at start is what the process trusts until it restarts.
"""

from __future__ import annotations

import hashlib
import os
import re
import ssl
import stat
from typing import Final

#: An entry OpenSSL's directory lookup reads: the subject's hash, a dot, a sequence number as
#: ``%d`` prints it (CRLs, ``<hash>.r<n>``, are not certificates, and ``<hash>.00`` is never
#: read: both are left out).
_HASHED: Final = re.compile(r"[0-9a-f]{8}\.(0|[1-9][0-9]*)")
_BEGIN: Final = b"-----BEGIN CERTIFICATE-----"
_END: Final = b"-----END CERTIFICATE-----"
#: A bundle or an entry past this size keeps the bundle (Debian's bundle: some 140 CAs, 220 KB).
_MAX_FILE: Final = 16 * 1024 * 1024


def _certificates(pem: bytes) -> set[bytes] | None:
    """A digest of each certificate in ``pem`` (of its base64 text without line breaks); None if
    it holds anything else (a ``TRUSTED CERTIFICATE`` with OpenSSL's trust settings, a CRL, a
    key) or a block without its end."""
    # Digests of the text, not the decoded DER: one certificate wrapped at another width is the
    # same text here, and two spellings of one DER (never made by a real encoder) only keep the
    # bundle. Block by block, so what the check leaves behind in the heap stays small.
    if pem.count(b"-----BEGIN ") != pem.count(_BEGIN):
        return None
    found: set[bytes] = set()
    start = pem.find(_BEGIN)
    while start >= 0:
        end = pem.find(_END, start)
        if end < 0:
            return None
        found.add(hashlib.sha256(b"".join(pem[start + len(_BEGIN) : end].split())).digest())
        start = pem.find(_BEGIN, end)
    return found


def _read(path: str) -> bytes | None:
    """The bytes of ``path`` if it is a regular file (a link is followed) of at most ``_MAX_FILE``
    bytes: a FIFO or a device named like a certificate never blocks or floods the start."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return None
        with open(path, "rb") as file:
            data = file.read(_MAX_FILE + 1)
    except OSError:
        return None
    return data if len(data) <= _MAX_FILE else None


def _contiguous(names: list[str]) -> bool:
    """Whether the entries of each subject hash are numbered 0, 1, 2… without a gap: OpenSSL
    reads ``<hash>.0``, ``.1``… until one is missing, and would never see an entry past a gap."""
    numbers: dict[str, set[int]] = {}
    for name in names:
        prefix, _, number = name.partition(".")
        numbers.setdefault(prefix, set()).add(int(number))
    return all(taken == set(range(len(taken))) for taken in numbers.values())


def directory_for(cafile: str | None, capath: str | None) -> str | None:
    """``capath`` when its hashed entries hold exactly the certificates of ``cafile`` (so
    verifying against the directory is verifying against the bundle), else None."""
    if cafile is None or capath is None:
        return None
    try:
        with os.scandir(capath) as entries:
            names = [entry.name for entry in entries if _HASHED.fullmatch(entry.name)]
    except OSError:
        return None
    if not names or not _contiguous(names):
        return None
    bundle = _read(cafile)
    wanted = _certificates(bundle) if bundle is not None else None
    if not wanted:
        return None
    held: set[bytes] = set()
    for name in names:
        pem = _read(os.path.join(capath, name))
        certificates = _certificates(pem) if pem is not None else None
        if not certificates:
            return None
        held |= certificates
    return capath if held == wanted else None


def system_context() -> ssl.SSLContext:
    """``ssl.create_default_context()`` for verifying servers against the system's CAs, on the
    hashed directory where it holds the same certificates as the bundle (see above)."""
    paths = ssl.get_default_verify_paths()
    directory = directory_for(paths.cafile, paths.capath)
    if directory is None:
        return ssl.create_default_context()
    return ssl.create_default_context(capath=directory)


def verifying(ca_bundle: str | None) -> ssl.SSLContext:
    """A context that verifies servers against ``ca_bundle`` (a PEM file, in place of the
    system's CAs) when one is given, else against the system's CAs (``system_context``)."""
    if ca_bundle is None:
        return system_context()
    return ssl.create_default_context(cafile=ca_bundle)
