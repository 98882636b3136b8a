"""What can go wrong in an exchange with the upstream, as types.

The connector, the connection and the pool raise only these; ``str(error)`` is the *cause*, a short
text for the log line made by this package (never upstream bytes, never a header value, so never a
secret), at most ``MAX_CAUSE`` characters. The answer each one becomes (status, Defender code,
metric kind) is decided in one table, ``proxy.upstream.answers``, at the package's edge::

    TransportError                  the exchange failed; nothing of an answer can be relayed
    ├── ConnectError                no connection was made (unreachable network, and the like)
    │   ├── NameResolution          the upstream's host name did not resolve
    │   ├── ConnectRefused          nothing accepted the connection (RST on every address)
    │   └── TLSError                the TLS handshake failed
    │       ├── CertificateVerifyFailed   the upstream's certificate was rejected (reason kept)
    │       └── WrongProtocol       the upstream did not answer in TLS (plain HTTP behind https://)
    ├── Timeout                     a deadline passed; the cause names the phase
    │   ├── PoolTimeout             no pool connection came free within ``timeouts.pool``
    │   ├── ConnectTimeout          connecting or the TLS handshake took past ``timeouts.connect``
    │   ├── ReadTimeout             the response headers, or the next body bytes, past ``timeouts.read``
    │   └── WriteTimeout            the upstream stopped taking the request body
    ├── Reset                       the upstream closed or reset the connection before the answer ended
    └── ProtocolError               the answer is not HTTP/1.1 (garbage, oversized head, status
                                    outside 100-599, a protocol switch)
"""

from __future__ import annotations

from typing import Final

#: The longest cause kept: an OpenSSL reason or an address, never a whole upstream message.
MAX_CAUSE: Final = 200


class TransportError(Exception):
    """An exchange with the upstream failed; ``str()`` is the cause, for the log line."""

    def __init__(self, cause: str) -> None:
        super().__init__(cause[:MAX_CAUSE])


class ConnectError(TransportError):
    """No connection to the upstream could be made."""


class NameResolution(ConnectError):  # noqa: N818 - named for what happened
    """The upstream's host name did not resolve."""


class ConnectRefused(ConnectError):  # noqa: N818 - named for what happened
    """The upstream refused the connection on every address of its name."""


class TLSError(ConnectError):
    """The TLS handshake with the upstream failed."""


class CertificateVerifyFailed(TLSError):  # noqa: N818 - named for what happened
    """The upstream's certificate was rejected (unknown CA, wrong name, expired …)."""


class WrongProtocol(TLSError):  # noqa: N818 - named for what happened
    """The upstream answered the TLS handshake with something that is not TLS."""


class Timeout(TransportError):  # noqa: N818 - named for what happened
    """A deadline passed; the cause says in which phase."""


class PoolTimeout(Timeout):
    """Every pool connection stayed busy for longer than ``timeouts.pool``."""


class ConnectTimeout(Timeout):
    """Connecting (TCP, then the TLS handshake) took longer than ``timeouts.connect``."""


class ReadTimeout(Timeout):
    """The upstream sent nothing for ``timeouts.read`` while an answer was awaited."""


class WriteTimeout(Timeout):
    """The upstream took none of the request body for ``timeouts.read``."""


class Reset(TransportError):  # noqa: N818 - named for what happened
    """The upstream closed or reset the connection before its answer was complete."""


class ProtocolError(TransportError):
    """The upstream's answer is not a valid HTTP/1.1 response."""
