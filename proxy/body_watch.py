"""A request body watched on its way upstream, and the hints given when the API refuses it.

For a request with a body (``POST``, ``PUT``, ``PATCH``) to an endpoint whose JSON body the
reference documents (``proxy.reference``), ``watch`` starts a ``BodyWatch``: ``tee`` hands every
chunk of the body to a key collector (``proxy.body_keys``) as it streams upstream, never holding
one back or changing it. When the answer is a 400 whose code says the body may hold a typo
(``proxy.body_hints.TRIGGERS``), ``explain`` compares the keys with the documented parameters and
puts what it finds in the log line (``hint``), the outcome's ``cause`` (the first hint's kind),
the metric ``defender_proxy_body_hints_total{route,kind}`` and the answer's header
``X-Defender-Proxy-Hint``. Any other request costs one route lookup, and no body is ever
refused or changed for a hint's sake.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Final

from aiohttp import web
from multidict import CIMultiDict

if TYPE_CHECKING:
    from proxy.body_keys import KeyCollector
    from proxy.metrics import Metrics
    from proxy.outcome import Outcome
    from proxy.reference import Endpoint, Reference

#: The header the hints go out in, on the upstream's 400.
HEADER: Final = "X-Defender-Proxy-Hint"
#: The log field of the hints' text.
FIELD: Final = "hint"
_BODY_METHODS: Final = frozenset({"POST", "PUT", "PATCH"})


class BodyWatch:
    """One request's body, watched for its keys, and the endpoint it was sent to."""

    __slots__ = ("endpoint", "keys")

    def __init__(self, endpoint: Endpoint) -> None:
        # The key collector and the hints come with the first watch (``watch``: the first body
        # sent to a documented endpoint), as the reference table does.
        from proxy.body_keys import KeyCollector

        self.endpoint = endpoint
        self.keys: KeyCollector = KeyCollector()

    async def tee(self, body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """``body``, chunk by chunk, each read for its keys on its way through."""
        async for chunk in body:
            self.keys.feed(chunk)
            yield chunk
        self.keys.finish()

    def explain(
        self, status: int, headers: CIMultiDict[str], outcome: Outcome, metrics: Metrics
    ) -> None:
        """On a 400 that a typo may cause: the hints into the outcome, the metric and ``headers``."""
        from proxy import body_hints

        if not body_hints.triggers(status, outcome.error.get("code", "")):
            return
        endpoint = self.endpoint
        hints = body_hints.compare(self.keys.result(), endpoint.body, endpoint.folds_case)
        if not hints:
            return
        text = body_hints.joined(hints)
        outcome.explained[FIELD] = text
        outcome.cause = hints[0].kind
        route = outcome.route.name
        for hint in hints:
            metrics.body_hints.labels(route, hint.kind).inc()
        headers[HEADER] = text


def watch(
    request: web.BaseRequest, target: str, reference: Reference | None = None
) -> BodyWatch | None:
    """A watch on the body of ``request`` (forwarded to ``target``), or None when the endpoint
    documents no body parameters, the method sends no body, or the body is encoded;
    ``reference``: the documented endpoints (default: ``proxy.reference.REFERENCE``)."""
    if request.method not in _BODY_METHODS:
        return None
    if reference is None:
        # Imported on the first request that sends a body: the table of every documented
        # endpoint stays out of the memory of a proxy whose callers only read.
        from proxy.reference import REFERENCE

        reference = REFERENCE
    endpoint = reference.find(request.method, target.partition("?")[0])
    if endpoint is None or not endpoint.body:
        return None
    # A compressed body's keys cannot be read without decompressing it, which is not worth a hint.
    if request.headers.get("Content-Encoding", "").strip().lower() not in ("", "identity"):
        return None
    found = BodyWatch(endpoint)
    if not request.body_exists:
        found.keys.finish()
    return found
