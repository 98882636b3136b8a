"""Every 401 and 403 explained: the simulator refuses tokens as the API does, and the proxy's
``auth_cause``, its figures and ``defender_proxy_auth_failures_total`` say why; no token leaks."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestServer

from proxy.config import Throttle
from proxy.simulator.app import SimConfig, make_app
from proxy.simulator.tokens import bearer
from proxy.throttle_config import Identities
from tests.conftest import Stack

TID = "72f988bf-86f1-41af-91ab-2d7cd011db47"
SOAR = "4a5f4f6e-8b9c-4d0e-9f1a-2b3c4d5e6f70"
STRANGER = "aaaaaaaa-0000-0000-0000-000000000009"
DEFENDER_AUD = "https://api.securitycenter.microsoft.com"
GRAPH_AUD = "https://graph.microsoft.com"
ISOLATE = "/api/machines/1e5bc9d7e413ddd7902c2932e418702b84d0cc07/isolate"
FAILURES = "defender_proxy_auth_failures_total"


@pytest.fixture
async def simulator(aiohttp_server: Callable[..., Any]) -> TestServer:
    """The simulator checking tokens as the API does."""
    server: TestServer = await aiohttp_server(make_app(SimConfig(check_tokens=True)))
    return server


def _token(app: str = SOAR, **claims: Any) -> str:
    now = int(time.time())
    base: dict[str, Any] = {
        "aud": DEFENDER_AUD,
        "exp": now + 3000,
        "nbf": now - 600,
        "roles": ["Machine.Isolate"],
    }
    base.update(claims)
    return bearer(TID, app, **base)


async def _stack(make_stack: Callable[..., Any]) -> Stack:
    names = (("soar", SOAR),)
    stack: Stack = await make_stack(throttle=Throttle(identities=Identities(names=names)))
    return stack


async def _send(
    stack: Stack, authorization: str | None, path: str = ISOLATE, **headers: str
) -> tuple[int, dict[str, Any], dict[str, Any]]:
    """(status, the answer's error, the request's log line)."""
    if authorization is not None:
        headers["Authorization"] = authorization
    async with stack.client.post(path, json={"Comment": "isolate"}, headers=headers) as response:
        body = orjson.loads(await response.read())
    line = stack.logs.lines("request")[-1]
    return response.status, body["error"], line


CASES = [
    # (cause, Authorization, status the simulator answers, the fields beside auth_cause)
    ("no_token", None, 401, {}),
    ("not_bearer", "Basic dXNlcjpodW50ZXIy", 401, {}),
    ("malformed", "Bearer not-a-jwt-at-all", 401, {}),
    ("wrong_audience", _token(aud=GRAPH_AUD), 401, {"token_aud": GRAPH_AUD}),
    ("missing_role", _token(roles=["Alert.Read.All"]), 403, {"missing_role": "Machine.Isolate"}),
]


@pytest.mark.parametrize(("cause", "authorization", "status", "extra"), CASES)
async def test_each_cause_is_logged_and_counted(
    make_stack: Callable[..., Any],
    cause: str,
    authorization: str | None,
    status: int,
    extra: dict[str, Any],
) -> None:
    """The API's refusal reaches the caller unchanged; the line and the metric name the cause."""
    stack = await _stack(make_stack)
    answered, error, line = await _send(stack, authorization)
    assert answered == status
    assert line["status"] == status
    assert line["target"] == error["target"]
    assert line["auth_cause"] == cause
    assert {key: line[key] for key in extra} == extra
    app = "anonymous" if authorization is None or cause in ("not_bearer", "malformed") else "soar"
    assert line["app"] == (SOAR if app == "soar" else None)
    labels = {"route": "machines.isolate", "status": str(status), "cause": cause, "app": app}
    assert stack.sample(FAILURES, **labels) == 1


async def test_an_expired_token_says_how_long_ago(make_stack: Callable[..., Any]) -> None:
    """A token that expired two minutes ago: 401 from the API, expired, about 120 s ago."""
    stack = await _stack(make_stack)
    status, _, line = await _send(stack, _token(exp=int(time.time()) - 120))
    assert status == 401
    assert line["auth_cause"] == "expired"
    assert 120 <= line["expired_ago_s"] <= 180
    labels = {"route": "machines.isolate", "status": "401", "cause": "expired", "app": "soar"}
    assert stack.sample(FAILURES, **labels) == 1


async def test_a_token_not_valid_yet(make_stack: Callable[..., Any]) -> None:
    """nbf ten minutes ahead (a client's clock): 401, not_yet_valid, with the seconds to go."""
    stack = await _stack(make_stack)
    status, _, line = await _send(stack, _token(nbf=int(time.time()) + 600))
    assert status == 401
    assert line["auth_cause"] == "not_yet_valid"
    assert 500 <= line["valid_in_s"] <= 601


async def test_a_right_looking_token_is_token_ok(make_stack: Callable[..., Any]) -> None:
    """A token the API accepts, refused for a tenant feature: token_ok, the body's code logged."""
    stack = await _stack(make_stack)
    status, error, line = await _send(stack, _token(), **{"X-Simulate": "error=DisabledFeature"})
    assert status == 403
    assert error["code"] == "DisabledFeature"
    assert (line["auth_cause"], line["code"]) == ("token_ok", "DisabledFeature")


async def test_an_app_without_a_name_is_other(make_stack: Callable[..., Any]) -> None:
    """An app throttle.identities.names does not name is counted as other, logged by its id."""
    stack = await _stack(make_stack)
    _, _, line = await _send(stack, _token(app=STRANGER, roles=[]))
    assert (line["app"], line["tid"]) == (STRANGER, TID)
    labels = {"route": "machines.isolate", "status": "403", "cause": "missing_role", "app": "other"}
    assert stack.sample(FAILURES, **labels) == 1


async def test_a_defender_token_sent_to_graph_is_wrong_audience(
    make_stack: Callable[..., Any],
) -> None:
    """On a Graph path the Graph audiences apply: a Defender token is wrong_audience there."""
    stack = await _stack(make_stack)
    async with stack.client.get(
        "/v1.0/security/alerts_v2", headers={"Authorization": _token()}
    ) as response:
        body = orjson.loads(await response.read())
    assert response.status == 401
    assert body["error"]["code"] == "InvalidAuthenticationToken"
    line = stack.logs.lines("request")[-1]
    assert (line["auth_cause"], line["token_aud"]) == ("wrong_audience", DEFENDER_AUD)


async def test_an_inner_refusal_of_a_batch_is_explained(make_stack: Callable[..., Any]) -> None:
    """A 403 inside a $batch answer is explained from the batch's own token."""
    stack = await _stack(make_stack)
    batch = {
        "requests": [
            {
                "id": "1",
                "method": "GET",
                "url": "/security/alerts_v2",
                "headers": {"X-Simulate": "graph-error=Forbidden:403"},
            }
        ]
    }
    headers = {"Authorization": _token(), "Content-Type": "application/json"}
    async with stack.client.post("/v1.0/$batch", json=batch, headers=headers) as response:
        assert response.status == 200
        await response.read()
    inner = [line for line in stack.logs.lines("request") if line["source"] == "batch"]
    assert inner[0]["status"] == 403
    assert inner[0]["auth_cause"] == "wrong_audience"
    labels = {"route": "graph.security", "status": "403", "cause": "wrong_audience", "app": "soar"}
    assert stack.sample(FAILURES, **labels) == 1


async def test_a_success_and_other_errors_are_never_explained(
    make_stack: Callable[..., Any],
) -> None:
    """200s and 404s carry no auth_cause, and the counter stays empty."""
    stack = await _stack(make_stack)
    status, _, line = await _send(stack, _token(), **{"X-Simulate": "error=ResourceNotFound"})
    assert status == 404
    assert "auth_cause" not in line
    async with stack.client.post(ISOLATE, json={}, headers={"Authorization": _token()}) as ok:
        assert ok.status == 200
    assert "auth_cause" not in stack.logs.lines("request")[-1]
    assert FAILURES + "{" not in stack.metrics.exposition().decode()


async def test_no_token_reaches_the_log_or_the_metrics(make_stack: Callable[..., Any]) -> None:
    """Whatever the cause, no part of the token is in the log lines or the exposition."""
    stack = await _stack(make_stack)
    tokens = [auth for _, auth, _, _ in CASES if auth is not None]
    tokens.append(_token(exp=int(time.time()) - 5))
    for authorization in tokens:
        await _send(stack, authorization)
    shown = stack.logs.text + stack.metrics.exposition().decode()
    for authorization in tokens:
        credentials = authorization.partition(" ")[2]
        for part in credentials.split("."):
            assert len(part) < 8 or part not in shown
