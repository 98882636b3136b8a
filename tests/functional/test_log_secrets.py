"""Secrets an upstream echoes in its error, or a caller puts in a path or request id, reach no log
line of the real proxy, in the JSON format or the console one."""

from __future__ import annotations

import base64
import io
import string
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy import logs
from tests.conftest import Stack
from tests.httpraw import exchange
from tests.planted import KEYS, Plant, jwts, plants

REDACTED = logs.REDACTED
# The caller's request id is only taken when it is a token of these characters.
ID_CHARS = string.ascii_letters + string.digits + "._|-"


@dataclass
class Rendered:
    """A proxy stack and the text its log lines were rendered to."""

    stack: Stack
    stream: io.StringIO

    @property
    def text(self) -> str:
        return self.stream.getvalue()

    def clear(self) -> None:
        self.stream.seek(0)
        self.stream.truncate()


async def _answer_planted(request: web.Request) -> web.Response:
    """A 400 whose body is the envelope the caller put, base64url-encoded, in ``X-Plant``, with
    ``X-Plant-Request-Id`` (when sent) as its ``request-id`` header."""
    body = base64.urlsafe_b64decode(request.headers.get("X-Plant", ""))
    response = web.Response(status=400, body=body, content_type="application/json")
    if "X-Plant-Request-Id" in request.headers:
        response.headers["request-id"] = request.headers["X-Plant-Request-Id"]
    return response


@pytest.fixture
async def planting_upstream(aiohttp_server: Callable[..., Any]) -> TestServer:
    """A raw upstream on loopback that answers every request with the error envelope it was sent."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", _answer_planted)
    server: TestServer = await aiohttp_server(app)
    return server


@pytest.fixture
async def rendered(
    make_stack: Callable[..., Any], planting_upstream: TestServer
) -> dict[str, Rendered]:
    """Two proxies in front of the planting upstream: one logging JSON, one the console format."""
    upstream = f"http://127.0.0.1:{planting_upstream.port}"
    json_stack: Stack = await make_stack(upstream=upstream)
    console = io.StringIO()
    logs.configure("console", "info", console)  # the next proxy's request line takes this format
    console_stack: Stack = await make_stack(upstream=upstream)
    return {
        "json": Rendered(json_stack, json_stack.logs.stream),
        "console": Rendered(console_stack, console),
    }


def _envelope(code: str, message: str, target: str = "", inner_code: str = "") -> str:
    error: dict[str, Any] = {"code": code, "message": message, "target": target}
    if inner_code:
        error["innerError"] = {"code": inner_code}
    return base64.urlsafe_b64encode(orjson.dumps({"error": error})).decode()


async def _send(
    stack: Stack,
    path: str,
    plant: str,
    request_id: str | None = None,
    upstream_request_id: str | None = None,
) -> tuple[int, bytes]:
    """One GET of ``path`` (sent exactly as given) through the proxy; its status and body."""
    head = [f"GET {path} HTTP/1.1", "Host: proxy", f"X-Plant: {plant}", "Connection: close"]
    if request_id is not None:
        head.append(f"client-request-id: {request_id}")
    if upstream_request_id is not None:
        head.append(f"X-Plant-Request-Id: {upstream_request_id}")
    assert stack.client.server.port is not None
    raw = ("\r\n".join(head) + "\r\n\r\n").encode()
    answer = await exchange(stack.client.server.port, raw)
    return answer.status, answer.body


@pytest.mark.parametrize("log_format", ["json", "console"])
@pytest.mark.parametrize(
    ("message", "secret"),
    [
        ("Invalid grant: code=0.AXoA7k2-xY_z9.Qm4 was already redeemed", "0.AXoA7k2-xY_z9.Qm4"),
        ("Rejected header Cookie: session=s3ss10n-V4lue; theme=dark", "s3ss10n-V4lue"),
        ("Rejected Authorization: Basic dXNlcjpwYXNzd29yZDEyMw==", "dXNlcjpwYXNzd29yZDEyMw"),
        ('Unexpected body {"client_secret": "Qx7~aB3.9fK_2mZ"}', "Qx7~aB3.9fK_2mZ"),
        ('Unexpected header {"x-api-key": "ak_live_0123456789abcdef"}', "ak_live_0123456789abcdef"),
    ],
)
async def test_an_echoed_secret_in_an_upstream_400_is_not_logged(
    rendered: dict[str, Rendered], log_format: str, message: str, secret: str
) -> None:
    """An upstream 400 whose message echoes a credential is logged without it, in either format;
    the caller still gets the upstream's bytes unchanged."""
    out = rendered[log_format]
    plant = _envelope("BadRequest", message)
    status, body = await _send(out.stack, "/api/machines/abc", plant)
    assert status == 400
    assert body == base64.urlsafe_b64decode(plant)
    assert secret not in out.text
    assert REDACTED in out.text
    assert "BadRequest" in out.text


@pytest.mark.parametrize("log_format", ["json", "console"])
@pytest.mark.parametrize(
    ("path", "secret"),
    [
        ("/api/machines/x%3Ftoken=t0k3n-V4lue", "t0k3n-V4lue"),
        ("/api/machines/x%3Ftoken%3Dt0k3n-V4lue", "t0k3n-V4lue"),
        ("/api/machines/x;sig=s1gV4lue0", "s1gV4lue0"),
        ("/api/machines/x;sig=s1gV4lue0/isolate", "s1gV4lue0"),
    ],
)
async def test_a_secret_in_the_path_is_not_logged(
    rendered: dict[str, Rendered], log_format: str, path: str, secret: str
) -> None:
    """A secret in the path, whether it shows raw or once decoded, is logged in neither format."""
    out = rendered[log_format]
    await _send(out.stack, path, _envelope("NotFound", "Machine not found"))
    assert "machines" in out.text
    assert secret not in out.text


async def test_an_ordinary_error_is_logged_as_it_came(rendered: dict[str, Rendered]) -> None:
    """An ordinary upstream error keeps its code, message, target and path word for word."""
    out = rendered["json"]
    target = "6c1f7a2e-0b3d-4e5f-8a9b-0c1d2e3f4a5b"
    path = "/api/machines/1e5ad6b8-52a3-4bb6-bd2a-0a5b1b9a2d41"
    await _send(out.stack, path, _envelope("InvalidODataQuery", "Invalid ODataQuery", target))
    [line] = out.stack.logs.lines("request")
    assert (line["path"], line["code"], line["message"], line["target"]) == (
        path, "InvalidODataQuery", "Invalid ODataQuery", target
    )  # fmt: skip


_request_ids = jwts(small=True) | st.builds(
    lambda key, value: Plant(f"{key}:{value}", (value,)),
    st.sampled_from([k for k in KEYS if all(c in ID_CHARS for c in k)]),
    st.text(ID_CHARS, min_size=6, max_size=40).map(lambda v: "Q7" + v),
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    message=plants().filter(lambda p: len(p.text) <= 256),
    target=plants().filter(lambda p: len(p.text) <= 128),
    code=plants(compact=True),
    inner_code=plants(compact=True),
    path=plants(),
    request_id=_request_ids,
    target_in_header=st.booleans(),
)
async def test_no_planted_secret_reaches_a_log_line_through_the_proxy(
    rendered: dict[str, Rendered],
    message: Plant,
    target: Plant,
    code: Plant,
    inner_code: Plant,
    path: Plant,
    request_id: Plant,
    target_in_header: bool,
) -> None:
    """Generated secrets in the upstream's code, message, target (in the envelope or its request-id
    header) and inner code, in the path and in the caller's request id, all at once, appear in
    neither the JSON nor the console rendering."""
    in_body = "" if target_in_header else target.text
    plant = _envelope(code.text, message.text, in_body, inner_code.text)
    in_header = target.text if target_in_header else None
    sent = "/api/machines/" + quote(path.text, safe="/")
    for out in rendered.values():
        out.clear()
        status, _ = await _send(out.stack, sent, plant, request_id.text, in_header)
        assert status == 400
        assert "request" in out.text
        for planted in (message, target, code, inner_code, path, request_id):
            for secret in planted.secrets:
                assert secret not in out.text, (planted, out.text)
