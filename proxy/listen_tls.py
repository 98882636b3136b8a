"""HTTPS on the proxy port: the certificate and key a listener serves (``listen_tls``), the
server-side TLS context made from them, and their rotation in place.

``load`` reads a pair and makes the context every listener serves with: TLS 1.2 at least, ALPN
``http/1.1`` only (the port speaks nothing else), no compression, no renegotiation, Python's
cipher defaults (forward-secret AEAD suites first). ``parse_listen_tls`` validates the config's
``{cert, key}`` with the same ``load``, so ``check-config`` reports exactly what ``run`` would
refuse; each problem names its key and file, never a byte of what the file holds.

``ServerTls`` is one listener's TLS. The socket keeps the context it was given at start; that
context's SNI callback, which OpenSSL runs for every ClientHello (with or without a server name),
hands the handshake the context of the newest pair. So a new pair serves every new handshake
while each connection already open keeps the context it began with: nothing is dropped.
(Loading the new pair into the one live context instead is what OpenSSL also applies to new
handshakes only, but a pair that fails half-way — a new certificate, then a key that does not
load — leaves that context unable to complete any handshake: "no shared cipher".)

Rotation: cert-manager renews the Secret and the kubelet swaps the mounted files through a
``..data`` symlink; other tools write the files in place. Every ``POLL_INTERVAL`` seconds both
paths are stat'ed (through the symlinks: device, inode, size, mtime). On a change the pair is
loaded again; a pair that does not load — half written, a key that does not match — is logged as
a warning and counted ``failed``, and the old pair keeps serving until the files change again.

The seam for a configuration reload: ``ServerTls.use(ListenTls(...))`` switches a listener to
other files (it loads them at once; on failure the old files and pair stay, and it returns
False), ``ServerTls.reload()`` reads the current files again now. Neither ever stops a socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final

from proxy.logs import get_logger
from proxy.throttle_config import NestedValueError
from proxy.units import PATH_CHARACTERS, shown, shown_key

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

    from proxy.metrics import Metrics

__all__ = [
    "POLL_INTERVAL",
    "ListenTls",
    "PairError",
    "Served",
    "ServerTls",
    "load",
    "parse_listen_tls",
]

#: Seconds between two looks at the files. The kubelet refreshes a Secret volume about once a
#: minute, and two stat calls per listener cost next to nothing.
POLL_INTERVAL: Final = 2.0
#: A PEM file larger than this is not a certificate chain or a key.
MAX_PEM_BYTES: Final = 1 << 20
_KEYS: Final = ("cert", "key")


@dataclass(frozen=True, slots=True)
class ListenTls:
    """The PEM files a listener serves HTTPS with: a certificate chain (leaf first) and its key."""

    cert: str
    key: str


@dataclass(frozen=True, slots=True)
class Served:
    """A loaded pair: the context that serves it and what its leaf certificate says."""

    context: ssl.SSLContext
    subject: str
    #: the leaf's serial number, in hex
    serial: str
    not_after: datetime


class PairError(ValueError):
    """A pair that cannot be served: ``problems`` holds (config key, message) for each of
    ``cert`` and ``key`` at fault."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{key}: {text}" for key, text in problems))
        self.problems = problems

    @classmethod
    def of(cls, key: str, message: str) -> PairError:
        """One problem, with ``key``."""
        return cls([(key, message)])


def _path(path: str) -> str:
    return shown(path, PATH_CHARACTERS)


def _read(path: str, key: str) -> bytes:
    if not os.path.isfile(path):
        raise PairError.of(key, f"no such file: {_path(path)}")
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_PEM_BYTES + 1)
    except OSError as error:
        raise PairError.of(key, f"cannot read {_path(path)}: {error.strerror or error}") from None
    if len(data) > MAX_PEM_BYTES:
        raise PairError.of(key, f"{_path(path)} is larger than 1MiB: not a PEM file")
    return data


def _refuse_password() -> str:
    raise PairError.of("key", "the key is encrypted")


def _context(files: ListenTls) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    context.set_alpn_protocols(["http/1.1"])
    # A password callback that refuses: without one OpenSSL would prompt on the terminal.
    context.load_cert_chain(files.cert, files.key, password=_refuse_password)
    return context


def _leaf(path: str) -> x509.Certificate:
    """The first certificate of the chain at ``path``."""
    from cryptography import x509

    pem = _read(path, "cert")
    try:
        return x509.load_pem_x509_certificates(pem)[0]
    except ValueError:
        no_pem = "holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
        raise PairError.of("cert", f"{_path(path)} {no_pem}") from None


def _private_key(path: str) -> PrivateKeyTypes:
    """The private key at ``path``, unencrypted."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    pem = _read(path, "key")
    try:
        return serialization.load_pem_private_key(pem, password=None)
    except TypeError:  # cryptography's word for a key that needs a password
        raise PairError.of("key", f"{_path(path)} is encrypted: give the key unencrypted") from None
    except (ValueError, UnsupportedAlgorithm):
        raise PairError.of("key", f"{_path(path)} holds no PEM private key") from None


def _check(files: Mapping[str, str]) -> tuple[x509.Certificate | None, PrivateKeyTypes | None]:
    """The leaf and key of whichever of ``cert`` and ``key`` are given; raises ``PairError``
    with a problem for each at fault."""
    problems: list[tuple[str, str]] = []
    leaf = private = None
    try:
        leaf = _leaf(files["cert"]) if "cert" in files else None
    except PairError as error:
        problems += error.problems
    try:
        private = _private_key(files["key"]) if "key" in files else None
    except PairError as error:
        problems += error.problems
    if problems:
        raise PairError(problems)
    return leaf, private


def load(files: ListenTls) -> Served:
    """Read and check ``files`` and make the context that serves them; raises ``PairError``."""
    from cryptography.hazmat.primitives import serialization

    leaf, private = _check({"cert": files.cert, "key": files.key})
    assert leaf is not None
    assert private is not None
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    pem = serialization.Encoding.PEM
    if leaf.public_key().public_bytes(pem, spki) != private.public_key().public_bytes(pem, spki):
        raise PairError.of(
            "key",
            f"the key in {_path(files.key)} does not match the certificate in "
            f"{_path(files.cert)} (the chain's first certificate)",
        )
    try:
        context = _context(files)
    except (ssl.SSLError, OSError) as error:
        # Files that changed between the two reads, or a key type OpenSSL will not serve.
        reason = getattr(error, "reason", None) or getattr(error, "strerror", None) or "refused"
        raise PairError.of("cert", f"OpenSSL cannot serve {_path(files.cert)}: {reason}") from None
    return Served(
        context,
        leaf.subject.rfc4514_string(),
        format(leaf.serial_number, "x"),
        leaf.not_valid_after_utc,
    )


def parse_listen_tls(value: object) -> ListenTls:
    """``listen_tls: {cert, key}``: both required, both readable, a pair that loads. Problems
    below the key are raised as ``NestedValueError`` (paths ``.cert``, ``.key``)."""
    if not isinstance(value, Mapping):
        raise ValueError(
            f"expected a mapping such as {{cert: /etc/tls/tls.crt, key: /etc/tls/tls.key}}, "
            f"got a {type(value).__name__}"
        )
    problems = [
        (f".{shown_key(key)}", "unknown key (known: cert, key)")
        for key in value
        if key not in _KEYS
    ]
    paths: dict[str, str] = {}
    for key in _KEYS:
        raw = value.get(key)
        if raw is None:
            problems.append((f".{key}", "required: listen_tls needs both cert and key"))
        elif not isinstance(raw, str) or not raw or "\0" in raw:
            problems.append((f".{key}", f"expected a file path, got {shown(raw)}"))
        else:
            paths[key] = raw
    try:
        if len(paths) == len(_KEYS):
            load(ListenTls(paths["cert"], paths["key"]))
        else:
            _check(paths)
    except PairError as error:
        problems += [(f".{key}", text) for key, text in error.problems]
    if problems:
        raise NestedValueError(problems)
    return ListenTls(paths["cert"], paths["key"])


_Signature = tuple[tuple[int, ...], ...]


def _signature(files: ListenTls) -> _Signature:
    """What changes when either file is replaced or rewritten; stat follows the symlinks."""
    marks: list[tuple[int, ...]] = []
    for path in (files.cert, files.key):
        try:
            stat = os.stat(path)
        except OSError as error:
            marks.append((-1, error.errno or 0))
        else:
            marks.append((stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns))
    return tuple(marks)


class ServerTls:
    """One listener's HTTPS: ``context`` for its socket, the pair served now, and the watch on
    the files that reloads it (``start``, ``close``)."""

    def __init__(
        self,
        listener: str,
        files: ListenTls,
        metrics: Metrics | None = None,
        interval: float = POLL_INTERVAL,
    ) -> None:
        self.listener = listener
        self._files = files
        self._signature = _signature(files)
        self._metrics = metrics
        self._interval = interval
        self._log = get_logger("tls")
        self._task: asyncio.Task[None] | None = None
        served = load(files)
        served.context.sni_callback = self._handshake
        self._served = served
        #: what the listening socket holds, for its whole life
        self.context = served.context
        if metrics is not None:
            for result in ("ok", "failed"):
                metrics.listen_tls_reloads.labels(listener, result)
        self._observe(served)
        if served.not_after <= datetime.now(UTC):
            self._log.warning(
                "listen_tls certificate has expired",
                listener=listener,
                subject=served.subject,
                not_after=served.not_after.isoformat(),
            )

    @property
    def files(self) -> ListenTls:
        """The files served and watched."""
        return self._files

    @property
    def served(self) -> Served:
        """The pair new handshakes get."""
        return self._served

    def _handshake(
        self, ssl_object: ssl.SSLObject | ssl.SSLSocket, _name: str | None, _: ssl.SSLContext
    ) -> None:
        ssl_object.context = self._served.context

    def _observe(self, served: Served) -> None:
        if self._metrics is not None:
            gauge = self._metrics.listen_tls_expiry.labels(self.listener)
            gauge.set(served.not_after.timestamp())

    def _count(self, result: str) -> None:
        if self._metrics is not None:
            self._metrics.listen_tls_reloads.labels(self.listener, result).inc()

    def _load(self, files: ListenTls) -> bool:
        try:
            served = load(files)
        except PairError as error:
            self._count("failed")
            self._log.warning(
                "listen_tls reload failed: the certificate loaded before keeps serving",
                listener=self.listener,
                problems=[f"listen_tls.{key}: {text}" for key, text in error.problems],
                subject=self._served.subject,
                not_after=self._served.not_after.isoformat(),
            )
            return False
        served.context.sni_callback = self._handshake
        self._served = served
        self._count("ok")
        self._observe(served)
        self._log.info(
            "listen_tls reloaded",
            listener=self.listener,
            subject=served.subject,
            serial=served.serial,
            not_after=served.not_after.isoformat(),
        )
        return True

    def reload(self) -> bool:
        """Read the current files again now; whether a new pair serves from now on."""
        self._signature = _signature(self._files)
        return self._load(self._files)

    def use(self, files: ListenTls) -> bool:
        """Serve and watch ``files`` from now on; on a pair that does not load, keep the old
        files and pair and return False."""
        signature = _signature(files)
        if not self._load(files):
            return False
        self._files, self._signature = files, signature
        return True

    def check(self) -> bool | None:
        """Reload if either file changed since the last look: None when neither did, else
        whether the new pair serves."""
        signature = _signature(self._files)
        if signature == self._signature:
            return None
        # Taken before reading: a write that lands during the load is seen at the next look.
        self._signature = signature
        return self._load(self._files)

    def start(self) -> None:
        """Watch the files from now on, in a task of the running loop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._watch())

    async def close(self) -> None:
        """Stop watching; the context stays usable for what is still open."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                self.check()
            except Exception:  # never let the watch die: the next look tries again
                self._log.exception("listen_tls check failed", listener=self.listener)
