"""Paged lists as the API answers them: ``@odata.nextLink`` absolute on the API's own origin.

Graph's security lists (``/v1.0/security/alerts_v2``, ``/v1.0/security/incidents``) always page:
``$top`` items (``SimConfig.page_size`` by default), then a ``nextLink`` carrying ``$skiptoken``.
Defender's machine list (``/api/machines``) pages with ``$top`` and ``$skip`` when the query
carries either; without them it stays the simulator's plain one-page answer, which older tests
and the benchmarks rely on. Each list holds ``SimConfig.list_size`` items.

The link's origin is ``SimConfig.origin`` when set (the real API's, say, to show that a link the
proxy does not own passes untouched), else the one the request came to: its scheme and ``Host``,
as the API does. Answers are compressed with gzip or deflate when the caller accepts them, as the
API compresses for every client that asks.
"""

from __future__ import annotations

import gzip
import zlib
from typing import Final

import orjson
from aiohttp import web

from proxy.errors import envelope, new_target

#: The most items one page may ask for (``/api/machines`` documents ``$top`` ≤ 10000).
MAX_TOP: Final = 10_000
_MAX_SKIP: Final = 10**9
_GRAPH: Final = {
    "/v1.0/security/alerts_v2": "alerts_v2",
    "/v1.0/security/incidents": "incidents",
}
_DEFENDER: Final = {"/api/machines": "Machines"}
JSON: Final = "application/json; charset=utf-8"


class _BadQueryError(ValueError):
    """A paging parameter the API would refuse."""


def answer(
    request: web.Request, origin: str | None, list_size: int, page_size: int
) -> web.Response | None:
    """The page ``request`` asks for, or None when it is not a paged list request."""
    if request.method != "GET":
        return None
    path = request.path.rstrip("/").lower()
    query = request.query
    graph = _GRAPH.get(path)
    defender = _DEFENDER.get(path)
    if graph is None and (defender is None or not {"$top", "$skip"} & query.keys()):
        return None
    base = origin or f"{request.scheme}://{request.host}"
    try:
        top = _count(query.get("$top"), page_size, "$top", 1, MAX_TOP)
        name = "$skiptoken" if graph else "$skip"
        skip = _count(query.get(name), 0, name, 0, _MAX_SKIP)
    except _BadQueryError as exc:
        body = envelope("BadRequest", str(exc), new_target())
        return web.Response(status=400, body=body, headers={"Content-Type": JSON})
    end = min(skip + top, list_size)
    if graph is not None:
        context = f"https://graph.microsoft.com/v1.0/$metadata#security/{graph}"
        items = [_graph_item(graph, n) for n in range(skip, end)]
        following = f"$top={top}&$skiptoken={end}"
    else:
        context = f"https://api.security.microsoft.com/api/$metadata#{defender}"
        items = [_machine(n) for n in range(skip, end)]
        following = f"$top={top}&$skip={end}"
    page: dict[str, object] = {"@odata.context": context, "value": items}
    if end < list_size:
        page["@odata.nextLink"] = f"{base}{request.path}?{following}"
    return _compressed(request, orjson.dumps(page))


def _count(raw: str | None, default: int, name: str, least: int, most: int) -> int:
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 10 and least <= int(raw) <= most):
        raise _BadQueryError(f"Invalid value for {name}: '{raw[:32]}'")
    return int(raw)


def _machine(n: int) -> dict[str, object]:
    return {
        "id": f"{n:040x}",
        "computerDnsName": f"host-{n:05d}.contoso.com",
        "osPlatform": "Windows11",
        "healthStatus": "Active",
        "riskScore": "Low",
    }


def _graph_item(kind: str, n: int) -> dict[str, object]:
    if kind == "incidents":
        return {"id": str(n), "displayName": f"Incident {n}", "status": "active"}
    return {"id": f"da{n:034x}", "title": f"Alert {n}", "severity": "medium", "status": "new"}


def _compressed(request: web.Request, body: bytes) -> web.Response:
    accepted = {
        token.split(";")[0].strip().lower()
        for token in request.headers.get("Accept-Encoding", "").split(",")
    }
    headers = {"Content-Type": JSON}
    if "gzip" in accepted:
        body = gzip.compress(body, mtime=0)
        headers["Content-Encoding"] = "gzip"
    elif "deflate" in accepted:
        body = zlib.compress(body)
        headers["Content-Encoding"] = "deflate"
    return web.Response(body=body, headers=headers)
