"""Graph JSON batching in the simulator: ``POST /v1.0/$batch`` and ``POST /beta/$batch``.

As Graph does, the batch itself is not counted: each inner request goes through the quota on its
own, in the order given, and one over the limit gets its 429 (``Retry-After`` and a body stating
the limit, as the simulator's outer 429s) inside the 200 answer. An inner request picks its answer
with its own ``X-Simulate`` header, limited to the answers whose body is JSON in memory (status
and error directives, ``retry-after``, ``set-header``); the others make that inner answer a 400.
A request whose ``dependsOn`` names a failed one gets 424, as Graph answers.

A batch that is not a JSON object with a list of 1 to 20 requests, each with a unique string
``id``, a ``method`` and a relative ``url``, is refused whole with 400, before anything is counted.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import orjson
from aiohttp import web
from multidict import CIMultiDict

from proxy.identity import Claims, read_claims
from proxy.simulator import behaviour, bodies
from proxy.simulator.directives import HEADER, DirectiveError, parse
from proxy.simulator.keyed import KeyedQuota
from proxy.simulator.quota import refusal_message

#: Graph's documented ceiling on requests in one batch.
MAX_REQUESTS: Final = 20
_PATHS: Final = frozenset({"/v1.0/$batch", "/beta/$batch"})


class BatchError(ValueError):
    """A batch body the simulator refuses whole."""


def is_batch(method: str, path: str) -> bool:
    """Whether the request is a JSON batch."""
    return method == "POST" and path.lower() in _PATHS


async def answer(request: web.Request, quota: KeyedQuota) -> web.Response:
    """Run every inner request through the quota and its directives; 200 with their answers.

    Each inner request counts in the quota of its own route (its url under the batch's version)
    and of the batch's token, as if it had been sent alone.
    """
    try:
        requests = _requests(await request.read())
    except BatchError as exc:
        refused = behaviour.error_answer(400, "BadRequest", str(exc))
        return web.Response(status=400, body=refused.body, headers=refused.headers)
    failed: set[str] = set()
    responses = []
    claims = read_claims(request.headers.get("Authorization"))
    version = request.path[: request.path.index("/", 1)]
    for item in requests:
        inner = _inner(item, quota, claims, version, failed)
        if inner["status"] >= 400:
            failed.add(item["id"])
        responses.append(inner)
    return web.Response(
        body=orjson.dumps({"responses": responses}),
        headers={"Content-Type": behaviour.JSON},
    )


def _requests(raw: bytes) -> list[dict[str, Any]]:
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BatchError("the batch body is not valid JSON") from None
    items = doc.get("requests") if isinstance(doc, dict) else None
    if not isinstance(items, list) or not items:
        raise BatchError("the batch body needs a non-empty 'requests' list")
    if len(items) > MAX_REQUESTS:
        raise BatchError(f"a batch holds at most {MAX_REQUESTS} requests, got {len(items)}")
    seen: set[str] = set()
    for item in items:
        if not isinstance(item, dict):
            raise BatchError("every batch request must be a JSON object")
        ident, method, url = item.get("id"), item.get("method"), item.get("url")
        if not isinstance(ident, str) or not ident or ident in seen:
            raise BatchError("every batch request needs a unique string 'id'")
        if not isinstance(method, str) or not isinstance(url, str):
            raise BatchError(f"batch request {ident!r} needs a 'method' and a 'url'")
        if "://" in url or url.startswith("//"):
            raise BatchError(f"batch request {ident!r} has an absolute url; it must be relative")
        if not isinstance(item.get("headers", {}), dict):
            raise BatchError(f"batch request {ident!r} has 'headers' that are not an object")
        seen.add(ident)
    return items


def _inner(
    item: Mapping[str, Any], quota: KeyedQuota, claims: Claims, version: str, failed: set[str]
) -> dict[str, Any]:
    ident = item["id"]
    depends = item.get("dependsOn") or []
    if isinstance(depends, list) and any(d in failed for d in depends):
        return _error(ident, 424, "FailedDependency", "a request this one depends on failed")
    path = version + "/" + item["url"].partition("?")[0].lstrip("/")
    refusal = quota.admit(quota.key(item["method"].upper(), path, claims))
    if refusal is not None:
        return _error(
            ident,
            429,
            "TooManyRequests",
            refusal_message(refusal),
            {"Retry-After": str(refusal.retry_after)},
        )
    headers = CIMultiDict(
        (str(k), str(v)) for k, v in (item.get("headers") or {}).items() if isinstance(v, str)
    )
    try:
        directives = parse(";".join(headers.getall(HEADER, [])))
    except DirectiveError as exc:
        return _error(ident, 400, "BadRequest", str(exc))
    planned: behaviour.Answer | None
    if directives.answer is None:
        planned = behaviour.Answer(
            200, CIMultiDict({"Content-Type": behaviour.JSON}), bodies.DEFAULT_BODY
        )
    else:
        planned = behaviour.plan_error(directives, headers.get("client-request-id"))
    if planned is None:
        return _error(ident, 400, "BadRequest", f"{directives.answer} is not answered in a batch")
    behaviour.adjust_headers(planned.headers, directives)
    return _entry(ident, planned)


def _error(
    ident: str, status: int, code: str, message: str, extra: dict[str, str] | None = None
) -> dict[str, Any]:
    return _entry(ident, behaviour.error_answer(status, code, message, extra))


def _entry(ident: str, planned: behaviour.Answer) -> dict[str, Any]:
    body: Any = None
    if planned.body:
        try:
            body = orjson.loads(planned.body)
        except orjson.JSONDecodeError:
            body = planned.body.decode("utf-8", "replace")
    headers = {str(name): value for name, value in planned.headers.items()}
    return {"id": ident, "status": planned.status, "headers": headers, "body": body}
