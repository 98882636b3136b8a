"""The simulator's ``--check-bodies``: the API's 400s for a documented body with a typo, and
nothing of the kind when it is off."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from proxy.errors import envelope
from proxy.simulator import SimConfig, make_app
from proxy.simulator.__main__ import build_parser, config_from_args
from proxy.simulator.behaviour import TARGET_HEADER

Client = TestClient[Any, Any]
ISOLATE = "/api/machines/7c1a0d2e/isolate"


@pytest.fixture
async def checking(aiohttp_client: AiohttpClient) -> Client:
    """A simulator that checks documented bodies."""
    return await aiohttp_client(make_app(SimConfig(check_bodies=True)))


async def post(
    client: Client, body: bytes, path: str = ISOLATE, **headers: str
) -> tuple[Any, bytes]:
    """POST ``body``: the response and its body."""
    async with client.post(path, data=body, headers=headers) as response:
        return response, await response.read()


async def refused(client: Client, body: bytes) -> tuple[str, str]:
    """POST ``body`` to isolate, which must answer 400 in the Defender envelope: (code, message)."""
    response, raw = await post(client, body)
    assert response.status == 400
    error = orjson.loads(raw)["error"]
    assert raw == envelope(error["code"], error["message"], response.headers[TARGET_HEADER])
    return error["code"], error["message"]


async def test_a_missing_required_parameter_is_missing_required_parameter(
    checking: Client,
) -> None:
    """A body without Comment (or with it in the wrong case) is 400 MissingRequiredParameter."""
    expected = ("MissingRequiredParameter", "Parameter 'Comment' is missing.")
    assert await refused(checking, b'{"IsolationType": "Full"}') == expected
    assert await refused(checking, b'{"comment": "x", "IsolationType": "Full"}') == expected


async def test_an_undocumented_key_is_invalid_request_body(checking: Client) -> None:
    """A key the endpoint does not document, a typo or a wrong case, is 400 InvalidRequestBody."""
    for body in (
        b'{"Comment": "x", "IsolatonType": "Full"}',
        b'{"Comment": "x", "isolationtype": 1}',
    ):
        assert (await refused(checking, body))[0] == "InvalidRequestBody"


async def test_a_body_that_is_not_an_object_is_invalid_request_body(checking: Client) -> None:
    """An array, a scalar, bad JSON or no body at all is 400 InvalidRequestBody."""
    for body in (b'[{"Comment": "x"}]', b'"x"', b'{"Comment": "x",}', b""):
        assert (await refused(checking, body))[0] == "InvalidRequestBody"


async def test_each_refusal_has_a_fresh_tracking_id(checking: Client) -> None:
    """Two refusals of the same body carry two tracking ids, as the API's errors do."""
    first, _ = await post(checking, b"{}")
    second, _ = await post(checking, b"{}")
    assert first.headers[TARGET_HEADER] != second.headers[TARGET_HEADER]


async def test_a_correct_body_gets_the_usual_answer(checking: Client) -> None:
    """The documented names, spelt exactly, get the simulator's ordinary 200."""
    response, _ = await post(checking, b'{"Comment": "x", "IsolationType": "Selective"}')
    assert response.status == 200
    assert (await post(checking, b'{"Comment": "x"}'))[0].status == 200


async def test_undocumented_endpoints_and_bodiless_methods_are_not_checked(
    checking: Client,
) -> None:
    """An endpoint the reference does not document, or a GET, is answered as before."""
    assert (await post(checking, b'{"anything": 1}', "/api/alerts/x/comments"))[0].status == 200
    async with checking.get(ISOLATE) as response:
        assert response.status == 200


async def test_a_directive_that_chooses_the_answer_wins(checking: Client) -> None:
    """With X-Simulate choosing the answer, the body is not checked: echo sees it unread."""
    body = b'{"comment": "x"}'
    response, raw = await post(checking, body, **{"X-Simulate": "echo"})
    assert response.status == 200
    assert orjson.loads(raw)["body_sha256"] == hashlib.sha256(body).hexdigest()
    _, raw = await post(checking, body, **{"X-Simulate": "error=InvalidInput"})
    assert orjson.loads(raw)["error"]["code"] == "InvalidInput"


async def test_bodies_are_not_checked_by_default(aiohttp_client: AiohttpClient) -> None:
    """Without check_bodies a body with typos gets the ordinary 200."""
    client = await aiohttp_client(make_app())
    assert (await post(client, b'{"comment": "x", "Typo": 1}'))[0].status == 200


def test_the_command_line_option_turns_the_check_on() -> None:
    """``--check-bodies`` sets check_bodies; without it the check is off."""
    parser = build_parser()
    assert config_from_args(parser.parse_args(["--port", "0", "--check-bodies"])).check_bodies
    assert not config_from_args(parser.parse_args(["--port", "0"])).check_bodies
