"""Graph JSON batching on the way in: read a ``$batch`` body within a bound, check it, route each
inner request.

A batch (``POST /v1.0/$batch`` or ``/beta/$batch``, the ``graph.batch`` route) carries up to 20
requests that Graph counts each on its own, so the proxy must know them before it admits the
batch: the body is read whole, up to ``limits.batch_body``, and parsed. What the proxy cannot
count it does not forward: a batch over the bound is refused with 413, one that is not a batch
Graph would take (not JSON, no requests, more than 20, a duplicate id, an absolute or
protocol-relative url, a url with dot segments or encoded separators — as the guard refuses
them in a whole request —, a key the proxy reads spelled in another case, a batch inside a
batch, a ``dependsOn`` naming no request of the batch) with 400 ``BadRequest``, both in the
Defender envelope and before anything is admitted or sent. The body that is forwarded is the bytes the caller sent, unchanged.

Each inner request is routed as the proxy's router routes a whole request: its method and the
batch's version prefix joined to its url (``/security/alerts_v2?$top=1`` in a ``/v1.0`` batch is
``GET /v1.0/security/alerts_v2``). Nothing of an inner request but its id, method and route is
kept: its headers (an ``Authorization`` among them) and body are never read into a log line.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import orjson
from aiohttp import web

from proxy import forward, guard
from proxy.catalogue import RouteSpec
from proxy.errors import RefusalError
from proxy.routing import Router

#: The route name of a batch itself; it is never charged, its inner requests are.
BATCH_ROUTE: Final = "graph.batch"
#: Graph's documented ceiling on requests in one batch.
MAX_REQUESTS: Final = 20
#: Longer inner ids are refused: they are logged (scrubbed) and matched against the answer.
MAX_ID: Final = 128
_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"})
#: The keys the proxy reads, by their lower case: any other case of them is refused.
_TOP_KEYS: Final = {"requests": "requests"}
_REQUEST_KEYS: Final = {
    name.lower(): name for name in ("id", "method", "url", "dependsOn", "headers", "body")
}


@dataclass(frozen=True, slots=True)
class Inner:
    """One request inside a batch, as far as the proxy looks at it."""

    id: str
    method: str
    route: RouteSpec
    #: the path family of an unmatched inner request (``routing.Routed.family``), else ""
    family: str = ""
    #: the path it was routed by: the batch's version joined to its url, without the query
    path: str = ""


@dataclass(frozen=True, slots=True)
class Batch:
    """A checked batch: its requests in the order given."""

    requests: tuple[Inner, ...]

    def by_id(self) -> dict[str, Inner]:
        """The requests by their id (unique in a checked batch)."""
        return {inner.id: inner for inner in self.requests}


def too_large(limit: int) -> RefusalError:
    """The refusal of a batch body over ``limits.batch_body``."""
    return RefusalError(
        413,
        "PayloadTooLarge",
        f"the $batch body is over this proxy's limit of {limit} bytes (limits.batch_body); "
        "it is read whole to admit each request in it",
    )


async def read(
    request: web.BaseRequest,
    path: str,
    router: Router,
    limit: int,
    max_body: int,
    caller_timeout: float,
    counter: forward.BodyCounter,
) -> tuple[bytes, Batch]:
    """Read a ``$batch`` body whole (up to ``limit``, ``limits.batch_body``) and check it: (the
    bytes to forward as they came, the checked batch). ``counter`` counts what was read, even
    when the body is refused."""
    if request.content_length is not None and request.content_length > limit:
        raise too_large(limit)
    if request.headers.get("Expect", "").lower() == "100-continue":
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    body = forward.limited_body(request.content, max_body, counter, caller_timeout)
    parts, whole = await forward.read_up_to(body, limit)
    if not whole:
        raise too_large(limit)
    raw = b"".join(parts)
    return raw, parse(raw, path, router)


def parse(body: bytes, path: str, router: Router) -> Batch:
    """Check a batch body and route its requests; raise ``RefusalError`` (400) saying what is
    wrong. ``path`` is the batch's own path, whose first segment is the version prefix."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise _bad("the $batch body is not valid JSON") from None
    if isinstance(doc, dict):
        _check_spelling(doc, _TOP_KEYS, "the $batch body")
    items = doc.get("requests") if isinstance(doc, dict) else None
    if not isinstance(items, list) or not items:
        raise _bad("the $batch body needs a non-empty 'requests' list")
    if len(items) > MAX_REQUESTS:
        raise _bad(f"a $batch holds at most {MAX_REQUESTS} requests, got {len(items)}")
    version = "/" + path.lstrip("/").partition("/")[0]
    requests = [_inner(index, item, version, router) for index, item in enumerate(items)]
    ids = [inner.id for inner in requests]
    if len(set(ids)) != len(ids):
        raise _bad("every request of a $batch needs its own id; an id is repeated")
    for index, item in enumerate(items):
        _check_depends(index, item.get("dependsOn"), set(ids))
    return Batch(tuple(requests))


def _inner(index: int, item: Any, version: str, router: Router) -> Inner:
    if not isinstance(item, dict):
        raise _bad(f"request {index} of the $batch is not a JSON object")
    _check_spelling(item, _REQUEST_KEYS, f"request {index} of the $batch")
    ident, method, url = item.get("id"), item.get("method"), item.get("url")
    if not isinstance(ident, str) or not 0 < len(ident) <= MAX_ID:
        raise _bad(f"request {index} of the $batch needs a string id of 1 to {MAX_ID} characters")
    if not isinstance(method, str) or method.upper() not in _METHODS:
        raise _bad(f"request {index} of the $batch needs a method, one of {sorted(_METHODS)}")
    if not isinstance(url, str) or not url:
        raise _bad(f"request {index} of the $batch needs a url")
    if not url.isprintable() or "\\" in url:
        raise _bad(f"request {index} of the $batch has a url with control characters")
    if "://" in url.partition("?")[0] or url.startswith("//"):
        # Graph resolves inner urls against its own version root; another host is never asked.
        raise _bad(f"request {index} of the $batch has an absolute url; it must be relative")
    headers = item.get("headers")
    if headers is not None and not isinstance(headers, Mapping):
        raise _bad(f"request {index} of the $batch has headers that are not an object")
    path = url.partition("?")[0].partition("#")[0]
    problem = guard.path_problem("/" + path.lstrip("/"))
    if problem:
        # Graph resolves an inner url as a path of its own: it would count the request on the
        # route the dots lead to, not on the one its spelling names.
        raise _bad(f"request {index} of the $batch has {problem} in its url; they are refused")
    routed_path = f"{version}/{path.lstrip('/')}"
    routed = router.route(method.upper(), routed_path)
    if routed.spec.name == BATCH_ROUTE:
        raise _bad(f"request {index} of the $batch is itself a $batch; batches do not nest")
    return Inner(ident, method.upper(), routed.spec, routed.family, routed_path)


def _check_spelling(item: dict[str, Any], names: Mapping[str, str], what: str) -> None:
    """Refuse a key that is one the proxy reads in another case (``URL`` beside ``url``).

    The proxy reads the exact names; a deserializer that matches names without regard to case
    (ASP.NET's default for JSON) may take the other spelling, and count a request the proxy
    never saw. Exact duplicates are no such gap: orjson and .NET both keep the last one.
    """
    for key in item:
        name = names.get(key.lower())
        if name is not None and key != name:
            raise _bad(f"{what} has a key {key[:32]!r}; it must be spelled {name!r}")


def _check_depends(index: int, depends: Any, ids: set[str]) -> None:
    if depends is None:
        return
    if not isinstance(depends, list) or not all(isinstance(d, str) and d in ids for d in depends):
        raise _bad(f"request {index} of the $batch has a dependsOn naming no request of the batch")


def _bad(message: str) -> RefusalError:
    return RefusalError(400, "BadRequest", message)
