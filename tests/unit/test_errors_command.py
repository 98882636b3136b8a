"""Tests for proxy.errors_command: the table it prints, the admin address it derives, and what it
refuses to take for the view."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from proxy import cli, errors_command
from proxy.errors_command import show, table

RECORD = {
    "time": "2024-05-01T08:00:00.125Z",
    "upstream": "default",
    "route": "machines.get",
    "method": "GET",
    "status": 403,
    "code": "Forbidden",
    "cause": None,
    "target": "0f1e2d3c-0000-4000-8000-000000000001",
    "request_id": "r",
    "source": "upstream",
}


def test_the_table_has_a_row_per_record_in_the_order_given() -> None:
    """One header and one row per record, in the view's order, null shown as "-"."""
    older = {**RECORD, "status": 404, "code": "NotFound", "cause": "gone", "target": "t-old"}
    lines = table([RECORD, older], 200).splitlines()
    assert [line.split() for line in lines] == [
        ["time", "upstream", "route", "status", "code", "cause", "target"],
        [
            "2024-05-01T08:00:00.125Z",
            "default",
            "machines.get",
            "403",
            "Forbidden",
            "-",
            RECORD["target"],
        ],
        ["2024-05-01T08:00:00.125Z", "default", "machines.get", "404", "NotFound", "gone", "t-old"],
    ]


def test_the_table_never_prints_a_control_character() -> None:
    """An escape sequence in a value is printed as "?", never sent to the terminal."""
    text = table([{**RECORD, "code": "\x1b[2J\x1b]0;owned\x07", "target": "a\nb"}], 5)
    assert "\x1b" not in text
    assert "\x07" not in text
    assert len(text.splitlines()) == 2


def test_an_empty_view_says_how_many_are_kept() -> None:
    """No records is one line that says so and how many the proxy keeps."""
    assert table([], 200) == "no recent errors (the proxy keeps the last 200)"


def test_an_admin_port_of_zero_asks_for_admin(tmp_path: Path, capsys: Any) -> None:
    """A config whose admin port is 0 (any free port) names no address: exit 2, and --admin is
    asked for."""
    config = tmp_path / "proxy.yaml"
    config.write_text("admin_listen: 127.0.0.1:0\n")
    assert cli.main(["errors", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "admin_listen is 127.0.0.1:0 (any free port): give the port with --admin URL" in err


def test_an_invalid_config_is_exit_two_with_its_problems(tmp_path: Path, capsys: Any) -> None:
    """A config with problems is exit 2 and its problems, as the other commands give them."""
    config = tmp_path / "proxy.yaml"
    config.write_text("admin_listen: nowhere\n")
    assert cli.main(["errors", "--config", str(config)]) == 2
    assert f"{config}: admin_listen:" in capsys.readouterr().err


@pytest.mark.parametrize(
    "answer",
    [
        web.Response(text="<html>hello</html>", content_type="text/html"),
        web.json_response({"errors": "none", "size": 5}),
        web.json_response([1, 2]),
    ],
    ids=["html", "wrong-types", "a-list"],
)
async def test_an_answer_that_is_not_the_view_is_one_line_and_exit_one(
    aiohttp_server: Callable[..., Any], capsys: Any, answer: web.Response
) -> None:
    """Something else on the port (a page, JSON of another shape) is exit 1, one line, nothing
    on stdout, even with --json."""

    async def errors(_: web.Request) -> web.Response:
        return answer

    app = web.Application()
    app.router.add_get("/errors", errors)
    server: TestServer = await aiohttp_server(app)
    base = f"http://127.0.0.1:{server.port}"
    code = await asyncio.to_thread(show, base, None, None, None, None, True)
    assert code == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        f"defender-proxy errors: {base}/errors: not the answer of a defender-proxy admin port"
    ]


async def _raw_admin(answer: bytes, pace: float = 0.0) -> tuple[asyncio.Server, str]:
    """A port that answers any request with ``answer`` as given, a byte each ``pace`` seconds
    when ``pace`` is set."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        try:
            if not pace:
                writer.write(answer)
            for index in range(len(answer) if pace else 0):
                writer.write(answer[index : index + 1])
                await writer.drain()
                await asyncio.sleep(pace)
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}"


_VIEW_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n"
HOSTILE = {
    "bad-status-line": b"garbage \x1b]0;owned\x07\x1b[2J\r\n\r\n",
    "escapes-in-reason": b"HTTP/1.1 500 \x1b[2J\x1b]0;owned\x07\r\nContent-Length: 0\r\n\r\n",
    "short-body": b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n{",
    "utf-16-json": _VIEW_HEAD + '{"errors": [], "size": 1}'.encode("utf-16"),
    "deep-json": _VIEW_HEAD + b'{"errors": ' + b"[" * 100_000,
    "c1-and-bidi-in-json": _VIEW_HEAD
    + '{"errors": [{"code": "\u009b2J\u202eX"}], "size": 1, "x": "\u009b2J"}'.encode(),
}


@pytest.mark.parametrize("as_json", [False, True], ids=["table", "json"])
@pytest.mark.parametrize("answer", HOSTILE.values(), ids=HOSTILE.keys())
async def test_a_hostile_answer_never_raises_nor_reaches_the_terminal_raw(
    capsys: Any, answer: bytes, as_json: bool
) -> None:
    """A broken status line, escapes in the reason, a short body, UTF-16, deep nesting or C1/bidi
    characters: exit 0 or 1, nothing raised, and only printable characters on stdout and stderr."""
    server, base = await _raw_admin(answer)
    async with server:
        code = await asyncio.to_thread(show, base, None, None, None, None, as_json)
    out, err = capsys.readouterr()
    assert code in (0, 1)
    for text in (out, err):
        assert all(line.isprintable() for line in text.splitlines()), repr(text)
        assert "Traceback" not in text


async def test_an_answer_trickled_past_the_timeout_is_given_up(
    capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The timeout bounds the whole fetch, not each read: a view sent a byte at a time, each
    within the timeout, is exit 1 with one line once the timeout has passed."""
    monkeypatch.setattr(errors_command, "TIMEOUT", 0.3)
    body = b'{"errors": [], "size": 1}'
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    server, base = await _raw_admin(answer, pace=0.05)
    async with server:
        code = await asyncio.to_thread(show, base, None, None, None, None, False)
    out, err = capsys.readouterr()
    assert code == 1
    assert out == ""
    assert len(err.splitlines()) == 1
