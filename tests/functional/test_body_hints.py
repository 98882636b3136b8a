"""Body hints through the proxy, in front of a simulator that checks bodies as the API does.

Every endpoint of ``proxy.reference`` that documents body parameters is tried (so these tests grow
as the table does) with a key in the wrong case, a misspelt key and a missing required key: the
API's 400 reaches the caller unchanged but for ``X-Defender-Proxy-Hint``, the log line has the
same text as ``hint``, and ``defender_proxy_body_hints_total`` counts it. A correct body gets no
hint, and nothing of a body's values is ever written anywhere.
"""

from __future__ import annotations

import hashlib
import io
import re
import secrets
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestServer
from pytest_aiohttp import AiohttpServer

from proxy.body_keys import MAX_SCAN
from proxy.body_watch import HEADER
from proxy.reference import ENDPOINTS, REFERENCE, Endpoint
from proxy.simulator import SimConfig, make_app
from tests.conftest import Stack

HINTS = "defender_proxy_body_hints_total"
DOCUMENTED = [endpoint for endpoint in ENDPOINTS if endpoint.body]
WITH_REQUIRED = [endpoint for endpoint in DOCUMENTED if any(p.required for p in endpoint.body)]
#: The endpoints whose API matches body names case-sensitively (the Defender API's; Graph folds).
CASE_SENSITIVE = [endpoint for endpoint in DOCUMENTED if not endpoint.folds_case]
_PARAM = re.compile(r"\{[^}]*\}")
#: What a test's caller may legitimately see differ between two answers of the simulator.
_PER_ANSWER = {"date", "x-sim-target"}


@pytest.fixture
async def simulator(aiohttp_server: AiohttpServer) -> TestServer:
    """The stand-in API checking documented bodies (``--check-bodies``), for every stack here."""
    server: TestServer = await aiohttp_server(make_app(SimConfig(check_bodies=True)))
    return server


def example(endpoint: Endpoint) -> tuple[str, str]:
    """(method, path) of a request the endpoint's first fitting pattern matches."""
    for pattern in endpoint.match:
        method, _, path = pattern.partition(" ")
        method = "POST" if method == "*" else method
        path = _PARAM.sub("7c1a0d2e3f4b", path).replace("**", "sample").replace("*", "x")
        if REFERENCE.find(method, path) is endpoint:
            return method, path
    raise AssertionError(f"no example path of {endpoint.route} finds it in the reference")


def correct(endpoint: Endpoint) -> dict[str, str]:
    """A body with every documented parameter, spelt exactly."""
    return {param.name: f"value-of-{param.name}" for param in endpoint.body}


def wrong_case(name: str) -> str:
    """``name`` in another case: lower case, or upper case if it already is."""
    return name.lower() if name.lower() != name else name.upper()


def misspelt(name: str) -> str:
    """``name`` with its middle letter dropped (a typo)."""
    return name[: len(name) // 2] + name[len(name) // 2 + 1 :]


def _first_required_or_first(endpoint: Endpoint) -> str:
    return next((p.name for p in endpoint.body if p.required), endpoint.body[0].name)


def _longest(endpoint: Endpoint) -> str:
    return max((p.name for p in endpoint.body), key=len)


def _cases() -> list[Any]:
    cases = []
    for endpoint in CASE_SENSITIVE:
        name = _first_required_or_first(endpoint)
        cases.append(
            pytest.param(
                endpoint,
                {wrong_case(name): "x"},
                name,
                "case",
                f"body parameter '{wrong_case(name)}' should be '{name}'",
                id=f"{endpoint.route}-case",
            )
        )
    for endpoint in DOCUMENTED:
        name = _longest(endpoint)
        cases.append(
            pytest.param(
                endpoint,
                {misspelt(name): "x"},
                name,
                "misspelt",
                f"body parameter '{misspelt(name)}' is not documented: did you mean '{name}'?",
                id=f"{endpoint.route}-misspelt",
            )
        )
    for endpoint in WITH_REQUIRED:
        name = _first_required_or_first(endpoint)
        cases.append(
            pytest.param(
                endpoint,
                {},
                name,
                "missing",
                f"required body parameter '{name}' is missing",
                id=f"{endpoint.route}-missing",
            )
        )
    return cases


async def direct(stack: Stack, method: str, path: str, body: bytes) -> tuple[Any, bytes]:
    """The simulator's own answer to the request, not through the proxy."""
    async with (
        aiohttp.ClientSession(auto_decompress=False) as session,
        session.request(method, stack.upstream.make_url(path), data=body) as response,
    ):
        return response, await response.read()


def route_of(stack: Stack, method: str, path: str) -> str:
    """The ``route`` label the proxy gives the request."""
    return stack.proxy.router.route(method, path).spec.name


@pytest.mark.parametrize(("endpoint", "change", "name", "kind", "text"), _cases())
async def test_a_body_typo_gets_its_hint_and_the_answer_is_otherwise_unchanged(
    stack: Stack, endpoint: Endpoint, change: dict[str, str], name: str, kind: str, text: str
) -> None:
    """The API's 400 on a typo passes unchanged but for the hint header; logged and counted."""
    method, path = example(endpoint)
    doc = {key: value for key, value in correct(endpoint).items() if key != name} | change
    body = orjson.dumps(doc)
    route = route_of(stack, method, path)
    response = await stack.client.request(method, path, data=body)
    raw = await response.read()
    assert response.status == 400
    assert response.headers[HEADER] == text
    expected, expected_raw = await direct(stack, method, path, body)
    assert expected.status == 400
    code = orjson.loads(expected_raw)["error"]["code"]
    assert code in ("MissingRequiredParameter", "InvalidRequestBody")
    target, expected_target = response.headers["X-Sim-Target"], expected.headers["X-Sim-Target"]
    assert raw.replace(target.encode(), b"T") == expected_raw.replace(
        expected_target.encode(), b"T"
    )
    seen = {k.lower(): v for k, v in response.headers.items() if k.lower() not in _PER_ANSWER}
    sent = {k.lower(): v for k, v in expected.headers.items() if k.lower() not in _PER_ANSWER}
    assert seen == sent | {HEADER.lower(): text}
    [line] = stack.logs.lines("request")
    assert (line["hint"], line["code"], line["status"]) == (text, code, 400)
    assert stack.sample(HINTS, route=route, kind=kind) == 1
    assert stack.proxy.metrics.exposition().decode().count(HINTS + "{") == 1


@pytest.mark.parametrize("endpoint", DOCUMENTED, ids=lambda e: e.route)
async def test_a_correct_body_gets_no_hint(stack: Stack, endpoint: Endpoint) -> None:
    """A body with the documented names gets the API's answer and no hint, even on a body 400."""
    method, path = example(endpoint)
    body = orjson.dumps(correct(endpoint))
    response = await stack.client.request(method, path, data=body)
    await response.read()
    assert response.status == 200
    response = await stack.client.request(
        method, path, data=body, headers={"X-Simulate": "error=InvalidRequestBody"}
    )
    await response.read()
    assert response.status == 400
    assert HEADER not in response.headers
    assert all("hint" not in line for line in stack.logs.lines("request"))
    assert HINTS + "{" not in stack.proxy.metrics.exposition().decode()


@pytest.mark.parametrize("endpoint", DOCUMENTED, ids=lambda e: e.route)
async def test_values_in_the_body_are_never_written(stack: Stack, endpoint: Endpoint) -> None:
    """Secret-looking values, and a key close to no documented name, reach no log, metric or header."""
    method, path = example(endpoint)
    planted = [f"Zq{n}{secrets.token_urlsafe(18)}" for n in range(4)]
    name = _first_required_or_first(endpoint)
    doc = {key: planted[0] for key in correct(endpoint) if key != name}
    doc |= {wrong_case(name): planted[1], misspelt(_longest(endpoint)): planted[2]}
    doc[planted[3]] = planted[3]
    response = await stack.client.request(method, path, data=orjson.dumps(doc))
    await response.read()
    assert response.status == 400
    hint = response.headers[HEADER]
    assert f"'{misspelt(_longest(endpoint))}'" in hint
    written = [hint, stack.logs.text, stack.proxy.metrics.exposition().decode()]
    for secret in planted:
        assert all(secret not in text for text in written)


GRAPH_AND_OTHER_400S = [
    ("graph-error=BadRequest:400", False),
    ("graph-error=invalidRequest:400", False),
    ("error=BadRequest", False),
    ("error=ODataError", False),
    ("error=InvalidInput", True),
    ("error=InvalidRequestBody", True),
    ("error=MissingRequiredParameter", True),
    ("error=InvalidRequestBody:404", False),
]


@pytest.mark.parametrize(("simulate", "hinted"), GRAPH_AND_OTHER_400S)
@pytest.mark.parametrize("endpoint", DOCUMENTED, ids=lambda e: e.route)
async def test_only_the_three_body_codes_on_a_400_bring_hints(
    stack: Stack, endpoint: Endpoint, simulate: str, hinted: bool
) -> None:
    """A Graph 400 (BadRequest, invalidRequest) or another code gets no hint for the same typo."""
    method, path = example(endpoint)
    name = _longest(endpoint)
    doc = {key: "x" for key in correct(endpoint) if key != name} | {misspelt(name): "x"}
    response = await stack.client.request(
        method, path, data=orjson.dumps(doc), headers={"X-Simulate": simulate}
    )
    await response.read()
    assert (HEADER in response.headers) is hinted
    [line] = stack.logs.lines("request")
    assert ("hint" in line) is hinted
    assert (HINTS + "{" in stack.proxy.metrics.exposition().decode()) is hinted


@pytest.mark.parametrize("endpoint", DOCUMENTED, ids=lambda e: e.route)
async def test_the_body_goes_upstream_unchanged(stack: Stack, endpoint: Endpoint) -> None:
    """A watched body, small or streamed past the buffer and the scan bound, arrives byte for byte."""
    method, path = example(endpoint)
    name = _first_required_or_first(endpoint)
    for pad in (0, 3 * MAX_SCAN):
        body = orjson.dumps({wrong_case(name): "x", "pad": "p" * pad})
        response = await stack.client.request(
            method, path, data=io.BytesIO(body), headers={"X-Simulate": "echo"}
        )
        echoed = orjson.loads(await response.read())
        assert response.status == 200
        assert echoed["body_sha256"] == hashlib.sha256(body).hexdigest()


@pytest.mark.parametrize(
    "endpoint", [e for e in WITH_REQUIRED if e in CASE_SENSITIVE], ids=lambda e: e.route
)
async def test_a_streamed_body_is_read_up_to_the_scan_bound_only(
    stack: Stack, endpoint: Endpoint
) -> None:
    """A key before the bound gets its hint; one after it is never read, and nothing is said to
    be missing from a body the proxy did not read to its end."""
    method, path = example(endpoint)
    name = _first_required_or_first(endpoint)
    route = route_of(stack, method, path)
    early = orjson.dumps({wrong_case(name): "x", "zzzzzzzz": "p" * (2 * MAX_SCAN)})
    late = orjson.dumps({"zzzzzzzz": "p" * (2 * MAX_SCAN), wrong_case(name): "x"})
    response = await stack.client.request(method, path, data=io.BytesIO(early))
    await response.read()
    assert response.status == 400
    assert response.headers[HEADER] == f"body parameter '{wrong_case(name)}' should be '{name}'"
    response = await stack.client.request(method, path, data=io.BytesIO(late))
    await response.read()
    assert response.status == 400
    assert HEADER not in response.headers
    assert stack.sample(HINTS, route=route, kind="case") == 1
    assert stack.sample(HINTS, route=route, kind="missing") == 0


async def test_an_empty_body_is_named_as_such(stack: Stack) -> None:
    """A documented endpoint's POST with no body at all is a not_object hint."""
    method, path = example(DOCUMENTED[0])
    response = await stack.client.request(method, path)
    await response.read()
    assert response.status == 400
    assert response.headers[HEADER] == "request body is empty: a JSON object is expected"
    route = route_of(stack, method, path)
    assert stack.sample(HINTS, route=route, kind="not_object") == 1


async def test_an_undocumented_endpoint_gets_no_hint(stack: Stack) -> None:
    """A body 400 on an endpoint the reference does not know has nothing to compare with."""
    response = await stack.client.post(
        "/api/alerts/x/comments",
        data=b'{"comment": "x"}',
        headers={"X-Simulate": "error=InvalidRequestBody"},
    )
    await response.read()
    assert response.status == 400
    assert HEADER not in response.headers
    assert "hint" not in stack.logs.lines("request")[0]


@pytest.mark.parametrize("typo", [False, True], ids=["correct-body", "typo"])
async def test_the_upstreams_own_proxy_headers_never_reach_the_caller(
    stack: Stack, typo: bool
) -> None:
    """An upstream's X-Defender-Proxy-* headers are dropped: only the proxy speaks in its name."""
    endpoint = DOCUMENTED[0]
    method, path = example(endpoint)
    name = _first_required_or_first(endpoint)
    doc = correct(endpoint) | ({wrong_case(name): "x"} if typo else {})
    simulate = (
        "error=InvalidRequestBody;set-header=X-Defender-Proxy-Hint:forged"
        ";set-header=X-Defender-Proxy-Error:Forged"
    )
    response = await stack.client.request(
        method, path, data=orjson.dumps(doc), headers={"X-Simulate": simulate}
    )
    await response.read()
    assert response.status == 400
    assert "X-Defender-Proxy-Error" not in response.headers
    hints = response.headers.getall(HEADER, [])
    assert hints == ([f"body parameter '{wrong_case(name)}' should be '{name}'"] if typo else [])


async def test_the_graph_sdks_own_spelling_is_accepted_and_never_hinted(stack: Stack) -> None:
    """runHuntingQuery as the Graph SDK writes it (``query``, ``timespan``; the page writes
    ``Query``) passes the simulator's body check, and a body 400 on it gets no case hint."""
    path = "/v1.0/security/microsoft.graph.security.runHuntingQuery"
    body = orjson.dumps({"query": "DeviceInfo | take 1", "timespan": "P1D"})
    response = await stack.client.post(path, data=body)
    await response.read()
    assert response.status == 200
    response = await stack.client.post(
        path, data=body, headers={"X-Simulate": "error=InvalidInput"}
    )
    await response.read()
    assert response.status == 400
    assert HEADER not in response.headers
