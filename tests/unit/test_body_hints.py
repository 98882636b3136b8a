"""The body hints: each kind, the threshold of a typo, what a hint may show, and the one text."""

from __future__ import annotations

import difflib
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from proxy import body_keys
from proxy.body_hints import (
    CASE,
    CUTOFF,
    MAX_FUZZY,
    MAX_NAME,
    MAX_TEXT,
    MISSING,
    MISSPELT,
    NOT_OBJECT,
    Hint,
    compare,
    joined,
    shown,
    triggers,
)
from proxy.body_keys import BodyKeys
from proxy.reference import ENDPOINTS, REFERENCE, Param

ISOLATE = (Param("Comment", True), Param("IsolationType"))
SHAPES = body_keys.SHAPES


def obj(*keys: str, complete: bool = True) -> BodyKeys:
    """A JSON object with ``keys``, read to its end unless told otherwise."""
    return BodyKeys(keys, body_keys.OBJECT, complete)


def test_a_correct_body_gets_no_hint() -> None:
    """A body with the documented names, exactly, gets no hint; without the optional one too."""
    assert compare(obj("Comment", "IsolationType"), ISOLATE) == []
    assert compare(obj("Comment"), ISOLATE) == []


def test_a_key_in_the_wrong_case_is_named_with_its_right_case() -> None:
    """``comment`` for ``Comment`` is a case hint, and the required Comment is not also missing."""
    assert compare(obj("comment", "IsolationType"), ISOLATE) == [
        Hint(CASE, "body parameter 'comment' should be 'Comment'")
    ]
    assert compare(obj("Comment", "ISOLATIONTYPE"), ISOLATE) == [
        Hint(CASE, "body parameter 'ISOLATIONTYPE' should be 'IsolationType'")
    ]


def test_a_typo_is_a_misspelt_hint_with_the_documented_name() -> None:
    """An unknown key one letter off a documented name asks whether that name was meant."""
    assert compare(obj("Coment"), ISOLATE) == [
        Hint(MISSPELT, "body parameter 'Coment' is not documented: did you mean 'Comment'?")
    ]
    assert compare(obj("Comment", "isolatontype"), ISOLATE) == [
        Hint(
            MISSPELT,
            "body parameter 'isolatontype' is not documented: did you mean 'IsolationType'?",
        )
    ]
    assert [hint.kind for hint in compare(obj("Commnet"), ISOLATE)] == [MISSPELT]


def test_short_or_unrelated_names_are_no_typo() -> None:
    """Names far from every documented one (short ones that share a letter included) get no hint."""
    params = (Param("Id"), Param("Type"), Param("Value"))
    assert compare(obj("Ip", "Title", "Action", "x", "Severity"), params) == []
    assert difflib.SequenceMatcher(None, "ip", "id").ratio() < CUTOFF


def test_a_missing_required_parameter_is_named() -> None:
    """A required parameter the object lacks, with nothing else to explain it, is missing."""
    assert compare(obj("IsolationType"), ISOLATE) == [
        Hint(MISSING, "required body parameter 'Comment' is missing")
    ]
    assert compare(obj(), ISOLATE) == [
        Hint(MISSING, "required body parameter 'Comment' is missing")
    ]


def test_missing_is_not_claimed_before_every_key_was_read() -> None:
    """An object cut short at a bound, or still arriving, may hold the parameter: no missing hint."""
    assert compare(obj("IsolationType", complete=False), ISOLATE) == []
    assert compare(obj("comment", complete=False), ISOLATE)[0].kind == CASE


def test_a_body_that_is_not_an_object_says_what_it_is() -> None:
    """An array, a scalar, bad JSON or an empty body is a not_object hint; unread says nothing."""
    texts = {
        body_keys.ARRAY: "request body is a JSON array, not an object",
        body_keys.SCALAR: "request body is a single JSON value, not an object",
        body_keys.MALFORMED: "request body is not valid JSON",
        body_keys.EMPTY: "request body is empty: a JSON object is expected",
    }
    for shape, text in texts.items():
        assert compare(BodyKeys((), shape, False), ISOLATE) == [Hint(NOT_OBJECT, text)]
    assert compare(BodyKeys((), body_keys.UNREAD, False), ISOLATE) == []


def test_bad_json_still_names_the_keys_read_before_the_error() -> None:
    """Malformed JSON comes first, then the hints on the keys read before the error."""
    hints = compare(BodyKeys(("comment",), body_keys.MALFORMED, False), ISOLATE)
    assert [hint.kind for hint in hints] == [NOT_OBJECT, CASE]


def test_an_endpoint_without_parameters_gets_no_hint() -> None:
    """Without documented parameters there is nothing to compare with, whatever the body."""
    assert compare(BodyKeys(("comment",), body_keys.ARRAY, False), ()) == []


def test_an_unrelated_key_is_never_shown() -> None:
    """A key close to no documented name (it could be a secret) never appears in a hint."""
    hints = compare(obj("Comment", "Zq8vT1kLmN0pR"), ISOLATE)
    assert hints == []


def test_shown_names_are_capped_and_printable_ascii() -> None:
    """Quotes, backslashes, control and non-ASCII characters are escaped; long names are cut."""
    assert shown("Comment") == "'Comment'"
    assert shown("Comm\u00e9nt") == "'Comm\\xe9nt'"
    assert shown("a'b\\c\r\n\x7f") == "'a\\x27b\\x5cc\\x0d\\x0a\\x7f'"
    assert shown("\u20ac\U0001f600") == "'\\u20ac\\U0001f600'"
    assert shown("k" * 100) == "'" + "k" * MAX_NAME + "...'"


def test_several_hints_make_one_bounded_text() -> None:
    """Hints are joined with "; " and the text stops, with "...", before MAX_TEXT characters."""
    two = [Hint(CASE, "one"), Hint(MISSING, "two")]
    assert joined(two) == "one; two"
    many = [Hint(CASE, "x" * 100) for _ in range(50)]
    text = joined(many)
    assert len(text) <= MAX_TEXT
    assert text.endswith("; ...")
    assert joined([Hint(CASE, "y" * 5000)]) == "y" * (MAX_TEXT - 3) + "..."


def test_only_the_three_body_codes_on_a_400_trigger_hints() -> None:
    """InvalidRequestBody, MissingRequiredParameter and InvalidInput on a 400; nothing else."""
    for code in ("InvalidRequestBody", "MissingRequiredParameter", "InvalidInput"):
        assert triggers(400, code)
        assert not triggers(404, code)
    for code in ("BadRequest", "invalidRequest", "ODataError", "", "invalidrequestbody"):
        assert not triggers(400, code)


_KEYS = st.text(max_size=80) | st.sampled_from(
    ["comment", "Coment", "COMMENT", "IsolatonType", "Comment", "Comment\u00e9"]
)


@settings(max_examples=300, deadline=None)
@given(
    keys=st.lists(_KEYS, max_size=40, unique=True),
    shape=st.sampled_from(sorted(SHAPES)),
    complete=st.booleans(),
)
def test_every_hint_is_safe_and_shows_only_names_near_a_documented_one(
    keys: list[str], shape: str, complete: bool
) -> None:
    """Any keys give hints in printable ASCII, bounded, whose shown keys are near documented names."""
    params = next(endpoint.body for endpoint in ENDPOINTS if endpoint.body)
    hints = compare(BodyKeys(tuple(keys), shape, complete), params)
    text = joined(hints)
    assert len(text) <= MAX_TEXT
    assert all(" " <= char <= "~" for char in text)
    names = [param.name.casefold() for param in params]
    for key in keys:
        if key.casefold() in names or key in {param.name for param in params}:
            continue
        near = difflib.get_close_matches(key.casefold(), names, n=1, cutoff=CUTOFF)
        if not near:
            assert all(shown(key) not in hint.text for hint in hints)


def test_graph_matches_names_in_any_case_so_a_case_difference_is_no_hint() -> None:
    """Graph's own SDK sends ``query`` where the page writes ``Query``: no case hint, not missing;
    the Defender API's names stay case-sensitive."""
    hunting = REFERENCE.find("POST", "/v1.0/security/runHuntingQuery")
    assert hunting is not None
    assert hunting.folds_case
    assert compare(obj("query", "timespan", "workspaceId"), hunting.body, fold_case=True) == []
    assert compare(obj("timespan"), hunting.body, fold_case=True) == [
        Hint(MISSING, "required body parameter 'Query' is missing")
    ]
    assert compare(obj("Qeury"), hunting.body, fold_case=True)[0].kind == MISSPELT
    isolate = REFERENCE.find("POST", "/api/machines/1/isolate")
    assert isolate is not None
    assert not isolate.folds_case


def test_only_the_first_unknown_keys_are_compared_for_a_typo(monkeypatch: Any) -> None:
    """A body of many unknown keys costs at most MAX_FUZZY fuzzy comparisons, not one per key."""
    calls: list[str] = []
    real = difflib.get_close_matches

    def counted(word: str, *args: Any, **kwargs: Any) -> list[str]:
        calls.append(word)
        return real(word, *args, **kwargs)

    monkeypatch.setattr(difflib, "get_close_matches", counted)
    keys = [f"unrelated{n:03d}" for n in range(256)]
    assert compare(obj("Comment", *keys), ISOLATE) == []
    assert len(calls) == MAX_FUZZY
