"""The routed path through the real app: a path over the bound is refused with 414 in the envelope
and sent nowhere; an adversarial path at the bound is routed and forwarded."""

from __future__ import annotations

import orjson

from proxy.errors import PROXY_HEADER
from proxy.guard import MAX_PATH
from tests.conftest import Stack
from tests.httpraw import exchange


def _port(stack: Stack) -> int:
    port = stack.client.port
    assert port is not None
    return port


async def _upstream_requests(stack: Stack) -> int:
    stats = await (await stack.client.session.get(stack.upstream.make_url("/_sim/stats"))).json()
    return int(stats["requests"])


async def test_path_over_the_bound_gets_414_and_goes_nowhere(stack: Stack) -> None:
    """A path of ``Export(`` past MAX_PATH is answered 414 UriTooLong, logged, never forwarded."""
    target = "/api/machines/" + "Export(" * (MAX_PATH // 7 + 1)
    assert len(target) > MAX_PATH
    raw = f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    response = await exchange(_port(stack), raw)
    assert response.status == 414
    assert response.header(PROXY_HEADER) == "UriTooLong"
    error = orjson.loads(response.body)["error"]
    assert error["code"] == "UriTooLong"
    [line] = stack.logs.lines("request")
    assert (line["status"], line["source"], line["target"]) == (414, "proxy", error["target"])
    assert await _upstream_requests(stack) == 0


async def test_adversarial_path_at_the_bound_is_routed_and_forwarded(stack: Stack) -> None:
    """A path of ``Export(`` up to MAX_PATH reaches the upstream byte-exact as machines.get."""
    target = "/api/machines/" + "Export(" * ((MAX_PATH - 14) // 7)
    raw = f"GET {target} HTTP/1.1\r\nHost: x\r\nX-Simulate: echo\r\n\r\n".encode()
    response = await exchange(_port(stack), raw)
    assert response.status == 200
    assert orjson.loads(response.body)["raw_path"] == target
    [line] = stack.logs.lines("request")
    assert line["route"] == "machines.get"
