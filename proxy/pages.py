"""Which answers have their paging links rewritten, and the body pipeline that does it.

Only a successful (2xx) answer with a whole body (not 204, 205 or a 206 slice), typed JSON
(``application/json`` or a ``+json`` type), in no coding or one that ``codings`` handles, is
rewritten; every other answer passes byte for byte as before. An answer in another coding (``br``, ``zstd``, a chain of codings) passes unchanged, and
``plan`` says so in a note for the request's log line.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Final

from aiohttp import web
from multidict import CIMultiDict

from proxy.codings import CODINGS, Recoder
from proxy.links import KEYS, Links, Rewriter, caller_origin, host_origin

_SHOWN_CODING: Final = re.compile(r"^[a-z0-9_.+-]{1,32}(?:, ?[a-z0-9_.+-]{1,32}){0,3}\Z")
# No body to rewrite (204, 205), or a slice of one (206): a rewritten slice would no longer be
# the bytes its Content-Range names, and a client joining slices would build a broken document.
_UNREWRITTEN: Final = frozenset({204, 205, 206})


def is_json(content_type: str | None) -> bool:
    """Whether ``content_type`` names JSON: ``application/json`` or any ``+json`` type."""
    if not content_type:
        return False
    media = content_type.partition(";")[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


class Pipe:
    """One answer's body on its way to the caller: decoded, rewritten and encoded as it came."""

    __slots__ = ("_recoder", "_rewriter")

    def __init__(self, rewriter: Rewriter, coding: str | None) -> None:
        self._rewriter = rewriter
        self._recoder = None if coding is None else Recoder(coding, rewriter.feed, rewriter.flush)

    @property
    def count(self) -> int:
        """Links rewritten so far."""
        return self._rewriter.count

    @property
    def carried(self) -> int:
        """Plain bytes held back between chunks."""
        return self._rewriter.carried

    @property
    def plain(self) -> bool:
        """Whether the body is rewritten as it comes, in no content coding."""
        return self._recoder is None

    @property
    def passed(self) -> bool:
        """Whether the body did not decode in its coding and passes unchanged."""
        return self._recoder is not None and self._recoder.passed

    def feed(self, chunk: bytes) -> Iterator[bytes]:
        """What may be sent of the body once ``chunk`` is added to it."""
        if self._recoder is not None:
            yield from self._recoder.feed(chunk)
        elif out := self._rewriter.feed(chunk):
            yield out

    def finish(self) -> Iterator[bytes]:
        """The rest of the body; the upstream's has ended. Raises ``codings.CodingError``."""
        if self._recoder is not None:
            yield from self._recoder.finish()
        elif out := self._rewriter.flush():
            yield out


def plan(
    links: Links | None,
    method: str,
    status: int,
    headers: CIMultiDict[str],
    caller: Callable[[], str],
) -> tuple[Pipe | None, str]:
    """The pipe for this answer's body (None: it passes unchanged) and a note for the log line.

    ``caller`` gives the origin links are rewritten to; it is asked only for a body that is
    rewritten (finding it may take a system call, ``origin_of``)."""
    if links is None or method == "HEAD" or not 200 <= status < 300 or status in _UNREWRITTEN:
        return None, ""
    if not is_json(headers.get("Content-Type")):
        return None, ""
    coding = ", ".join(headers.getall("Content-Encoding", [])).strip().lower()
    if coding in ("", "identity"):
        return Pipe(links.rewriter(caller()), None), ""
    if coding in CODINGS:
        return Pipe(links.rewriter(caller()), coding), ""
    shown = coding if _SHOWN_CODING.match(coding) else "unrecognised"
    return None, f"paging links not rewritten: Content-Encoding {shown}"


def whole(pipe: Pipe, body: bytes) -> bytes:
    """All of ``body`` through ``pipe`` at once. Raises ``codings.CodingError``."""
    if pipe.plain and not any(key in body for key in KEYS):
        # No link key anywhere in it (most answers: one item, an action's result): nothing to
        # rewrite, and the bytes are not run through the rewriter's pattern.
        return body
    return b"".join([*pipe.feed(body), *pipe.finish()])


def origin_of(request: web.BaseRequest, scheme: str) -> str:
    """The origin ``request``'s caller used: ``scheme`` (the listener's) and a valid ``Host``,
    else the address the caller connected to."""
    hosts = request.headers.getall("Host", [])
    named = host_origin(scheme, hosts)
    if named is not None:
        # The usual case, without the system call that asks the socket for its address.
        return named
    transport = request.transport
    own = None if transport is None else transport.get_extra_info("sockname")
    return caller_origin(scheme, hosts, own if isinstance(own, tuple) else None)
