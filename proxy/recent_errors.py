"""The last error answers of the process, for support cases: a bounded ring and the admin view of it.

A Microsoft support case asks for the tracking id (``target``) of a failed request. The log line
has it, but on call nobody should have to grep for it: every answer with a status of 400 or more
(the upstream's, the proxy's own, and the inner answers of a Graph ``$batch``) leaves one record
in a ring of the last ``limits.recent_errors``, shared by every listener of the process, and the
admin port's ``/errors`` lists them newest first (``defender-proxy errors`` prints them).

A record holds only what a support case needs and what is safe to show to whoever reaches the
admin port: names from closed sets (upstream, route, source), the status, the request id the
proxy sent, the one-word ``cause``, and the error's ``code`` and ``target``. Never the path or
its query string, the message, or a header. The strings that came from outside (code, target,
method) are scrubbed and cut to ``MAX_FIELD`` here, whatever was done where they were made.

Recording costs one tuple per error and nothing per success; the time is kept as a number and
written out only when the view is read.
"""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from aiohttp import web
from multidict import MultiMapping

from proxy.errors import error_response, new_target
from proxy.logs import scrub
from proxy.units import shown

if TYPE_CHECKING:
    from proxy.outcome import Outcome

#: The longest a string from outside (code, target, method) is kept.
MAX_FIELD: Final = 128
#: The query parameters ``/errors`` understands.
PARAMETERS: Final = ("limit", "status", "route")
# A route name as the catalogue and throttle.routes spell one (proxy.throttle_config).
_ROUTE: Final = re.compile(r"[A-Za-z0-9_.\-]{1,64}\Z")


class ErrorRecord(NamedTuple):
    """One error answer, as the view shows it (``at``: seconds since the epoch)."""

    at: float
    upstream: str
    route: str
    method: str
    status: int
    code: str
    cause: str
    target: str
    request_id: str
    source: str

    def as_json(self) -> dict[str, Any]:
        """The record as ``/errors`` lists it; an empty code, cause or target is null."""
        return {
            "time": iso_time(self.at),
            "upstream": self.upstream,
            "route": self.route,
            "method": self.method,
            "status": self.status,
            "code": self.code or None,
            "cause": self.cause or None,
            "target": self.target or None,
            "request_id": self.request_id,
            "source": self.source,
        }


def iso_time(at: float) -> str:
    """``at`` (seconds since the epoch) as UTC ISO 8601 with milliseconds: ``…T12:00:00.250Z``."""
    seconds, millis = divmod(int(at * 1000), 1000)
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(seconds))}.{millis:03d}Z"


def _safe(text: str) -> str:
    # Cut before scrubbing, so the scrubber's cost is bounded too; a cut secret is still caught
    # (a JWT's first segment, a key and the start of its value), and "[redacted]" may lengthen it.
    return scrub(text[:MAX_FIELD])[:MAX_FIELD]


class RecentErrors:
    """The last ``size`` error answers of the process, oldest dropped first; 0 keeps none."""

    __slots__ = ("_clock", "_ring", "size")

    def __init__(self, size: int, clock: Callable[[], float] = time.time) -> None:
        self.size = size
        self._clock = clock
        self._ring: deque[ErrorRecord] = deque(maxlen=size)

    def resize(self, size: int) -> None:
        """Keep the last ``size`` from now on: the newest of those kept stay (none for 0)."""
        self.size = size
        self._ring = deque(self._ring, maxlen=size)

    def observe(self, upstream: str, outcome: Outcome) -> None:
        """Keep the request's record if it was answered with an error (``Recorder.observe``)."""
        if outcome.status < 400 or not self.size:
            return
        error = outcome.error
        self.add(
            upstream,
            outcome.route.name,
            outcome.method,
            outcome.status,
            error.get("code", ""),
            outcome.cause,
            error.get("target", ""),
            outcome.request_id,
            outcome.source,
        )

    def add(
        self,
        upstream: str,
        route: str,
        method: str,
        status: int,
        code: str,
        cause: str,
        target: str,
        request_id: str,
        source: str,
    ) -> None:
        """Keep one error answer; an inner answer of a batch comes in here directly."""
        if not self.size:
            return
        self._ring.append(
            ErrorRecord(
                self._clock(),
                upstream,
                route,
                _safe(method),
                status,
                _safe(code),
                _safe(cause),
                _safe(target),
                request_id,
                source,
            )
        )

    def newest(
        self, limit: int | None = None, status: int | None = None, route: str | None = None
    ) -> Iterator[ErrorRecord]:
        """The records kept, newest first: those of ``status`` and ``route`` (when given), at
        most ``limit`` of them."""
        left = self.size if limit is None else limit
        for record in reversed(self._ring):
            if left <= 0:
                return
            if (status is None or record.status == status) and (
                route is None or record.route == route
            ):
                left -= 1
                yield record

    def __len__(self) -> int:
        return len(self._ring)


class QueryError(ValueError):
    """A query parameter of ``/errors`` that cannot be read; the message says which and why."""


def read_query(query: MultiMapping[str], size: int) -> tuple[int | None, int | None, str | None]:
    """(limit, status, route) from the query of ``/errors``; raises ``QueryError``."""
    for name in query:
        if name not in PARAMETERS:
            raise QueryError(
                f"unknown query parameter {shown(name)} (known: {', '.join(PARAMETERS)})"
            )
    limit = status = route = None
    if "limit" in query:
        limit = _whole(query, "limit", 1, size)
    if "status" in query:
        status = _whole(query, "status", 400, 599)
    if "route" in query:
        route = _one(query, "route")
        if not _ROUTE.match(route):
            raise QueryError(
                f"route: expected a route name (1-64 of A-Z a-z 0-9 _ . -), got {shown(route)}"
            )
    return limit, status, route


def _one(query: MultiMapping[str], name: str) -> str:
    values = query.getall(name)
    if len(values) != 1:
        raise QueryError(f"{name}: given {len(values)} times; give it once")
    return values[0]


def _whole(query: MultiMapping[str], name: str, at_least: int, at_most: int) -> int:
    text = _one(query, name)
    # ASCII digits only: int() would also take "１２", " 12" and "1_2".
    if text.isascii() and text.isdigit() and len(text) <= 6 and at_least <= int(text) <= at_most:
        return int(text)
    raise QueryError(
        f"{name}: expected a whole number from {at_least} to {at_most}, got {shown(text)}"
    )


def answer(errors: RecentErrors, query: MultiMapping[str]) -> web.Response:
    """The answer of ``GET /errors``: ``{"errors": [...newest first...], "size": N}``."""
    if not errors.size:
        message = "the recent-errors view is off: limits.recent_errors is 0"
        return error_response(404, "NotFound", message, new_target())
    try:
        limit, status, route = read_query(query, errors.size)
    except QueryError as exc:
        return error_response(400, "BadRequest", str(exc), new_target())
    listed = [record.as_json() for record in errors.newest(limit, status, route)]
    return web.json_response({"errors": listed, "size": errors.size})
