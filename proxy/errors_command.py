"""The ``defender-proxy errors`` command: a running proxy's recent errors, as a table or as JSON.

It fetches ``/errors`` from the admin port (``proxy.recent_errors``) with the standard library, so
the command starts without aiohttp and works from any shell that reaches the port. The address is
``--admin``, else the ``admin_listen`` of the config (``--config``, ``$DEFENDER_PROXY_CONFIG``, the
embedded default), a wildcard host read as loopback. Whatever goes wrong (nothing listens, a refused
query, an answer that is not the view's, no whole answer within ``TIMEOUT``) is one line on stderr
and exit code 1.

Whatever answers on that port is printed only as printable characters: a table cell or a message
with a control character (an escape sequence meant for the terminal, C1 and bidi controls too) has
it replaced by "?", and ``--json`` prints the view re-encoded as ASCII JSON.
"""

from __future__ import annotations

import http.client
import json
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Final

#: How long the fetch may take in all: the view is built in memory, so a slow answer is a wrong
#: address.
TIMEOUT: Final = 10.0
# 10,000 records of a few hundred bytes each; anything much larger is not the view.
_MAX_ANSWER: Final = 64 << 20
# The longest message printed; a status line quoted in one may be 64 KiB.
_MAX_MESSAGE: Final = 500
# The admin port listens on every address by default; from the same host, loopback reaches it.
_WILDCARDS: Final = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}  # noqa: S104
COLUMNS: Final = ("time", "upstream", "route", "status", "code", "cause", "target")


class _FetchError(Exception):
    """The command cannot print the view; the message is its one line."""


class _AddressError(Exception):
    """The config names no admin address the command can use."""


def show(
    admin: str | None,
    config: str | None,
    limit: str | None,
    status: str | None,
    route: str | None,
    as_json: bool,
) -> int:
    """Fetch the recent errors and print them; the exit code (1: not fetched, 2: bad config)."""
    try:
        base = admin if admin is not None else _configured_admin(config)
    except _AddressError as exc:
        print(f"defender-proxy errors: {exc}", file=sys.stderr)
        return 2
    query = {
        name: value
        for name, value in (("limit", limit), ("status", status), ("route", route))
        if value is not None
    }
    try:
        _, view = fetch(base, query)
    except _FetchError as exc:
        # The message may quote the answer (a status line, a reason): printable characters only.
        print(f"defender-proxy errors: {_cell(str(exc)[:_MAX_MESSAGE])}", file=sys.stderr)
        return 1
    if as_json:
        # Re-encoded rather than copied: the answer's bytes may hold C1 or bidi controls, or not
        # be UTF-8 at all (json.loads takes UTF-16 and UTF-32). The proxy's own answer is ASCII
        # JSON already, and prints byte for byte as it was sent.
        print(json.dumps(view))
        return 0
    print(table(view["errors"], view["size"]))
    return 0


def _configured_admin(path: str | None) -> str:
    from proxy.config import Address, ConfigError, load_settings

    try:
        settings = load_settings(path)
    except ConfigError as exc:
        raise _AddressError(f"invalid configuration:\n{exc}") from None
    address = settings.admin_listen
    if not address.port:
        raise _AddressError(
            f"admin_listen is {address} (any free port): give the port with --admin URL"
        )
    return f"http://{Address(_WILDCARDS.get(address.host, address.host), address.port)}"


def fetch(base: str, query: dict[str, str]) -> tuple[bytes, dict[str, Any]]:
    """The answer of ``/errors`` at the admin port ``base``: its bytes and its parsed view."""
    if "://" not in base:
        base = f"http://{base}"
    url = f"{base.rstrip('/')}/errors"
    if query:
        url += f"?{urllib.parse.urlencode(query)}"
    raw = _within_timeout(url, base)
    try:
        view = json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than the C stack allows
        view = None
    if not (
        isinstance(view, dict)
        and isinstance(view.get("errors"), list)
        and isinstance(view.get("size"), int)
    ):
        raise _FetchError(f"{url}: not the answer of a defender-proxy admin port")
    return raw, view


def _within_timeout(url: str, base: str) -> bytes:
    """``_get``, given up once ``TIMEOUT`` has passed in all: a socket's timeout bounds each read
    only, and an answer trickled a byte at a time would hold the command for hours."""
    got: list[bytes | Exception] = []

    def run() -> None:
        try:
            got.append(_get(url, base))
        except Exception as exc:  # handed to the command's thread
            got.append(exc)

    # A daemon: the command may end while it still waits on the socket.
    worker = threading.Thread(target=run, name="errors-fetch", daemon=True)
    worker.start()
    worker.join(TIMEOUT)
    if not got:
        raise _FetchError(f"{url}: no whole answer within {TIMEOUT:g} s")
    result = got[0]
    if isinstance(result, Exception):
        raise result
    return result


def _get(url: str, base: str) -> bytes:
    # The admin port is reached directly: an HTTP proxy from the environment has no business here.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=TIMEOUT) as response:
            raw: bytes = response.read(_MAX_ANSWER)
    except urllib.error.HTTPError as exc:
        with exc:
            said = _message(exc.read(4096))
        raise _FetchError(f"{url}: {exc.code} {said or exc.reason}") from None
    except urllib.error.URLError as exc:
        raise _FetchError(f"cannot reach the admin port at {base}: {exc.reason}") from None
    except (OSError, ValueError, http.client.HTTPException) as exc:
        # A timeout, a reset, an unusable URL, or no HTTP answer (a broken status line, a body
        # shorter than its Content-Length), which http.client raises as none of the others.
        raise _FetchError(f"cannot read an answer from the admin port at {base}: {exc}") from None
    return raw


def _message(body: bytes) -> str:
    """The message of a Defender error envelope, or ""."""
    try:
        error = json.loads(body).get("error")
        message = error.get("message", "")
    except (ValueError, AttributeError):
        return ""
    return _cell(message) if isinstance(message, str) else ""


def table(errors: list[Any], size: int) -> str:
    """The records as a table, one row each in the order given (the view's: newest first)."""
    if not errors:
        return f"no recent errors (the proxy keeps the last {size})"
    rows: list[tuple[str, ...]] = [COLUMNS]
    for record in errors:
        fields = record if isinstance(record, dict) else {}
        rows.append(tuple(_cell(fields.get(column)) for column in COLUMNS))
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS) - 1)]
    lines = []
    for row in rows:
        cells = [f"{cell:<{width}}" for cell, width in zip(row[:-1], widths, strict=True)]
        lines.append("  ".join([*cells, row[-1]]))
    return "\n".join(lines)


def _cell(value: object) -> str:
    """A value as a table shows it: null as "-", anything unprintable (an escape sequence meant
    for the terminal) as "?"."""
    text = "-" if value is None else str(value)
    return text if text.isprintable() else "".join(c if c.isprintable() else "?" for c in text)
