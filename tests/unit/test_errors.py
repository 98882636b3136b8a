"""Tests for proxy.errors: the Defender envelope, fresh targets, and proxy-made responses."""

from __future__ import annotations

import uuid

import orjson
import pytest

from proxy.errors import (
    PROXY_HEADER,
    ProxyError,
    RefusalError,
    UpstreamError,
    envelope,
    error_response,
    new_target,
)

TARGET = "8b2f9bd6-4e4b-4f4e-9a55-0d5f1e1f3c2a"


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("BadGateway", "the upstream could not be reached"),
        ("BadRequest", 'quotes " and \\ backslashes and\nnewlines'),
        ("PayloadTooLarge", "ünïcödé ✓"),
    ],
)
def test_envelope_parses_back(code: str, message: str) -> None:
    """The envelope is JSON with exactly code, message and target under "error"."""
    parsed = orjson.loads(envelope(code, message, TARGET))
    assert parsed == {"error": {"code": code, "message": message, "target": TARGET}}


def test_new_target_is_a_fresh_uuid() -> None:
    """Each call gives a different, canonical UUID string."""
    targets = [new_target() for _ in range(50)]
    assert len(set(targets)) == len(targets)
    for target in targets:
        assert str(uuid.UUID(target)) == target


def test_error_response_status_and_body() -> None:
    """The response carries the given status and the envelope as its body."""
    response = error_response(502, "BadGateway", "no upstream", TARGET)
    assert response.status == 502
    assert isinstance(response.body, bytes)
    assert orjson.loads(response.body) == {
        "error": {"code": "BadGateway", "message": "no upstream", "target": TARGET}
    }


def test_error_response_is_json_utf8() -> None:
    """The response is application/json in UTF-8."""
    response = error_response(400, "BadRequest", "nope", TARGET)
    assert response.content_type == "application/json"
    assert response.charset == "utf-8"
    assert response.headers["Content-Type"] == "application/json; charset=utf-8"


def test_error_response_carries_proxy_header() -> None:
    """The proxy header names the code, so a caller can tell the proxy answered."""
    response = error_response(413, "PayloadTooLarge", "too big", TARGET)
    assert PROXY_HEADER == "X-Defender-Proxy-Error"
    assert response.headers[PROXY_HEADER] == "PayloadTooLarge"


def test_error_response_adds_extra_headers() -> None:
    """Extra headers are set on the response alongside the proxy header."""
    response = error_response(
        429, "TooManyRequests", "slow down", TARGET, headers={"Retry-After": "7", "X-Extra": "1"}
    )
    assert response.headers["Retry-After"] == "7"
    assert response.headers["X-Extra"] == "1"
    assert response.headers[PROXY_HEADER] == "TooManyRequests"


def test_error_response_without_extra_headers() -> None:
    """Without extra headers only the proxy's own headers are set."""
    response = error_response(504, "GatewayTimeout", "late", TARGET)
    assert "Retry-After" not in response.headers
    assert set(response.headers) == {"Content-Type", PROXY_HEADER, "Server"}
    assert response.headers["Server"] == "defender-proxy"


def test_error_hierarchy() -> None:
    """Refusals and upstream errors are ProxyErrors carrying status, code, message (and kind)."""
    refusal = RefusalError(400, "BadRequest", "no")
    upstream = UpstreamError(504, "GatewayTimeout", "late", "timeout")
    assert isinstance(refusal, ProxyError)
    assert isinstance(upstream, ProxyError)
    assert (refusal.status, refusal.code, refusal.message, str(refusal)) == (
        400,
        "BadRequest",
        "no",
        "no",
    )
    assert (upstream.status, upstream.code, upstream.kind) == (504, "GatewayTimeout", "timeout")
