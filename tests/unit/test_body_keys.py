"""The key collector: a body's top-level keys as ``json.loads`` reads them, whatever the chunks,
no value kept, bounded, and never an exception."""

from __future__ import annotations

import itertools
import json
import os
import string
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy import body_keys
from proxy.body_keys import MAX_KEY_TEXT, MAX_KEYS, MAX_SCAN, BodyKeys, KeyCollector
from tests.planted import values

PROPERTY = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SHAPES = body_keys.SHAPES

_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
_VALUES = st.recursive(
    _LEAVES,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
_OBJECTS = st.dictionaries(st.text(max_size=12), _VALUES, max_size=8)


def collect(chunks: list[bytes], finish: bool = True) -> BodyKeys:
    """The collector's result after ``chunks`` (and the body's end, with ``finish``)."""
    collector = KeyCollector()
    for chunk in chunks:
        collector.feed(chunk)
    if finish:
        collector.finish()
    return collector.result()


def split(body: bytes, cuts: list[int]) -> list[bytes]:
    """``body`` cut at each offset in ``cuts``."""
    points = sorted({min(max(cut, 0), len(body)) for cut in cuts})
    edges = [0, *points, len(body)]
    return [body[a:b] for a, b in itertools.pairwise(edges)]


def _escaped(key: str) -> str:
    """``key`` as a JSON string with every character a ``\\u`` escape (pairs for astral ones)."""
    units = key.encode("utf-16-be")
    return (
        '"' + "".join(f"\\u{units[i]:02x}{units[i + 1]:02x}" for i in range(0, len(units), 2)) + '"'
    )


def serialize(doc: dict[str, Any], style: str, blank: str) -> bytes:
    """``doc`` written compactly, spaced with ``blank``, or with its keys all escapes."""
    if style == "json-ascii":
        return json.dumps(doc, ensure_ascii=True, separators=(",", ":")).encode()
    if style == "json-indent":
        return json.dumps(doc, ensure_ascii=False, indent=2).encode()
    members = [
        (_escaped(key) if style == "escaped" else json.dumps(key, ensure_ascii=False))
        + f"{blank}:{blank}"
        + json.dumps(value, ensure_ascii=False)
        for key, value in doc.items()
    ]
    return f"{blank}{{{blank}{f'{blank},{blank}'.join(members)}{blank}}}{blank}".encode()


@PROPERTY
@given(
    doc=_OBJECTS,
    style=st.sampled_from(["json-ascii", "json-indent", "plain", "escaped"]),
    blank=st.sampled_from(["", " ", "\n\t ", "\r\n"]),
    data=st.data(),
)
def test_keys_are_json_loads_keys_whatever_the_chunks(
    doc: dict[str, Any], style: str, blank: str, data: st.DataObject
) -> None:
    """Any JSON object, written any way and cut anywhere, gives the keys json.loads gives, in order."""
    body = serialize(doc, style, blank)
    cuts = data.draw(st.lists(st.integers(0, len(body)), max_size=12))
    seen = collect(split(body, cuts))
    assert seen.keys == tuple(json.loads(body))
    assert seen.shape == body_keys.OBJECT
    assert seen.complete


@PROPERTY
@given(
    doc=st.dictionaries(
        st.text(string.ascii_letters, min_size=1, max_size=10), values(), min_size=1, max_size=6
    ),
    data=st.data(),
)
def test_no_value_text_stays_in_the_collector(doc: dict[str, str], data: st.DataObject) -> None:
    """After every chunk, nothing the collector holds contains a value's text: only keys are kept."""
    body = json.dumps(doc).encode()
    cuts = data.draw(st.lists(st.integers(0, len(body)), max_size=12))
    collector = KeyCollector()
    for chunk in [*split(body, cuts), None]:
        if chunk is None:
            collector.finish()
        else:
            collector.feed(chunk)
        state = " ".join(repr(getattr(collector, slot)) for slot in KeyCollector.__slots__)
        for secret in doc.values():
            assert secret not in state
            assert json.dumps(secret) not in state
    assert collector.result().keys == tuple(doc)


_CORRUPTIBLE = st.builds(
    lambda doc, at, byte: (
        lambda b: b[: at % (len(b) + 1)] + bytes([byte]) + b[at % (len(b) + 1) :]
    )(json.dumps(doc).encode()),
    _OBJECTS,
    st.integers(0, 10_000),
    st.integers(0, 255),
)


@PROPERTY
@given(
    body=st.binary(max_size=300) | _CORRUPTIBLE | st.just(b'{"a": ' + b"1" * 5000 + b"}"),
    data=st.data(),
    finish=st.booleans(),
)
def test_any_bytes_never_raise(body: bytes, data: st.DataObject, finish: bool) -> None:
    """Arbitrary bytes, cut anywhere, finished or not, never raise and give a known shape; a body
    json.loads reads is never called malformed."""
    cuts = data.draw(st.lists(st.integers(0, len(body)), max_size=8))
    seen = collect(split(body, cuts), finish)
    assert seen.shape in SHAPES
    assert len(seen.keys) <= MAX_KEYS
    assert sum(map(len, seen.keys)) <= MAX_KEY_TEXT
    assert not seen.complete or seen.shape == body_keys.OBJECT
    try:
        doc = json.loads(body.decode("utf-8"), parse_constant=_no_constants)
    except ValueError:
        return
    if isinstance(doc, dict):
        assert seen.keys == tuple(doc)
        assert seen.shape == body_keys.OBJECT
        assert seen.complete
    else:
        assert seen.shape in (body_keys.ARRAY, body_keys.SCALAR)


def _no_constants(name: str) -> None:
    """NaN and Infinity are Python's extension, not JSON (RFC 8259 §6): refuse them."""
    raise ValueError(name)


def test_an_escaped_key_is_decoded_wherever_the_escape_is_cut() -> None:
    """``"\\u0043omment"`` is Comment, with the chunk boundary at every byte of the escape."""
    body = b'{"\\u0043omment": "x", "Isolation\\u0054ype": "Full"}'
    for cut in range(len(body) + 1):
        assert collect([body[:cut], body[cut:]]).keys == ("Comment", "IsolationType")


def test_a_multibyte_character_cut_in_two_is_read_whole() -> None:
    """A key with a 2-, 3- and 4-byte UTF-8 character reads the same cut at any byte."""
    body = '{"Comm\u00e9nt\u20ac\U0001f600": 1}'.encode()
    for cut in range(len(body) + 1):
        assert collect([body[:cut], body[cut:]]).keys == ("Comm\u00e9nt\u20ac\U0001f600",)


def test_only_top_level_keys_are_kept_each_once() -> None:
    """Nested keys are not top-level keys; a repeated key is kept once, where it first came."""
    body = b'{"a": {"inner": [{"deep": 1}]}, "b": [1, {"x": 2}], "a": 3, "c": null}'
    assert collect([body]).keys == ("a", "b", "c")


def test_the_shape_of_what_is_not_an_object() -> None:
    """An array, a scalar, bad JSON, blanks and nothing each have their shape, never complete."""
    cases = {
        b'[{"Comment": "x"}]': body_keys.ARRAY,
        b'"Comment"': body_keys.SCALAR,
        b"42": body_keys.SCALAR,
        b"null": body_keys.SCALAR,
        b"  \n": body_keys.MALFORMED,
        b"Comment=x": body_keys.MALFORMED,
        b"": body_keys.EMPTY,
    }
    for body, shape in cases.items():
        seen = collect([body])
        assert (seen.shape, seen.complete) == (shape, False), body


def test_a_syntax_error_keeps_the_keys_before_it() -> None:
    """A trailing comma makes the body malformed but the keys read before it stay known."""
    seen = collect([b'{"comment": "x", "IsolationType": "Full",}'])
    assert seen == BodyKeys(("comment", "IsolationType"), body_keys.MALFORMED, False)


def test_trailing_text_after_the_object_is_malformed() -> None:
    """Text after the object's end makes the body malformed, as json.loads says."""
    assert collect([b'{"a": 1}', b" x"]).shape == body_keys.MALFORMED
    assert collect([b'{"a": 1}', b" \r\n"]).shape == body_keys.OBJECT


def test_values_of_any_length_are_read_past_not_decoded() -> None:
    """A 5,000-digit number (past int()'s digit limit) and a long string are skipped, not decoded."""
    body = b'{"a": -' + b"1" * 5000 + b'.5e+3, "b": "' + b"x" * 100_000 + b'", "c": true}'
    assert collect([body]) == BodyKeys(("a", "b", "c"), body_keys.OBJECT, True)


def test_a_body_fed_one_byte_at_a_time_reads_the_same() -> None:
    """Chunks of one byte each (a caller dribbling its body) give the same keys and shape."""
    body = (
        b'\xef\xbb\xbf {"Comm\\u00e9nt" : "a\\"b\\\\", "n": -0.5E-7, "l": [true, {"x": [null]}],'
        b' "f": false, "\xc3\xa9": {"k": "}]"}}  '
    )
    seen = collect([body[i : i + 1] for i in range(len(body))])
    assert seen == BodyKeys(("Comm\u00e9nt", "n", "l", "f", "\u00e9"), body_keys.OBJECT, True)
    assert seen.keys == tuple(json.loads(body))


def test_malformed_top_level_grammar_is_found() -> None:
    """Bad numbers, literals, separators and brackets at the top level make the body malformed."""
    for body in (
        b'{"a": 01}',
        b'{"a": 1.}',
        b'{"a": -}',
        b'{"a": tru}',
        b'{"a": NaN}',
        b'{"a" 1}',
        b'{"a": 1,}',
        b'{"a": 1 "b": 2}',
        b'{"a": [1}',
        b'{"a": {"b": 1]}',
        b"{'a': 1}",
        b'{"a\\x": 1}',
        b'{"a\xff": 1}',
        b'{"a": 1',
    ):
        assert collect([body]).shape == body_keys.MALFORMED, body


def test_a_byte_order_mark_is_skipped_even_cut() -> None:
    """A UTF-8 byte order mark before the object is skipped, however the chunks cut it."""
    body = b'\xef\xbb\xbf{"Comment": "x"}'
    for cut in range(5):
        assert collect([body[:cut], body[cut:]]).keys == ("Comment",)
    assert collect([b"\xef\xbb"]).shape == body_keys.MALFORMED


def test_an_object_still_arriving_is_not_complete() -> None:
    """Before the object's end (the upstream answered first) the keys so far are not all."""
    seen = collect([b'{"IsolationType": "Full", "Comm'], finish=False)
    assert seen == BodyKeys(("IsolationType",), body_keys.OBJECT, False)
    assert collect([], finish=False) == BodyKeys((), body_keys.UNREAD, False)
    seen = collect([b'{"Comment": "x"}'], finish=False)
    assert seen == BodyKeys(("Comment",), body_keys.OBJECT, True)


def test_keys_past_the_key_count_bound_stop_the_scan() -> None:
    """Past MAX_KEYS distinct keys nothing more is kept, and the keys are not complete."""
    doc = {f"k{i}": i for i in range(MAX_KEYS + 10)}
    seen = collect([json.dumps(doc).encode()])
    assert seen.keys == tuple(doc)[:MAX_KEYS]
    assert not seen.complete


def test_key_text_past_its_bound_stops_the_scan() -> None:
    """A key that would take the kept text past MAX_KEY_TEXT is not kept, nor anything after it."""
    body = json.dumps({"Comment": 1, "k" * MAX_KEY_TEXT: 2, "IsolationType": 3}).encode()
    seen = collect([body])
    assert seen.keys == ("Comment",)
    assert not seen.complete


def test_bytes_past_the_scan_bound_are_not_read() -> None:
    """A key after MAX_SCAN bytes is never seen; the object is not complete."""
    body = b'{"Comment": "' + b"x" * MAX_SCAN + b'", "IsolationType": "Full"}'
    seen = collect([body[i : i + 65536] for i in range(0, len(body), 65536)])
    assert seen == BodyKeys(("Comment",), body_keys.OBJECT, False)


def test_an_object_ended_within_the_scan_bound_stays_complete() -> None:
    """An object that ends before MAX_SCAN keeps its keys complete though the body goes on."""
    body = b'{"Comment": "x"}' + b" " * MAX_SCAN
    seen = collect([body[i : i + 65536] for i in range(0, len(body), 65536)])
    assert seen == BodyKeys(("Comment",), body_keys.OBJECT, True)
