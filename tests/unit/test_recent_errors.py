"""Tests for proxy.recent_errors: the ring of recent error answers and the /errors view of it."""

from __future__ import annotations

import itertools
from typing import Any

import orjson
import pytest
from multidict import CIMultiDict, MultiDict, MultiDictProxy

from proxy.catalogue import RouteSpec
from proxy.config import Limits, parse_settings
from proxy.errors import PROXY_HEADER
from proxy.metrics import Metrics
from proxy.outcome import Outcome, Recorder
from proxy.recent_errors import MAX_FIELD, QueryError, RecentErrors, answer, iso_time, read_query
from tests.conftest import LogCapture

JWT = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJzZWNyZXQtdXNlciJ9.c2lnbmF0dXJlLXNlY3JldA"
SECRET = "s3cr3t-Value-42"


def ticking(start: float = 1_700_000_000.0) -> Any:
    """A clock that moves on by a quarter second each time it is read."""
    counter = itertools.count()
    return lambda: start + 0.25 * next(counter)


def outcome(status: int, target: str = "", code: str = "", route: str = "machines.get") -> Outcome:
    """An outcome answered by the upstream with ``status`` and, for an error, its fields."""
    done = Outcome("GET", "/api/machines/1", "req-1", route=RouteSpec(route, (), ()))
    done.status, done.source = status, "upstream"
    if code or target:
        done.error = {"code": code, "message": "m", "target": target}
    return done


def add(ring: RecentErrors, status: int, target: str, route: str = "machines.get") -> None:
    """Keep one upstream error with ``status`` and ``target``."""
    ring.add("default", route, "GET", status, "Forbidden", "", target, "req", "upstream")


def view(ring: RecentErrors, **query: str) -> tuple[int, Any]:
    """The status and parsed body of ``GET /errors?query`` over ``ring``."""
    response = answer(ring, MultiDictProxy(MultiDict(query)))
    assert response.body is not None
    assert isinstance(response.body, bytes)
    return response.status, orjson.loads(response.body)


def test_the_ring_keeps_only_the_last_size_errors() -> None:
    """Past its size the ring drops the oldest records: it never grows beyond ``size``."""
    ring = RecentErrors(3, ticking())
    for n in range(5):
        add(ring, 403, f"t{n}")
    assert len(ring) == 3
    assert [record.target for record in ring.newest()] == ["t4", "t3", "t2"]


def test_records_are_listed_newest_first_with_their_time() -> None:
    """The view lists the last error first, each stamped in UTC with milliseconds and Z."""
    ring = RecentErrors(10, ticking())
    add(ring, 403, "first")
    add(ring, 404, "second")
    status, body = view(ring)
    assert status == 200
    assert body["size"] == 10
    assert [(e["target"], e["status"], e["time"]) for e in body["errors"]] == [
        ("second", 404, "2023-11-14T22:13:20.250Z"),
        ("first", 403, "2023-11-14T22:13:20.000Z"),
    ]


def test_iso_time_keeps_milliseconds_across_a_second() -> None:
    """A time just short of a second is written with its milliseconds, never rounded up into the
    next second."""
    assert iso_time(1_700_000_000.9999) == "2023-11-14T22:13:20.999Z"
    assert iso_time(0.0) == "1970-01-01T00:00:00.000Z"


def test_limit_gives_the_newest_k() -> None:
    """``limit`` K lists the K newest records, still newest first."""
    ring = RecentErrors(10, ticking())
    for n in range(6):
        add(ring, 403, f"t{n}")
    _, body = view(ring, limit="2")
    assert [e["target"] for e in body["errors"]] == ["t5", "t4"]


def test_status_and_route_filter_before_the_limit() -> None:
    """``status`` and ``route`` keep only matching records; ``limit`` then counts matches only."""
    ring = RecentErrors(10, ticking())
    add(ring, 403, "a", route="machines.get")
    add(ring, 404, "b", route="alerts.list")
    add(ring, 403, "c", route="alerts.list")
    add(ring, 403, "d", route="machines.get")
    add(ring, 404, "e", route="machines.get")
    _, body = view(ring, status="403")
    assert [e["target"] for e in body["errors"]] == ["d", "c", "a"]
    _, body = view(ring, route="alerts.list")
    assert [e["target"] for e in body["errors"]] == ["c", "b"]
    _, body = view(ring, status="403", route="machines.get", limit="1")
    assert [e["target"] for e in body["errors"]] == ["d"]


def test_the_record_holds_exactly_the_documented_fields() -> None:
    """A record has time, upstream, route, method, status, code, cause, target, request_id and
    source; an empty code, cause or target is null."""
    ring = RecentErrors(5, ticking())
    ring.add("graph", "graph.security", "POST", 499, "", "", "", "r-1", "proxy")
    _, body = view(ring)
    assert body["errors"] == [
        {
            "time": "2023-11-14T22:13:20.000Z",
            "upstream": "graph",
            "route": "graph.security",
            "method": "POST",
            "status": 499,
            "code": None,
            "cause": None,
            "target": None,
            "request_id": "r-1",
            "source": "proxy",
        }
    ]


def test_observe_takes_the_outcomes_code_target_and_cause() -> None:
    """An error outcome's code and target (from ``outcome.error``) and its one-word cause are kept;
    its message and path are not."""
    ring = RecentErrors(5, ticking())
    done = outcome(403, target="t-403", code="Forbidden")
    done.cause = "missing_role"
    ring.observe("default", done)
    _, body = view(ring)
    [record] = body["errors"]
    assert (record["code"], record["target"], record["cause"]) == (
        "Forbidden",
        "t-403",
        "missing_role",
    )
    assert (record["route"], record["source"], record["request_id"]) == (
        "machines.get",
        "upstream",
        "req-1",
    )
    assert "/api/machines" not in orjson.dumps(body).decode()


@pytest.mark.parametrize("status", [200, 204, 304, 399])
def test_successes_and_redirects_leave_no_record(status: int) -> None:
    """An answer under 400 is never kept."""
    ring = RecentErrors(5, ticking())
    ring.observe("default", outcome(status))
    assert len(ring) == 0


def test_size_zero_keeps_nothing_and_the_view_says_it_is_off() -> None:
    """With ``limits.recent_errors: 0`` nothing is kept and /errors is a 404 that says why."""
    ring = RecentErrors(0, ticking())
    ring.observe("default", outcome(403, target="t", code="Forbidden"))
    add(ring, 500, "u")
    assert len(ring) == 0
    status, body = view(ring)
    assert status == 404
    assert "limits.recent_errors is 0" in body["error"]["message"]


def test_the_default_size_and_its_bounds_come_from_the_config() -> None:
    """``limits.recent_errors`` defaults to 200 and takes 0 (off) to 10000."""
    assert Limits().recent_errors == 200
    for size in (0, 10_000):
        settings = parse_settings({"limits": {"recent_errors": size}}, environ={})
        assert settings.limits.recent_errors == size


def test_long_values_are_cut_to_the_field_cap() -> None:
    """Code, target and method from outside are kept at most ``MAX_FIELD`` characters long."""
    ring = RecentErrors(5, ticking())
    ring.add("default", "other", "M" * 500, 400, "C" * 500, "", "T" * 500, "r", "upstream")
    [record] = ring.newest()
    assert (len(record.code), len(record.target), len(record.method)) == (MAX_FIELD,) * 3


@pytest.mark.parametrize(
    ("code", "target"),
    [
        (f"client_secret={SECRET}", f"Bearer {JWT}"),
        (JWT, f"client_secret={SECRET}"),
        (f"access_token={SECRET}", f"x{JWT}"),
    ],
)
def test_secrets_in_an_upstream_error_never_come_out(
    captured_logs: LogCapture, code: str, target: str
) -> None:
    """A bearer token or a client_secret planted in an upstream error's code and target, through
    the real classifier and recorder, is redacted in the view, and so is one handed in directly."""
    ring = RecentErrors(5, ticking())
    recorder = Recorder("default", Metrics(), 2**20, ring)
    body = orjson.dumps({"error": {"code": code, "message": "no", "target": target}})
    done = outcome(401)
    recorder.upstream_error(CIMultiDict(), 401, body, True, done)
    recorder.observe(done, 0.001)
    ring.add("default", "other", "GET", 401, code, "", target, "r", "upstream")
    assert len(ring) == 2
    _, shown = view(ring)
    text = orjson.dumps(shown).decode()
    for secret in (SECRET, JWT, JWT[:20], "c2lnbmF0dXJl"):
        assert secret not in text
    assert "[redacted]" in text


def test_the_recorder_keeps_errors_only_when_given_a_ring(captured_logs: LogCapture) -> None:
    """A recorder without a ring records nothing anywhere but its line; with one, each error once."""
    ring = RecentErrors(5, ticking())
    Recorder("a", Metrics(), 1024).observe(outcome(403, "t-a", "Forbidden"), 0.0)
    Recorder("b", Metrics(), 1024, ring).observe(outcome(403, "t-b", "Forbidden"), 0.0)
    Recorder("b", Metrics(), 1024, ring).observe(outcome(200), 0.0)
    assert [(r.upstream, r.target) for r in ring.newest()] == [("b", "t-b")]


@pytest.mark.parametrize(
    ("query", "problem"),
    [
        ({"limit": "0"}, "limit: expected a whole number from 1 to 50, got '0'"),
        ({"limit": "51"}, "limit: expected a whole number from 1 to 50, got '51'"),
        ({"limit": "ten"}, "limit: expected a whole number from 1 to 50, got 'ten'"),
        ({"limit": "１"}, "limit: expected a whole number from 1 to 50, got '１'"),
        ({"limit": " 5"}, "limit: expected a whole number from 1 to 50, got ' 5'"),
        ({"limit": "9" * 400}, "limit: expected a whole number from 1 to 50, got '999"),
        ({"status": "200"}, "status: expected a whole number from 400 to 599, got '200'"),
        ({"status": "4xx"}, "status: expected a whole number from 400 to 599, got '4xx'"),
        ({"route": "a b"}, "route: expected a route name (1-64 of A-Z a-z 0-9 _ . -), got 'a b'"),
        ({"route": ""}, "route: expected a route name"),
        ({"since": "1h"}, "unknown query parameter 'since' (known: limit, status, route)"),
    ],
)
def test_a_bad_query_is_a_problem_that_says_which(query: dict[str, str], problem: str) -> None:
    """Each unreadable query parameter is refused with its name, the accepted values and the value."""
    with pytest.raises(QueryError) as caught:
        read_query(MultiDictProxy(MultiDict(query)), 50)
    assert str(caught.value).startswith(problem)


def test_a_parameter_given_twice_is_refused() -> None:
    """``limit`` given twice is a problem, not a silent choice of one."""
    with pytest.raises(QueryError, match="limit: given 2 times"):
        read_query(MultiDictProxy(MultiDict([("limit", "1"), ("limit", "2")])), 50)


def test_a_bad_query_is_a_400_in_the_defender_envelope() -> None:
    """/errors answers a bad query with 400, code BadRequest, a target and the proxy's header."""
    ring = RecentErrors(5, ticking())
    response = answer(ring, MultiDictProxy(MultiDict({"limit": "6"})))
    assert response.status == 400
    assert response.headers[PROXY_HEADER] == "BadRequest"
    assert isinstance(response.body, bytes)
    error = orjson.loads(response.body)["error"]
    assert error["code"] == "BadRequest"
    assert error["message"] == "limit: expected a whole number from 1 to 5, got '6'"
    assert error["target"]
