"""One log line per request, with what an operator needs and nothing secret."""

from __future__ import annotations

import asyncio
import io

import orjson

from proxy import logs
from tests.conftest import Stack

TOKEN = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJodHRwczovL2FwaSJ9.c2lnbmF0dXJlLXNlY3JldA"
COOKIE_SECRET = "s3ss10n-c00k1e-v4lue"
QUERY_SECRET = "qu3ry-s3cr3t-v4lue"


async def test_one_line_per_request_with_the_fields(stack: Stack) -> None:
    """Each request writes exactly one line carrying method, route, path, status, timings, sizes, id."""
    for _ in range(3):
        response = await stack.client.get(
            "/api/machines/abc", headers={"X-Simulate": "error=NotFound"}
        )
        await response.read()
    lines = stack.logs.lines("request")
    assert len(lines) == 3
    line = lines[0]
    for key in ("method", "route", "path", "status", "duration_ms", "upstream_ms", "bytes_in",
                "bytes_out", "request_id", "code", "message", "target", "timestamp", "level"):  # fmt: skip
        assert key in line, key
    assert line["path"] == "/api/machines/abc"
    assert line["route"] == "machines.get"
    assert line["status"] == 404


async def test_no_secret_reaches_logs_metrics_or_answers(stack: Stack) -> None:
    """A planted token, cookie and secret query parameter appear in no log line, metric or proxy answer."""
    secrets = (TOKEN, COOKIE_SECRET, QUERY_SECRET)
    headers = {
        "Authorization": f"Bearer {TOKEN}",
        "Cookie": f"session={COOKIE_SECRET}",
        "X-Simulate": "error=Unauthorized",
    }
    bodies = []
    for path in (
        f"/api/machines?token={QUERY_SECRET}",
        f"/api/machines?client_secret={QUERY_SECRET}&$top=1",
    ):
        response = await stack.client.get(path, headers=headers)
        await response.read()
    # Proxy-made answers: a refused target and an unreachable upstream.
    response = await stack.client.get(f"/api/%2e%2e/x?password={QUERY_SECRET}", headers=headers)
    bodies.append(await response.read())
    stack.proxy._upstream = "http://127.0.0.1:9"
    response = await stack.client.get(f"/api/machines?sig={QUERY_SECRET}", headers=headers)
    bodies.append(await response.read())
    captured = stack.logs.text + stack.metrics.exposition().decode() + b"".join(bodies).decode()
    assert len(stack.logs.lines("request")) == 4
    for secret in secrets:
        assert secret not in captured


def test_upstream_message_is_scrubbed() -> None:
    """Free text from outside loses bearer tokens, JWTs and password pairs before it is written."""
    stream = io.StringIO()
    logs.configure("json", "info", stream)
    logs.get_logger("t").info(
        "request", message=f"bad token Bearer {TOKEN} password=hunter2", authorization="Bearer x"
    )
    line = orjson.loads(stream.getvalue())
    assert TOKEN not in stream.getvalue()
    assert "hunter2" not in stream.getvalue()
    assert line["authorization"] == logs.REDACTED


def test_console_format_is_readable() -> None:
    """The console renderer writes a human line, not JSON."""
    stream = io.StringIO()
    logs.configure("console", "info", stream)
    logs.get_logger("t").info("request", route="alerts.list", status=200)
    text = stream.getvalue()
    assert "request" in text
    assert "route" in text
    assert not text.lstrip().startswith("{")


class _CountingStream(io.StringIO):
    """A text stream that counts the writes made to it."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


async def test_lines_of_one_loop_iteration_share_one_write() -> None:
    """Lines logged in one event-loop iteration reach the stream in one write, in order, by the
    time the loop has gone round once."""
    stream = _CountingStream()
    logs.configure("json", "info", stream)
    log = logs.get_logger("t")
    for i in range(5):
        log.info("request", n=i)
    assert stream.getvalue() == ""  # queued, not yet written
    await asyncio.sleep(0)
    assert [orjson.loads(line)["n"] for line in stream.getvalue().splitlines()] == list(range(5))
    assert stream.writes == 1


def test_lines_outside_a_loop_are_written_at_once() -> None:
    """Without a running loop (start-up, shutdown) each line is written when it is logged."""
    stream = _CountingStream()
    logs.configure("json", "info", stream)
    logs.get_logger("t").info("started")
    assert orjson.loads(stream.getvalue())["event"] == "started"


def test_lines_queued_on_a_stopped_loop_are_not_lost() -> None:
    """A line queued on a loop that stopped before writing it is written with the next line."""
    stream = _CountingStream()
    logs.configure("json", "info", stream)
    log = logs.get_logger("t")
    loop = asyncio.new_event_loop()
    try:
        loop.call_soon(log.info, "inside")
        loop.call_soon(loop.stop)  # runs before the write the first line queued
        loop.run_forever()
    finally:
        loop.close()
    assert stream.getvalue() == ""
    log.info("after")
    assert [orjson.loads(line)["event"] for line in stream.getvalue().splitlines()] == [
        "inside",
        "after",
    ]


def test_a_level_set_later_applies_to_loggers_already_used() -> None:
    """set_level (a reload) changes what every logger writes, one used before it included, and
    whether the request line is written, in both formats."""
    for log_format in ("json", "console"):
        stream = io.StringIO()
        logs.configure(log_format, "info", stream)
        early = logs.get_logger("early")
        request_line = logs.RequestLog()
        try:
            early.info("before")
            logs.set_level("warning")
            early.info("hidden")
            request_line.write({"status": 200})
            early.warning("shown")
            logs.set_level("debug")
            early.debug("detail")
        finally:
            logs.set_level("info")
        text = stream.getvalue()
        for seen in ("before", "shown", "detail"):
            assert seen in text, (log_format, text)
        assert "hidden" not in text
        assert "request" not in text
