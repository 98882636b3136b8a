"""The simulator's journal: the last requests it received, each with its id and arrival time.

A test that must prove a proxy lost nothing and sent nothing twice needs the upstream's own
record of each request, not only counts: ``GET /_sim/requests`` lists the last ``MAX_ENTRIES``
requests outside ``/_sim/`` in order of arrival — the time on the simulator's clock (seconds,
for differences between entries), the ``client-request-id`` the proxy sent, the method, the path
whether the quota throttled it, and which token it carried (``token``: the ``uti`` claim, the
token's own unique id, never the token). Bounded, so a benchmark's millions of requests cost no more
memory than a test's dozens.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Final

#: Requests kept; the oldest go first.
MAX_ENTRIES: Final = 10_000


@dataclass(frozen=True, slots=True)
class Entry:
    """One request as the simulator received it."""

    at: float
    request_id: str
    method: str
    path: str
    throttled: bool
    #: the bearer token's ``uti`` claim; "" without a readable token
    token: str = ""

    def as_json(self) -> dict[str, object]:
        """The entry as ``/_sim/requests`` lists it."""
        return {
            "at": self.at,
            "id": self.request_id,
            "method": self.method,
            "path": self.path,
            "throttled": self.throttled,
            "token": self.token,
        }


class Journal:
    """The last ``size`` requests, oldest first."""

    __slots__ = ("_entries",)

    def __init__(self, size: int = MAX_ENTRIES) -> None:
        self._entries: deque[Entry] = deque(maxlen=size)

    def add(self, entry: Entry) -> None:
        """Record one request."""
        self._entries.append(entry)

    def as_json(self) -> dict[str, object]:
        """``{"requests": [...oldest first...]}``."""
        return {"requests": [entry.as_json() for entry in self._entries]}

    def clear(self) -> None:
        """Forget every request (``POST /_sim/reset``)."""
        self._entries.clear()
