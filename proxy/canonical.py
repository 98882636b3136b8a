"""The canonical form of a request path, for routing and quota keys only: one spelling per endpoint.

The API reads many spellings of a path as one endpoint, and counts them against one quota; so
must the router. The path sent upstream is never touched: this form only names the route.

What is folded, in this order:

1. **Percent-escapes** are decoded once, except ``%2F`` (``/``) and ``%3B`` (``;``): an encoded
   reserved character is data (RFC 3986 §2.2), and decoding ``%2F`` into a separator would split
   one segment into two, which is not how the API reads it (ASP.NET keeps ``%2F`` in its segment)
   and would let a caller move a request to another route. Both stay in their segment as text.
2. **Case** is folded as ``re.IGNORECASE`` compares (``fold``).
3. **Empty segments** go: ``//api/machines``, ``/api//machines/x`` and a trailing slash are the
   path without them.
4. **Matrix parameters** go: ``machines;x=1`` is ``machines``.
5. **Graph namespaces** go: ``microsoft.graph.security.runHuntingQuery`` (what the Graph SDKs
   send) is ``runHuntingQuery``; any segment starting with ``microsoft.graph.`` keeps its last
   name (and its call, if any).
6. **OData keys** become a segment of their own: ``machineactions('x')`` and ``machines(abc)``
   are ``machineactions/x`` and ``machines/abc``. Parentheses holding a ``=`` (or nothing) are a
   function call, not a key, and stay: ``findbyip(ip='10.1.1.1',timestamp=…)`` is matched by the
   router as the literal ``findbyip`` with a call. The one exception is the named form of a key,
   ``(id='x')`` alone, which is the key ``x`` (every entity of the API is keyed by ``id``).
7. **``/beta``** is ``/v1.0`` (Graph's two versions count against the same quotas).
   ``/api/v1.0`` and ``/api`` are held equal by the router itself.

``family`` names the path family of a request no route matches: its canonical segments with ids
collapsed, depth bounded; ``quota.families`` keys each family's ``other`` quota by it.

Linear time, whatever the path: decoding, folding and splitting are each one pass of a C string
primitive (or the standard library's linear ``unquote``), and removing empty segments and matrix
parameters is ``map``/``filter`` over the split, with no Python step per segment (and when the
path has neither ``//`` nor ``;``, the split stops after the segments that can matter). Only the
first ``most`` segments, a bound the router gives (its deepest pattern), are looked at one by
one, and each of those in one pass. Nothing here is a regular expression.
"""

from __future__ import annotations

import sys
from operator import itemgetter, methodcaller
from typing import Final, NamedTuple
from urllib.parse import unquote

#: Lowercase letters that re.IGNORECASE holds equal to another lowercase letter, because both have
#: the same uppercase (ſ and s are both S) or, for the last three, the same multi-letter one. A test
#: checks this table against ``re`` for every cased character of the running Python.
_SAME_LETTER: Final = (
    ("\u00b5", "\u03bc"),  # µ micro sign: μ
    ("\u0131", "i"),  # ı dotless i
    ("\u017f", "s"),  # ſ long s
    ("\u0345", "\u03b9"),  # combining ypogegrammeni: ι
    ("\u03c2", "\u03c3"),  # ς final sigma: σ
    ("\u03d0", "\u03b2"),  # ϐ: β
    ("\u03d1", "\u03b8"),  # ϑ: θ
    ("\u03d5", "\u03c6"),  # ϕ: φ
    ("\u03d6", "\u03c0"),  # ϖ: π
    ("\u03f0", "\u03ba"),  # ϰ: κ
    ("\u03f1", "\u03c1"),  # ϱ: ρ
    ("\u03f5", "\u03b5"),  # ϵ: ε
    ("\u1c80", "\u0432"),  # Cyrillic rounded ve: в
    ("\u1c81", "\u0434"),  # long-legged de: д
    ("\u1c82", "\u043e"),  # narrow o: о
    ("\u1c83", "\u0441"),  # wide es: с
    ("\u1c84", "\u0442"),  # tall te: т
    ("\u1c85", "\u0442"),  # three-legged te: т
    ("\u1c86", "\u044a"),  # tall hard sign: ъ
    ("\u1c87", "\u0463"),  # tall yat: ѣ
    ("\u1c88", "\ua64b"),  # unblended uk: ꙋ
    ("\u1e9b", "\u1e61"),  # ẛ: ṡ
    ("\u1fbe", "\u03b9"),  # prosgegrammeni: ι
    ("\u1fd3", "\u0390"),  # ΐ (1FD3): ΐ (0390)
    ("\u1fe3", "\u03b0"),  # ΰ (1FE3): ΰ (03B0)
    ("\ufb05", "\ufb06"),  # ﬅ: ﬆ
)
#: Escapes kept as text in their segment: each becomes ``%25`` + the rest, which decodes back to it.
_KEPT: Final = (("%2F", "%252F"), ("%2f", "%252f"), ("%3B", "%253B"), ("%3b", "%253b"))
#: The prefix of a namespace-qualified Graph name (folded).
NAMESPACE: Final = "microsoft.graph."
_BEFORE_PARAMS: Final = methodcaller("partition", ";")
_FIRST: Final = itemgetter(0)
#: The segments of a path family; deeper paths share the family of their first ones.
FAMILY_DEPTH: Final = 6
#: What an id-like segment becomes in a family.
PLACEHOLDER: Final = "*"
#: A segment longer than this is an id (or a token), whatever its letters.
_MAX_WORD: Final = 64
_WORD: Final = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-$")
_HEX: Final = frozenset("0123456789abcdef-")
_NO_DIGITS: Final = str.maketrans("", "", "0123456789")
#: Where a newline lies when it lies past the segments spelled out: after every pattern's end.
_PAST: Final = sys.maxsize


def fold(text: str) -> str:
    """``text`` case-folded as re.IGNORECASE compares it: same length, equal folds for equal text."""
    if text.isascii():
        return text.lower()
    # str.lower() maps every character to one, but for İ (to "i" and a combining dot; its simple
    # lowercase, which re uses, is "i") and Σ (σ or ς by context, which fold alike below).
    text = text.replace("\u0130", "i").lower()
    for char, same in _SAME_LETTER:
        if char in text:
            text = text.replace(char, same)
    return text


class Canonical(NamedTuple):
    """The first segments of a path in canonical form, and where its last newline is.

    ``segments`` holds every canonical segment when there are at most ``most`` of them; else the
    first ``most + 1`` or ``most + 2`` (enough to say "longer than any pattern"). ``newline`` is the
    index of the last segment holding a newline (``-1``: none; ``sys.maxsize``: past those given):
    a final ``**`` never spans one, as the router's old regular expression did not.
    """

    segments: list[str]
    newline: int


def canonical(path: str, most: int = _PAST) -> Canonical:
    """The canonical segments of ``path`` (a path starting with ``/``, no query string)."""
    if "%" in path:
        for escaped, kept in _KEPT:
            if escaped in path:
                path = path.replace(escaped, kept)
        path = unquote(path, errors="replace")
    text = fold(path)
    if ";" in text:
        names = list(filter(None, map(_FIRST, map(_BEFORE_PARAMS, text.split("/")))))
    elif "//" in text:
        names = list(filter(None, text.split("/")))
    else:
        # No empty segment but a trailing one: past the segments looked at, the last item keeps
        # the rest of the path, which only ever says "more segments than any pattern".
        names = list(filter(None, text.split("/", most + 2 if most < _PAST else -1)))
    segments: list[str] = []
    taken = 0
    for name in names:
        if len(segments) > most:
            break
        taken += 1
        if name[-1] == ")" or name.startswith(NAMESPACE):
            _spell(name, segments)
        else:
            segments.append(name)
    if segments and segments[0][:4] == "beta" and segments[0][4:5] in ("", "("):
        segments[0] = "v1.0" + segments[0][4:]
    newline = -1
    if "\n" in text:
        if taken < len(names) and "\n" in "/".join(names[taken:]):
            newline = _PAST
        else:
            for index, segment in enumerate(segments):
                if "\n" in segment:
                    newline = index
    return Canonical(segments, newline)


def _spell(name: str, segments: list[str]) -> None:
    """Append ``name`` to ``segments`` without its Graph namespace, its OData key apart."""
    if name.startswith(NAMESPACE):
        head, paren, call = name.partition("(")
        name = head.rpartition(".")[2] + paren + call
        if not name:
            return
    if name[-1] == ")":
        head, _, inner = name[:-1].partition("(")
        if head and inner and inner[:3] == "id=" and "," not in inner:
            # OData's named form of the same key: machineactions(id='x') is machineactions('x').
            inner = inner[3:]
        if head and inner and "=" not in inner:
            segments.append(head)
            name = inner[1:-1] if len(inner) > 2 and inner[0] == inner[-1] == "'" else inner
    segments.append(name)


def canonical_path(path: str) -> str:
    """The whole canonical form as one path, ``%`` escaped again so it decodes to itself."""
    return "/" + "/".join(canonical(path).segments).replace("%", "%25")


def family(segments: list[str]) -> str:
    """The path family of an unmatched request: its canonical path, ids collapsed, depth bounded.

    ``/api/v1.0`` counts as ``/api``; every id-like segment (see ``_word``) becomes ``*``; past
    ``FAMILY_DEPTH`` segments the rest is ``**``. So ``/api/things/7f3c…/x`` and
    ``/api/things('42')/x`` are one family, ``/api/things/1/y`` another.
    """
    parts = segments[: FAMILY_DEPTH + 2]
    if len(parts) > 1 and parts[0] == "api" and parts[1] == "v1.0":
        del parts[1]
    shown = [_word(part) for part in parts[:FAMILY_DEPTH]]
    if len(parts) > FAMILY_DEPTH:
        shown.append("**")
    return "/" + "/".join(shown)


def _word(segment: str) -> str:
    """``segment`` if it names an endpoint, else the placeholder; an OData call becomes ``()``.

    A name is what endpoints are called: up to 64 of ``a-z 0-9 _ - $``, not starting with a digit,
    at most two digits (``alerts_v2``), not a run of 16 or more hex digits; or a version
    (``v1.0``). Anything else — GUIDs, numbers, hashes, addresses, domains, keys — is an id.
    Collapsing too much only makes families share a quota, which never overruns the API.
    """
    name, paren, _ = segment.partition("(")
    if len(name) > _MAX_WORD or not name:
        return PLACEHOLDER
    if name[0] == "v" and name[1:].replace(".", "").isdigit() and name[1:2].isdigit():
        return name + ("()" if paren else "")
    digits = len(name) - len(name.translate(_NO_DIGITS))
    if (
        name[0].isdigit()
        or digits > 2
        or not _WORD.issuperset(name)
        or (len(name) >= 16 and _HEX.issuperset(name))
    ):
        return PLACEHOLDER
    return name + ("()" if paren else "")
