"""Every error response is classified, counted once, logged with its target, and passed unchanged."""

from __future__ import annotations

import gzip
from typing import Any

import orjson
import pytest

from proxy import classify
from proxy.codes import ERROR_TABLE
from proxy.errors import envelope
from tests.conftest import Stack

ERRORS = "defender_api_errors_total"


@pytest.mark.parametrize(("code", "status"), sorted(ERROR_TABLE.items()))
async def test_each_documented_error_is_counted_logged_and_passed(
    stack: Stack, code: str, status: int
) -> None:
    """One request per row of the error table: +1 with its code and status, target in the log, bytes unchanged."""
    labels = {"route": "machines.get", "status": str(status), "code": code}
    before = stack.sample(ERRORS, **labels)
    response = await stack.client.get("/api/machines/7c1a", headers={"X-Simulate": f"error={code}"})
    body = await response.read()
    assert response.status == status
    upstream_target = response.headers["X-Sim-Target"]
    sent = orjson.loads(body)["error"]
    assert body == envelope(code, sent["message"], upstream_target)
    assert stack.sample(ERRORS, **labels) == before + 1
    [line] = stack.logs.lines("request")
    assert line["code"] == code
    assert line["target"] == upstream_target
    assert line["status"] == status
    assert line["route"] == "machines.get"
    assert line["source"] == "upstream"


async def test_hunting_numeric_429_is_counted_as_too_many_requests(stack: Stack) -> None:
    """Hunting's code "429" is counted as TooManyRequests."""
    response = await stack.client.post(
        "/api/advancedqueries/run", headers={"X-Simulate": "hunting-429"}
    )
    assert response.status == 429
    assert orjson.loads(await response.read())["error"]["code"] == "429"
    labels = {"route": "advancedqueries.run", "status": "429", "code": "TooManyRequests"}
    assert stack.sample(ERRORS, **labels) == 1


async def test_graph_envelope_target_is_the_request_id(stack: Stack) -> None:
    """A Graph error is counted by its code and logged with innerError.request-id as target."""
    response = await stack.client.get(
        "/v1.0/security/alerts_v2",
        headers={"X-Simulate": "graph-error=TooManyRequests:429;inner=throttledRequest"},
    )
    await response.read()
    assert response.status == 429
    [line] = stack.logs.lines("request")
    assert line["target"] == response.headers["X-Sim-Target"]
    assert line["inner_code"] == "throttledRequest"
    labels = {"route": "graph.security", "status": "429", "code": "TooManyRequests"}
    assert stack.sample(ERRORS, **labels) == 1


@pytest.mark.parametrize(
    ("kind", "status", "marker"),
    [
        ("empty", 500, classify.EMPTY),
        ("html", 502, classify.HTML),
        ("truncated", 500, classify.TRUNCATED),
        ("invalid-json", 500, classify.NOT_JSON),
        ("wrong-types", 500, classify.WRONG_TYPES),
        ("invalid-utf8", 500, classify.BAD_UTF8),
        ("oversize", 500, classify.TOO_LARGE),
        ("bad-gzip", 500, classify.BAD_ENCODING),
    ],
)
async def test_odd_bodies_map_to_their_marker_and_pass_unchanged(
    stack: Stack, kind: str, status: int, marker: str
) -> None:
    """Each odd error body is counted under its own marker; the caller gets every byte."""
    response = await stack.client.get(
        "/api/alerts", headers={"X-Simulate": f"body={kind};status={status}"}
    )
    body = await response.read()
    assert response.status == status
    if "Content-Length" in response.headers:
        assert len(body) == int(response.headers["Content-Length"])
    labels = {"route": "alerts.list", "status": str(status), "code": marker}
    assert stack.sample(ERRORS, **labels) == 1
    [line] = stack.logs.lines("request")
    assert line["code"] == marker
    assert line["bytes_out"] == len(body)


async def test_oversize_error_body_is_forwarded_whole(stack: Stack) -> None:
    """An error body far over the parsing cap still reaches the caller whole."""
    size = 5 * 2**20
    response = await stack.client.get(
        "/api/alerts", headers={"X-Simulate": f"body=oversize;size={size};status=500"}
    )
    body = await response.read()
    assert len(body) == size


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br"])
async def test_compressed_error_is_parsed_but_passed_compressed(
    stack: Stack, encoding: str
) -> None:
    """A compressed error body is decoded for counting only; the caller gets the compressed bytes."""
    response = await stack.client.get(
        "/api/alerts", headers={"X-Simulate": f"body={encoding};status=403"}
    )
    raw = await response.read()
    assert response.headers["Content-Encoding"] == encoding
    if encoding == "gzip":
        assert orjson.loads(gzip.decompress(raw))["error"]["code"]
    [line] = stack.logs.lines("request")
    assert line["code"] not in classify.MARKERS
    assert stack.sample(ERRORS, route="alerts.list", status="403", code=line["code"]) == 1


async def test_successes_are_not_counted_as_errors(stack: Stack) -> None:
    """A 200 adds nothing to the error counter but counts as a request."""
    response = await stack.client.get("/api/alerts")
    assert response.status == 200
    await response.read()
    exposition = stack.metrics.exposition().decode()
    assert "defender_api_errors_total{" not in exposition
    labels = {"route": "alerts.list", "method": "GET", "status": "200", "source": "upstream"}
    labels["upstream"] = "default"  # the shorthand's one upstream
    assert stack.sample("defender_proxy_requests_total", **labels) == 1


async def test_unknown_codes_are_bounded(stack: Stack) -> None:
    """Past the dynamic-code budget, new codes are counted as "other"."""
    from proxy.metrics import MAX_DYNAMIC_CODES

    codes: list[str] = [f"WeirdCode{i}" for i in range(MAX_DYNAMIC_CODES + 5)]
    for code in codes:
        response = await stack.client.get(
            "/api/alerts", headers={"X-Simulate": f"error={code}:400"}
        )
        await response.read()
    seen = {
        sample.labels["code"]
        for metric in stack.metrics.registry.collect()
        if metric.name == "defender_api_errors"
        for sample in metric.samples
        if sample.name == ERRORS
    }
    assert len(seen) == MAX_DYNAMIC_CODES + 1
    assert "other" in seen
    assert stack.sample(ERRORS, route="alerts.list", status="400", code="other") == 5


async def test_proxy_made_errors_are_not_api_errors(make_stack: Any) -> None:
    """An unreachable upstream is a proxy answer (502), not a Defender API error."""
    stack: Stack = await make_stack(upstream="http://127.0.0.1:9")
    response = await stack.client.get("/api/alerts")
    assert response.status == 502
    assert (await response.json())["error"]["code"] == "BadGateway"
    assert "defender_api_errors_total{" not in stack.metrics.exposition().decode()
    labels = {"route": "alerts.list", "method": "GET", "status": "502", "source": "proxy"}
    labels["upstream"] = "default"  # the shorthand's one upstream
    assert stack.sample("defender_proxy_requests_total", **labels) == 1
