"""The $batch answer scanner: the same inner answers however the bytes are split, bounded memory,
never an exception on hostile input."""

from __future__ import annotations

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.batch_answer import MAX_TEXT, InnerAnswer, Scanner

ANSWER = orjson.dumps(
    {
        "responses": [
            {"id": "1", "status": 200, "headers": {"a": "b"}, "body": {"value": ['x"}]\\']}},
            {
                "id": "2",
                "status": 429,
                "headers": {"Retry-After": "7"},
                "body": {"error": {"code": "TooManyRequests", "message": "max 3"}},
            },
            {"body": "c3RyaW5n", "headers": {}, "status": 404, "id": 3},
        ]
    },
    option=orjson.OPT_INDENT_2,
)


def scan(raw: bytes, size: int, cap: int = 4096) -> tuple[list[InnerAnswer], Scanner]:
    """Feed ``raw`` in pieces of ``size`` bytes."""
    scanner = Scanner(cap)
    found: list[InnerAnswer] = []
    for start in range(0, len(raw), size):
        found += scanner.feed(raw[start : start + size])
    return found, scanner


def test_every_split_gives_the_same_answers() -> None:
    """Ids, statuses, Retry-After and bodies come out the same for pieces of any size."""
    whole, scanner = scan(ANSWER, len(ANSWER))
    assert scanner.done
    assert not scanner.failed
    assert [(a.id, a.status, a.retry_after) for a in whole] == [
        ("1", 200, None),
        ("2", 429, "7"),
        ("3", 404, None),
    ]
    assert orjson.loads(whole[1].body)["error"]["code"] == "TooManyRequests"
    assert whole[2].body == b'"c3RyaW5n"'
    for size in range(1, 40):
        assert scan(ANSWER, size)[0] == whole


def test_a_huge_body_is_kept_only_up_to_the_cap() -> None:
    """A body of megabytes keeps ``cap`` bytes, marked incomplete; a huge id is cut."""
    raw = orjson.dumps(
        {"responses": [{"id": "x" * 10_000, "status": 500, "body": {"m": "y" * 3_000_000}}]}
    )
    (answer,), scanner = scan(raw, 65536, cap=100)
    assert len(answer.body) == 100
    assert not answer.complete
    assert len(answer.id) <= MAX_TEXT
    assert scanner.done


def test_an_answer_of_another_shape_stops_the_scan_quietly() -> None:
    """Not an object at the top: the scan fails, without an exception and without answers."""
    found, scanner = scan(b"[1, 2, 3]", 3)
    assert found == []
    assert scanner.failed


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.integers(min_value=1, max_value=50))
def test_any_bytes_never_raise(raw: bytes, size: int) -> None:
    """Whatever the upstream sends, feeding it never raises."""
    scan(raw, size)


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=len(ANSWER)), st.binary(max_size=20))
def test_a_corrupted_answer_never_raises(at: int, junk: bytes) -> None:
    """Bytes spliced into a real answer never make the scanner raise."""
    scan(ANSWER[:at] + junk + ANSWER[at:], 7)
