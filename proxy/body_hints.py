"""What a 400 on a request body might be caused by: its keys against the documented parameters.

The API's body parameters are case-sensitive, and its reference pages say an
``InvalidRequestBody``, ``MissingRequiredParameter`` or ``InvalidInput`` "might be caused by a
typo". ``compare`` sets the top-level keys of the body the caller sent (``proxy.body_keys``)
beside the parameters its endpoint documents (``proxy.reference``) and says what differs, as
``Hint``s of four kinds:

    case        a key in the wrong case:     body parameter 'comment' should be 'Comment'
    misspelt    an unknown key close to a documented one (a typo):
                body parameter 'Coment' is not documented: did you mean 'Comment'?
    missing     a required parameter absent, that no hint above explains:
                required body parameter 'Comment' is missing
    not_object  the body is not a JSON object (an array, a scalar, not JSON, empty)

An unknown key close to no documented name gets no hint: its name could be anything, a secret
included, and is never shown. A name that is shown is close to a documented one, capped at
``MAX_NAME`` characters and with everything but printable ASCII escaped, so a hint is safe in an
HTTP header and a log line. ``joined`` makes one text of several hints. Everything here is pure.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from proxy import body_keys
from proxy.body_keys import BodyKeys

if TYPE_CHECKING:
    from proxy.reference import Param

CASE: Final = "case"
MISSPELT: Final = "misspelt"
MISSING: Final = "missing"
NOT_OBJECT: Final = "not_object"
#: every kind of hint, the closed set of the metric's ``kind`` label
KINDS: Final = (CASE, MISSPELT, MISSING, NOT_OBJECT)

#: The error codes the API's reference pages say a typo in the body may cause. Graph's own codes
#: for a bad request (``BadRequest``, ``invalidRequest``) say nothing about the body: no hints.
TRIGGERS: Final = frozenset({"InvalidRequestBody", "MissingRequiredParameter", "InvalidInput"})

#: How close (difflib's ratio, without regard to case) an unknown key must be to a documented
#: name to count as a typo of it. One letter dropped, doubled or swapped in a name of five or more
#: stays above it ("Coment", "IsolatonType", "Commnet"); unrelated short names fall below ("Id"
#: and "Ip" are at 0.5, "Title" and "Type" at 0.44).
CUTOFF: Final = 0.8
#: Characters of a key name shown in a hint; a longer name is cut and ends in "...".
MAX_NAME: Final = 64
#: Hints given for one body, and characters in the text of all of them.
MAX_HINTS: Final = 16
MAX_TEXT: Final = 1024
#: Unknown keys of one body compared with the documented names for a typo. Each comparison is a
#: difflib match against every name (some 0.2 ms for the longest table, a body of keys shaped
#: to pass difflib's quick checks), so 256 of them would stall the event loop for tens of
#: milliseconds on a 7 KiB body; a typo is among a body's first few unknown keys anyway.
MAX_FUZZY: Final = 32
SEPARATOR: Final = "; "

_SHAPES: Final = {
    body_keys.ARRAY: "request body is a JSON array, not an object",
    body_keys.SCALAR: "request body is a single JSON value, not an object",
    body_keys.MALFORMED: "request body is not valid JSON",
    body_keys.EMPTY: "request body is empty: a JSON object is expected",
}


@dataclass(frozen=True, slots=True)
class Hint:
    """One thing the body does differently from what the endpoint documents."""

    kind: str
    text: str


def triggers(status: int, code: str) -> bool:
    """Whether an answer with ``status`` and parsed error ``code`` asks for body hints."""
    return status == 400 and code in TRIGGERS


def compare(seen: BodyKeys, params: Sequence[Param], fold_case: bool = False) -> list[Hint]:
    """The hints for a body whose keys and shape are ``seen``, sent to an endpoint documenting
    ``params``: first the body's shape, then each key in the order sent, then the missing. With
    ``fold_case`` (an API that matches names without regard to case: ``Endpoint.folds_case``), a
    key in another case is the parameter itself: no hint, and not missing."""
    if not params:
        return []
    hints: list[Hint] = []
    if seen.shape in _SHAPES:
        hints.append(Hint(NOT_OBJECT, _SHAPES[seen.shape]))
    exact = {param.name for param in params}
    folded = {param.name.casefold(): param.name for param in params}
    explained: set[str] = set()
    fuzzy = 0
    for key in seen.keys:
        if len(hints) >= MAX_HINTS:
            return hints
        if key in exact:
            continue
        name = folded.get(key.casefold())
        if name is not None:
            if not fold_case:
                hints.append(Hint(CASE, f"body parameter {shown(key)} should be {shown(name)}"))
            explained.add(name)
            continue
        if fuzzy >= MAX_FUZZY:
            continue
        fuzzy += 1
        # Imported on the first misspelt key: most answers never need it, and an idle proxy
        # keeps its modules in memory for good.
        import difflib

        close = difflib.get_close_matches(key.casefold(), folded, n=1, cutoff=CUTOFF)
        if close:
            name = folded[close[0]]
            text = f"body parameter {shown(key)} is not documented: did you mean {shown(name)}?"
            hints.append(Hint(MISSPELT, text))
            explained.add(name)
    if seen.shape == body_keys.OBJECT and seen.complete:
        # Only when every top-level key was read: a body cut short at a bound, or one the
        # upstream answered before it was sent whole, may still hold the parameter.
        present = set(seen.keys)
        hints.extend(
            Hint(MISSING, f"required body parameter {shown(param.name)} is missing")
            for param in params
            if param.required and param.name not in present and param.name not in explained
        )
    return hints[:MAX_HINTS]


def joined(hints: Iterable[Hint], limit: int = MAX_TEXT) -> str:
    """One text of ``hints``, joined with "; ", at most ``limit`` characters: whole hints only,
    then "..." when some did not fit."""
    text = ""
    for hint in hints:
        candidate = f"{text}{SEPARATOR}{hint.text}" if text else hint.text
        if len(candidate) > limit - len(SEPARATOR) - 3:
            return f"{text}{SEPARATOR}..." if text else hint.text[: limit - 3] + "..."
        text = candidate
    return text


def shown(name: str) -> str:
    """``name`` quoted for a hint: at most ``MAX_NAME`` characters, printable ASCII only."""
    cut = len(name) > MAX_NAME
    out: list[str] = []
    for char in name[:MAX_NAME] if cut else name:
        code = ord(char)
        if 0x20 <= code < 0x7F and char not in "\\'":
            out.append(char)
        elif code <= 0xFF:
            out.append(f"\\x{code:02x}")
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    return "'" + "".join(out) + ("..." if cut else "") + "'"
