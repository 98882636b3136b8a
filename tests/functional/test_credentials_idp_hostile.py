"""A hostile or broken identity provider, callers leaving a slow mint, and the credential file
attacked: the proxy never sends what is not a bearer token, never fails otherwise than with its
503, keeps its metric's labels bounded, writes no secret, and keeps serving the token in hand.

The provider's answers are planned verbatim with ``POST /_sim/identity/answer``; the token
source's clock is moved past each back-off (``Front.later``) instead of sleeping through it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from proxy.tokens import COUNTED_FROM_START, MAX_CODES
from tests.conftest import LogCapture
from tests.credkit import (
    TOKENLESS,
    Front,
    holding,
    link_dev_zero,
    make_directory,
    make_fifo,
    until,
)
from tests.httpraw import RawResponse
from tests.idpkit import SECRET, Files

FAILED = "defender_proxy_token_requests_total"
JWT = "eyJhbGciOiJub25lIn0.eyJleHAiOjF9.c2lnbmF0dXJlLW9mLWEtand0"


def _issued(token: object = JWT, **more: Any) -> dict[str, Any]:
    return {"body": {"token_type": "Bearer", "expires_in": 3599, "access_token": token, **more}}


# Answers that must be a failed mint (counted as code "unknown"), never a header sent upstream.
ANSWERS: dict[str, dict[str, Any]] = {
    "a token with CR LF and a header after it": _issued(f"{JWT}\r\nX-Injected: 1"),
    "a token with a space": _issued("abc def"),
    "a token of 100 KB": _issued("a" * 100_000),
    "a token of one character and 100 KB of padding": _issued("a" + "=" * 100_000),
    "an empty token": _issued(""),
    "a token that is a number": _issued(12345),
    "a token that is null": _issued(None),
    "a token that is a list": _issued(["a"]),
    "no token": {"body": {"token_type": "Bearer", "expires_in": 3599}},
    "expires_in 0": _issued(expires_in=0),
    "expires_in negative": _issued(expires_in=-5),
    "expires_in of 30,000 years": _issued(expires_in=10**12),
    "expires_in a word": _issued(expires_in="soon"),
    "expires_in null": _issued(expires_in=None),
    "a 200 of HTML": {"text": "<html><body>Sign in</body></html>", "content_type": "text/html"},
    "a 200 of a JSON list": {"body": [1, 2]},
    "a 200 of cut JSON": {"text": '{"access_token": "', "content_type": "application/json"},
    "a 400 of plain text": {"status": 400, "text": "no"},
    "a 500 with nothing": {"status": 500, "text": ""},
}


@pytest.mark.parametrize("case", list(ANSWERS))
async def test_an_answer_that_is_no_usable_token_is_a_failed_mint(front: Front, case: str) -> None:
    """Each answer gives the waiting caller the proxy's 503 (never a 500), counted as a failed
    token request with code ``unknown``; nothing reaches the API; after the back-off the next
    caller is served with a proper token."""
    await front.idp.control("POST", "/_sim/identity/answer", ANSWERS[case])
    refused = await front.call()
    assert refused.status == 503
    assert refused.header("retry-after") is not None
    assert "could not obtain a token" in refused.body.decode()
    assert front.received == []
    assert front.sample(FAILED, result="failed", code="unknown") == 1
    assert front.logs.lines("unexpected error") == []
    front.later(120)
    served = await front.call()
    assert served.status == 200
    (received,) = front.received
    assert received.values("authorization") == [f"Bearer {await front.token()}"]
    assert received.values("x-injected") == []
    assert front.sample(FAILED, result="ok", code="") == 1


async def test_the_refresher_outlives_an_answer_that_is_no_token(
    files: Files, tmp_path: Path, captured_logs: LogCapture
) -> None:
    """A first mint (in the background, as at start) answered with a number for a token: the
    refresher counts it failed and, after the back-off, mints again by itself."""
    async with holding(files, tmp_path, captured_logs) as held:
        await held.idp.control("POST", "/_sim/identity/answer", _issued(12345))
        await held.source.start()
        await until(lambda: _outcomes(held, ["answered", "issued"]))
        assert held.sample(FAILED, result="failed", code="unknown") == 1
        assert held.sample(FAILED, result="ok", code="") == 1
        assert (await held.call()).status == 200


async def _outcomes(held: Front, expected: list[str]) -> bool:
    return [request["outcome"] for request in await held.token_requests()] == expected


async def test_a_secret_or_a_jwt_in_an_error_answer_reaches_no_log_and_no_503(
    front: Front,
) -> None:
    """Error answers holding the client secret and a JWT in their description, error, error_uri
    and a header: the 503 names the code alone; no log line, metric or /errors entry holds
    either."""
    leaky = {
        "error": "invalid_client",
        "error_description": f"AADSTS7000215: got secret {SECRET} and token {JWT}",
        "error_codes": [7000215],
        "error_uri": f"https://login.example/error?secret={SECRET}",
    }
    plans = [
        {"status": 401, "body": leaky, "headers": {"X-Echo": SECRET}},
        {"status": 400, "body": {**leaky, "error": f"bad\r\n{SECRET}", "error_codes": ["x"]}},
        {"status": 400, "text": f"AADSTS90002 {SECRET} {JWT}"},
    ]
    answers: list[RawResponse] = []
    for plan in plans:
        await front.idp.control("POST", "/_sim/identity/answer", plan)
        answers.append(await front.call())
        front.later(600)
    assert [answer.status for answer in answers] == [503] * 3
    messages = [answer.body.decode() for answer in answers]
    assert "AADSTS7000215" in messages[0]
    assert "AADSTS90002" in messages[2]
    shown = "".join(messages) + front.written()
    assert len(front.logs.lines("token request failed")) == 3
    assert SECRET not in shown
    assert JWT not in shown
    assert JWT.rsplit(".", 1)[1] not in shown


async def test_distinct_error_codes_without_end_keep_the_metric_bounded(front: Front) -> None:
    """Three times MAX_CODES failed token requests, each with an AADSTS code never seen before:
    the first MAX_CODES are counted by code, every later one as ``other``; no other series
    exists beside those made at 0 from the start."""
    total = 3 * MAX_CODES
    for number in range(total):
        code = 5_000_000 + number
        body = {"error": "invalid_client", "error_codes": [code]}
        await front.idp.control("POST", "/_sim/identity/answer", {"status": 400, "body": body})
        assert (await front.call()).status == 503
        front.later(600)
    codes = {
        sample.labels["code"]: sample.value
        for metric in front.metrics.registry.collect()
        if metric.name == FAILED.removesuffix("_total")
        for sample in metric.samples
        if sample.name == FAILED and sample.labels["result"] == "failed"
    }
    counted = {code for code, value in codes.items() if value}
    assert len(counted) == MAX_CODES + 1
    assert set(codes) <= counted | set(COUNTED_FROM_START)
    assert codes["other"] == total - MAX_CODES
    assert sum(codes.values()) == total
    assert front.received == []


async def test_callers_leaving_a_slow_mint_leave_it_to_finish_for_the_next(front: Front) -> None:
    """200 tokenless callers wait on a mint the provider answers slowly, then all hang up: the
    mint completes, each left a 499 line, nothing reached the API for them, and the next caller
    is served with that token without another token request."""
    await front.idp.control("POST", "/_sim/identity/delay", {"count": 1, "seconds": 3})
    callers = [await asyncio.open_connection("127.0.0.1", front.port) for _ in range(200)]
    try:
        for _, writer in callers:  # connected first, so that all 200 arrive within the delay
            writer.write(TOKENLESS)
        await until(lambda: _waiting(front, 200))
        await until(lambda: _asked(front, 1))
    finally:
        for _, writer in callers:
            writer.transport.abort()
    await until(lambda: _waiting(front, 0))
    await until(lambda: _outcomes(front, ["issued"]))
    served = await front.call()
    assert served.status == 200
    assert len(await front.token_requests()) == 1
    assert len(front.received) == 1
    lines = front.logs.lines("request")
    assert sorted(line["status"] for line in lines) == [200] + [499] * 200


async def _asked(front: Front, count: int) -> bool:
    return await front.asked() == count


async def _waiting(front: Front, count: int) -> bool:
    return front.proxy.in_flight == count


def _ten_megabytes(path: Path) -> None:
    path.write_bytes(b"s" * (10 << 20))


def _removed(path: Path) -> None:
    del path  # the file is gone, and nothing takes its place


REPLACEMENTS: dict[str, Callable[[Path], None]] = {
    "a FIFO": make_fifo,
    "a directory": make_directory,
    "a symlink to /dev/zero": link_dev_zero,
    "a 10 MB file": _ten_megabytes,
    "nothing": _removed,
}


@pytest.mark.parametrize("replacement", list(REPLACEMENTS))
async def test_a_secret_file_replaced_by_something_unreadable_keeps_the_token_serving(
    files: Files, tmp_path: Path, captured_logs: LogCapture, replacement: str
) -> None:
    """The secret file replaced, after the first mint, by a FIFO, a directory, /dev/zero, 10 MB
    or nothing: the change is noticed and its mint fails as ``credential_file`` (the proxy never
    blocks on it, never reads it whole), while the token in hand serves every caller."""
    async with holding(files, tmp_path, captured_logs, start=True) as held:
        await until(lambda: _outcomes(held, ["issued"]))
        held.secret_file.unlink()
        REPLACEMENTS[replacement](held.secret_file)
        await until(lambda: _failed_as(held, "credential_file"))
        answers = [await held.call() for _ in range(3)]
        assert [answer.status for answer in answers] == [200] * 3
        token = await held.token()
        assert {tuple(r.values("authorization")) for r in held.received} == {(f"Bearer {token}",)}
        (failed,) = held.logs.lines("token request failed")
        assert failed["token_still_usable"] is True
        assert len(await held.token_requests()) == 1


async def _failed_as(held: Front, code: str) -> bool:
    return held.sample(FAILED, result="failed", code=code) >= 1
