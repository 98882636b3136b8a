"""Where the proxy listens and what it connects to: addresses, the upstream origin, the quota
store's URL, and the certificate files TLS will need.

Each parser checks as much as can be known without connecting, so that what ``check-config``
accepts cannot fail later for a reason it could have seen: host names the resolver would refuse,
a Redis database no server can have, a query option redis-py would choke on at its first connect,
a CA bundle with no certificate in it (the file is loaded here, as the TLS context will load it).
Problems are ``ValueError`` with a message fit to show a user; URLs in them are password-free.
"""

from __future__ import annotations

import ipaddress
import os
import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final
from urllib.parse import SplitResult, parse_qs, urlsplit

from proxy.units import PATH_CHARACTERS, shown

__all__ = [
    "MAX_REDIS_DATABASE",
    "Address",
    "parse_address",
    "parse_ca_bundle",
    "parse_store",
    "parse_upstream",
    "redact_url",
]


@dataclass(frozen=True, slots=True)
class Address:
    """A socket address to listen on; port 0 asks the OS for a free port."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def loopback(self) -> bool:
        """Whether only this host can connect: a loopback address or ``localhost``."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


# The password runs to the *last* "@": a raw "@", "/" or "#" in it must not leak the tail, so this
# errs toward hiding too much in odd URLs rather than showing a secret.
_USERINFO: Final = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*://[^:@/?#]*):.*@")
# redis-py also takes the password as a query parameter.
_QUERY_PASSWORD: Final = re.compile(r"([?&]password=)[^&#]*", re.IGNORECASE)
_HOSTNAME: Final = re.compile(r"[a-z0-9_\-]{1,63}(?:\.[a-z0-9_\-]{1,63})*\.?\Z")
_ADDRESS: Final = re.compile(r"(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:\[\]]+)):(?P<port>[0-9]{1,5})\Z")
# URLs are ASCII: anything else (a space, a newline, a control character) is a typo or worse, and
# urlsplit would silently drop a tab or newline in the middle of one.
_URL_TEXT: Final = re.compile(r"[!-~]+\Z")


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***``, fit for logs and error messages."""
    return _QUERY_PASSWORD.sub(r"\1***", _USERINFO.sub(r"\1:***@", url, count=1))


def _host(text: str) -> str:
    host = text.lower()
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"not a valid IPv6 address: {shown(text)}") from None
    elif len(host) > 253 or not _HOSTNAME.match(host):
        # The resolver refuses empty labels and labels over 63 characters (RFC 1035 §2.3.4)
        # with an encoding error, not an OSError: caught here, it cannot stop `run` later.
        raise ValueError(f"not a valid host name: {shown(text)}")
    return host


def parse_address(value: object) -> Address:
    """``host:port`` or ``[v6]:port`` to listen on; port 0-65535."""
    match = _ADDRESS.match(value) if isinstance(value, str) else None
    if match is None or (match["v6"] is not None and ":" not in match["v6"]):
        raise ValueError(f"expected host:port, got {shown(value)}")
    port = int(match["port"])
    if port > 65535:
        raise ValueError(f"port must be 0-65535, got {shown(value)}")
    return Address(_host(match["v6"] or match["host"]), port)


def _url(value: object, expected: str, schemes: tuple[str, ...]) -> tuple[SplitResult, str]:
    """``value`` split as a URL with one of ``schemes``, and its password-free spelling."""
    if not isinstance(value, str):
        raise ValueError(f"{expected}, got a {type(value).__name__}")
    text = value.strip()
    if not _URL_TEXT.match(text):
        problem = "must be printable ASCII without spaces or control characters"
        raise ValueError(f"{problem}, got {shown(redact_url(value))}")
    quoted = shown(redact_url(value))
    try:
        parts = urlsplit(text)
        port = parts.port  # read now so a bad port is a problem here, not a crash later
    except ValueError:
        raise ValueError(f"not a valid URL: {quoted}") from None
    if parts.scheme.lower() not in schemes:
        raise ValueError(f"{expected}, got {quoted}")
    if port == 0:
        raise ValueError(f"port must be 1-65535, got {quoted}")
    if not parts.hostname and parts.scheme.lower() != "unix":
        raise ValueError(f"must name a host, got {quoted}")
    if parts.hostname:
        _host(parts.hostname)
    return parts, quoted


def parse_upstream(value: object) -> str:
    """The upstream origin, normalised: scheme and host lower-case, the default port dropped."""
    parts, shown = _url(value, "expected an http:// or https:// URL", ("http", "https"))
    if "@" in parts.netloc:
        # Say nothing of the value itself: all of the userinfo may be a secret.
        raise ValueError("must not carry credentials; the proxy never sends its own")
    if "?" in str(value) or "#" in str(value):
        raise ValueError(f"must not have a query or fragment, got {shown}")
    if parts.path not in ("", "/"):
        raise ValueError(f"must be an origin without a path, got path {parts.path!r}")
    scheme, host = parts.scheme.lower(), _host(str(parts.hostname))
    netloc = f"[{host}]" if ":" in host else host
    if parts.port is not None and parts.port != {"http": 80, "https": 443}[scheme]:
        netloc = f"{netloc}:{parts.port}"
    return f"{scheme}://{netloc}"


def parse_store(value: object) -> str:
    """``memory`` or a Redis URL whose database, options and files have been checked."""
    if isinstance(value, str) and value.strip() == "memory":
        return "memory"
    expected = (
        "expected 'memory' or a redis://, rediss://, redis+cluster://, rediss+cluster:// "
        "or unix:// URL"
    )
    schemes = ("redis", "rediss", "redis+cluster", "rediss+cluster", "unix")
    parts, shown_url = _url(value, expected, schemes)
    scheme = parts.scheme.lower()
    database = parts.path.strip("/") if scheme != "unix" else ""
    if scheme == "unix" and not parts.path:
        raise ValueError(f"a unix:// URL needs a socket path, got {shown_url}")
    if database and not (database.isascii() and database.isdecimal()):
        raise ValueError(f"the database must be a number, got {shown_url}")
    options = parse_qs(parts.query, keep_blank_values=True)
    for name, given in options.items():
        check = _STORE_OPTIONS.get(name)
        if check is None:
            known = ", ".join(sorted(_STORE_OPTIONS))
            raise ValueError(f"unknown URL option {shown(name)} (known: {known})")
        if len(given) > 1:
            raise ValueError(f"the URL option {name} is given {len(given)} times")
        if name.startswith("ssl_") and not scheme.startswith("rediss"):
            # redis-py hands these only to TLS connections; a plain one fails on them at connect.
            raise ValueError(f"the URL option {name} needs a rediss:// URL, got {shown_url}")
        try:
            check(given[0])
        except ValueError as error:
            raise ValueError(f"the URL option {name}: {error}") from None
    if "db" in options:
        database = options["db"][0]
    if database:
        _database(database)
    if scheme.endswith("+cluster") and database not in ("", "0"):
        raise ValueError(f"Redis Cluster has only database 0, got {shown_url}")
    return str(value).strip()


#: The highest Redis database index any server can have: its ``databases`` setting is a C int
#: (at most 2**31 - 1) and indexes run from 0 to one below it. Whether the server at hand has
#: that many is known only when it answers SELECT; the log says so then.
MAX_REDIS_DATABASE: Final = 2**31 - 2


def _database(text: str) -> int:
    if not (text.isascii() and text.isdecimal()):
        raise ValueError(f"the database must be a number, got {shown(text)}")
    if len(text) > 10 or int(text) > MAX_REDIS_DATABASE:
        raise ValueError(f"the database must be at most {MAX_REDIS_DATABASE}, got {shown(text)}")
    return int(text)


def _pem_certificates(path: str) -> None:
    """Refuse ``path`` unless it is a readable PEM file with at least one certificate."""
    try:
        ssl.create_default_context(cafile=path)
    except ssl.SSLError as error:
        reason = error.reason or str(error)
        raise ValueError(
            f"{shown(path, PATH_CHARACTERS)} holds no PEM certificate ({reason}); expected one or more "
            "-----BEGIN CERTIFICATE----- blocks"
        ) from None
    except OSError as error:
        raise ValueError(
            f"cannot read {shown(path, PATH_CHARACTERS)}: {error.strerror or error}"
        ) from None


def _file(value: str) -> str:
    if not value or "\0" in value:
        raise ValueError(f"expected a file path, got {shown(value)}")
    if not os.path.isfile(value):
        raise ValueError(f"no such file: {shown(value, PATH_CHARACTERS)}")
    return value


def _certificates_file(value: str) -> None:
    _pem_certificates(_file(value))


def _key_file(value: str) -> None:
    _file(value)
    try:
        with open(value, encoding="ascii") as file:
            pem = file.read(1 << 20)
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"cannot read {shown(value, PATH_CHARACTERS)}: {error}") from None
    if "-----BEGIN" not in pem or "PRIVATE KEY-----" not in pem:
        raise ValueError(f"{shown(value, PATH_CHARACTERS)} is not a PEM private key")


def _flag(value: str) -> None:
    if value.lower() not in ("true", "false", "yes", "no", "1", "0"):
        raise ValueError(f"expected true or false, got {shown(value)}")


def _cert_reqs(value: str) -> None:
    if value.lower() not in ("none", "optional", "required"):
        raise ValueError(f"expected none, optional or required, got {shown(value)}")


def _client_name(value: str) -> None:
    if not re.fullmatch(r"[!-~]{1,64}", value):
        raise ValueError(f"expected 1-64 printable characters, got {shown(value)}")


# The query options a redis-py store URL may carry, each checked as redis-py will read it; any
# other would reach redis-py's connection class as an unexpected argument at the first connect.
_STORE_OPTIONS: Final[dict[str, Callable[[str], object]]] = {
    "db": _database,
    "password": lambda value: None,  # anything; problems show it as ***
    "client_name": _client_name,
    "ssl_ca_certs": _certificates_file,
    "ssl_certfile": _certificates_file,
    "ssl_keyfile": _key_file,
    "ssl_cert_reqs": _cert_reqs,
    "ssl_check_hostname": _flag,
}


def parse_ca_bundle(value: object) -> str | None:
    """A PEM file of CA certificates, loaded once here as the TLS context will load it."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"expected a file path, got {shown(value)}")
    _pem_certificates(_file(value))
    return value
