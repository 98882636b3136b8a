"""The connect seam: how a ``Connection`` gets its transport.

A connector is an async callable that attaches a transport to a fresh ``Connection`` (calls its
``connection_made``) or raises a ``ConnectError`` / ``ConnectTimeout``. The pool takes one, so the
HTTP/1.1 state machine runs unchanged over an in-memory transport in the tests.
``TCPConnector``, the one the proxy uses, resolves the name, connects to each address in turn,
then does the TLS handshake as a step of its own, so a failure says which phase it was in.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Final, TypeAlias

from proxy.upstream.connection import Connection
from proxy.upstream.errors import (
    CertificateVerifyFailed,
    ConnectError,
    ConnectRefused,
    ConnectTimeout,
    NameResolution,
    TLSError,
    WrongProtocol,
)

#: Attaches a transport to the connection, or raises ``ConnectError`` / ``ConnectTimeout``.
Connector: TypeAlias = Callable[[Connection], Awaitable[None]]

# OpenSSL's reasons when the bytes that came back are not a TLS record at all (a plain HTTP
# server answering the ClientHello with "HTTP/1.1 400", say), across OpenSSL 1.1 to 3.x.
_NOT_TLS: Final = frozenset(
    {"WRONG_VERSION_NUMBER", "UNKNOWN_PROTOCOL", "PACKET_LENGTH_TOO_LONG", "RECORD_LAYER_FAILURE",
     "HTTP_REQUEST", "UNEXPECTED_MESSAGE"}
)  # fmt: skip


class TCPConnector:
    """Connections to ``host``:``port`` over TCP, and TLS when given a context."""

    def __init__(
        self, host: str, port: int, ssl_context: ssl.SSLContext | None, timeout: float
    ) -> None:
        self.host = host
        self.port = port
        self._ssl = ssl_context
        #: seconds for the name, TCP and TLS together (a reload may change it between connects)
        self.timeout = timeout

    async def __call__(self, conn: Connection) -> None:
        """Connect ``conn``: name, TCP, TLS, all within the one connect timeout."""
        loop = asyncio.get_running_loop()
        phase = "connecting"
        transport: asyncio.Transport | None = None
        try:
            async with asyncio.timeout(self.timeout):
                transport = await self._tcp(loop, conn)
                if self._ssl is not None:
                    phase = "in the TLS handshake"
                    tls = await self._tls(loop, transport, conn, self._ssl)
                    conn.connection_made(tls)
        except TimeoutError:
            if transport is not None:
                transport.abort()
            raise ConnectTimeout(f"timed out {phase} ({self.timeout:g}s)") from None
        except BaseException:
            if transport is not None:
                transport.abort()
            raise

    async def _tcp(self, loop: asyncio.AbstractEventLoop, conn: Connection) -> asyncio.Transport:
        try:
            infos = await loop.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise NameResolution(
                f"name resolution failed for {self.host}: {exc.strerror}"
            ) from None
        refused: list[str] = []
        other: list[str] = []
        for _, _, _, _, address in infos:
            ip, port = str(address[0]), int(address[1])
            where = f"{ip}:{port}"
            try:
                transport, _ = await loop.create_connection(lambda: conn, ip, port)
            except ConnectionRefusedError:
                refused.append(where)
            except OSError as exc:
                other.append(f"{where}: {exc.strerror or type(exc).__name__}")
            else:
                return transport
        if other:
            raise ConnectError("could not connect to " + ", ".join(other + refused))
        raise ConnectRefused("connection refused by " + ", ".join(refused))

    async def _tls(
        self,
        loop: asyncio.AbstractEventLoop,
        transport: asyncio.BaseTransport,
        conn: Connection,
        context: ssl.SSLContext,
    ) -> asyncio.BaseTransport:
        try:
            tls = await loop.start_tls(
                transport,  # type: ignore[arg-type]
                conn,
                context,
                server_hostname=self.host,
            )
        except ssl.SSLCertVerificationError as exc:
            raise CertificateVerifyFailed(
                f"certificate verify failed: {exc.verify_message or exc.reason}"
            ) from None
        except ssl.SSLError as exc:
            reason = exc.reason or type(exc).__name__
            if reason in _NOT_TLS:
                raise WrongProtocol(
                    f"the upstream did not answer in TLS ({reason.lower().replace('_', ' ')}): "
                    "plain HTTP behind an https:// upstream?"
                ) from None
            raise TLSError(f"TLS handshake failed: {reason}") from None
        except OSError as exc:
            raise TLSError(
                f"the upstream closed the connection in the TLS handshake ({type(exc).__name__})"
            ) from None
        if tls is None:  # pragma: no cover - only when the transport closed under it
            raise TLSError("the upstream closed the connection in the TLS handshake")
        return tls
