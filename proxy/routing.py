"""METHOD + path → a named route: the closed set of names every metric and quota is keyed by.

The first catalogue entry whose pattern matches a request wins. Matching is on the path's
canonical form (``proxy.canonical``): percent-decoded but for ``%2F`` and ``%3B``, case-folded,
without empty segments, ``;params`` or Graph namespaces, OData keys as segments of their own,
``/beta`` as ``/v1.0``; so ``/api/machines/%69solate``, ``//api/machines/x/isolate/`` and
``/api/machines('x')/isolate`` are all the isolate route, as the API reads them. The path sent
upstream is never changed, and the query string never takes part. Case folding has the character
equivalence of Python's ``re.IGNORECASE`` (so ``ſ`` is an ``s`` and ``K``, the Kelvin sign, a
``k``, as they were when routing was one regular expression); a ``HEAD`` is routed as the ``GET``
it stands for. A request no pattern matches is ``other``; ``Router.route`` also names its path
family (``canonical.family``), which keys its quota apart from other unknown endpoints.

How a lookup works, and why it takes time linear in the length of the path whatever the path:

1. The path is put in canonical form once: decoding, folding (``str.lower()``, then one
   ``replace`` for each of a fixed set of letters that ``re`` also holds equal; folding never
   changes a length), splitting on ``/`` and dropping empty segments and ``;params`` are each one
   pass of a C primitive with no Python step per segment; then only the first segments, as many
   as the deepest pattern compares (or a path family needs), are looked at one by one.
2. Every pattern of the router sits in a tree of segment matchers (one tree per method), each
   tree node at depth *d* comparing against segment *d* of the path. The walk is a depth-first
   search that skips any subtree whose smallest pattern index is not below the best match found,
   and visits each node at most once, because the tree has no shared children.
3. A node compares its one segment with:

   - literal segments (``machines``, ``findbyip``): one dictionary look-up of the segment itself
     (its hash is computed once) and, only when the segment ends with ``)``, one of its first *n*
     characters for each distinct literal length *n* at that node whose next character is ``(``:
     an OData call (``findbyip(ip='10.1.1.1')``). The cost is bounded by the longest literal;
   - a ``{param}``: any non-empty segment, one comparison;
   - a glob (``*Export``): ``startswith``, one ``str.find`` per inner piece from the end of the
     previous one (leftmost placement is optimal for a glob), and for the last piece either
     ``endswith`` or, when the segment ends with ``)``, one ``find`` of the piece followed by
     ``(`` (where an OData call would start). Each is one pass of a C string primitive over the
     segment: O(segment × piece length);
   - the end of a pattern: all segments used (a trailing slash is no segment); for a final
     ``**``, no newline in what is left (the index of the last segment holding one is found
     once, so the check is a comparison).

So a lookup costs O(L) for the canonical form of a path of L characters, plus
O(N·P + G·L) for the walk, where N is the number of tree nodes, P the longest literal and G the
number of glob segments in the router (one, ``*Export``, in the catalogue): nothing is ever tried
twice, and no step backtracks. The regular expression this replaced tried every split of a segment
between ``[^/]+``, globs and the optional OData call: 42 ms for ``/api/machines/`` followed by
``Export(`` 2,330 times, where the tree takes microseconds (``bench/routing.py``, in ``make
bench``). The guard also refuses a path longer than ``guard.MAX_PATH`` with 414, so the routing
work per request has a constant ceiling as well.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Final, Literal

from proxy.canonical import FAMILY_DEPTH, NAMESPACE, canonical, family, fold
from proxy.catalogue import CATALOGUE, OTHER_ROUTE, RouteSpec

_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
_PARAM = re.compile(r"^\{[A-Za-z_][A-Za-z0-9_]*\}$")
_NEVER: Final = sys.maxsize
#: (method, path) pairs whose route a router remembers, and the longest path it remembers.
_SEEN: Final = 512
_SEEN_PATH: Final = 256


class PatternError(ValueError):
    """A route pattern that cannot be compiled."""


@dataclass(frozen=True, slots=True)
class Segment:
    """One segment of a pattern.

    ``literal``: ``parts[0]``, folded, alone or followed by an OData call; ``exact``: the same
    without the call (the ``api`` before ``v1.0``); ``glob``: the folded pieces between the
    ``*``, then an optional call; ``param``: any non-empty segment.
    """

    kind: Literal["literal", "exact", "glob", "param"]
    parts: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Pattern:
    """One compiled ``METHOD /path`` pattern."""

    method: str  # upper case, or "*"
    segments: tuple[Segment, ...]
    tail: bool  # the pattern ends in "**"
    api: bool  # the first segment is "api", which also matches "api/v1.0"

    def variants(self) -> Iterator[tuple[Segment, ...]]:
        """The segment sequences this pattern stands for: a leading ``api`` also as ``api/v1.0``."""
        yield self.segments
        if self.api:
            yield (Segment("exact", ("api",)), Segment("literal", ("v1.0",)), *self.segments[1:])


def _segment(text: str) -> Segment:
    if text == "**":
        raise PatternError("'**' may only be the last segment")
    if _PARAM.match(text):
        return Segment("param")
    if "{" in text or "}" in text:
        raise PatternError(f"a {{param}} must be a whole segment: {text!r}")
    if not text:
        raise PatternError("empty path segment")
    parts = tuple(fold(piece) for piece in text.split("*"))
    if len(parts) == 1 and parts[0].startswith(NAMESPACE):  # as canonical folds a request
        parts = (parts[0].rpartition(".")[2],)
    return Segment("literal" if len(parts) == 1 else "glob", parts)


def compile_pattern(pattern: str) -> Pattern:
    """The compiled form of one ``METHOD /path`` pattern, or a PatternError saying what is wrong."""
    method, sep, path = pattern.strip().partition(" ")
    method = method.upper()
    if not sep or not path.startswith("/"):
        raise PatternError(f"expected 'METHOD /path', got {pattern!r}")
    if method != "*" and method not in _METHODS:
        raise PatternError(f"unknown method {method!r} in {pattern!r}")
    texts = path.strip().strip("/").split("/") if path.strip() != "/" else []
    tail = bool(texts) and texts[-1] == "**"
    if tail:
        texts.pop()
    if texts and texts[0].lower() == "beta":  # requests get the same folding (canonical)
        texts[0] = "v1.0"
    segments = tuple(_segment(text) for text in texts)
    return Pattern(method, segments, tail, bool(texts) and texts[0].lower() == "api")


class _Node:
    """A tree node: the patterns that have matched the path's first *depth* segments so far."""

    __slots__ = ("best", "end", "exact", "globs", "lengths", "literals", "param", "tail")

    def __init__(self) -> None:
        self.best = _NEVER  # the smallest pattern index in this subtree
        self.end = _NEVER  # the smallest index of a pattern ending here
        self.tail = _NEVER  # the same for a pattern ending here in "**"
        self.literals: dict[str, _Node] = {}
        self.lengths: tuple[int, ...] = ()
        self.exact: dict[str, _Node] = {}
        self.globs: list[tuple[tuple[str, ...], _Node]] = []
        self.param: _Node | None = None

    def child(self, segment: Segment) -> _Node:
        """The child for ``segment``, made if new."""
        if segment.kind == "param":
            if self.param is None:
                self.param = _Node()
            return self.param
        if segment.kind == "glob":
            for parts, node in self.globs:
                if parts == segment.parts:
                    return node
            self.globs.append((segment.parts, _Node()))
            return self.globs[-1][1]
        table = self.literals if segment.kind == "literal" else self.exact
        text = segment.parts[0]
        if text not in table:
            table[text] = _Node()
            if segment.kind == "literal":
                self.lengths = tuple(sorted({*self.lengths, len(text)}))
        return table[text]


def _insert(root: _Node, segments: tuple[Segment, ...], tail: bool, index: int) -> None:
    node = root
    node.best = min(node.best, index)
    for segment in segments:
        node = node.child(segment)
        node.best = min(node.best, index)
    if tail:
        node.tail = min(node.tail, index)
    else:
        node.end = min(node.end, index)


def _glob(parts: tuple[str, ...], segment: str) -> bool:
    """Does ``segment`` match the glob ``parts[0]*…*parts[-1]``, then an optional OData call?"""
    first, *inner, last = parts
    if not segment.startswith(first):
        return False
    at = len(first)
    for piece in inner:
        found = segment.find(piece, at)
        if found < 0:
            return False
        at = found + len(piece)
    if not last:  # a final '*' takes the rest, a call included
        return True
    if len(segment) - len(last) >= at and segment.endswith(last):
        return True
    # A call: the glob ends right before a '(' and the segment ends with ')'. That '(' cannot be
    # the last character, so the call is at least "()".
    return segment.endswith(")") and segment.find(last + "(", at) >= 0


def _walk(node: _Node, segments: list[str], depth: int, best: int, newline: int) -> int:
    """The smallest pattern index below ``node`` matching ``segments[depth:]``, if under ``best``."""
    count = len(segments)
    if node.end < best and depth == count:  # canonical segments are never empty
        best = node.end
    if node.tail < best and newline < depth:  # "**" is ".*" in the old regex: no newline
        best = node.tail
    if depth == count:
        return best
    segment = segments[depth]
    down = depth + 1
    child = node.literals.get(segment)
    if child is not None and child.best < best:
        best = _walk(child, segments, down, best, newline)
    if segment[-1:] == ")":  # the segment may be a literal and an OData call
        size = len(segment)
        for length in node.lengths:
            if size > length + 1 and segment[length] == "(":
                child = node.literals.get(segment[:length])
                if child is not None and child.best < best:
                    best = _walk(child, segments, down, best, newline)
    if node.exact:
        child = node.exact.get(segment)
        if child is not None and child.best < best:
            best = _walk(child, segments, down, best, newline)
    for parts, child in node.globs:
        if child.best < best and _glob(parts, segment):
            best = _walk(child, segments, down, best, newline)
    child = node.param
    if child is not None and child.best < best:
        best = _walk(child, segments, down, best, newline)
    return best


@dataclass(frozen=True, slots=True)
class Routed:
    """A request's route, and what keys its quota besides the route's name.

    ``family`` is empty for a catalogue route. For ``other`` it is the request's path family
    (``canonical.family``): the API counts unknown endpoints apart, so each family gets its own
    ``other`` quota, while every metric still says ``other``.
    """

    spec: RouteSpec
    family: str = ""


class Router:
    """Finds the route of a request; unmatched requests fall into ``other``."""

    __slots__ = ("_any", "_depth", "_family_depth", "_seen", "_specs", "_trees", "routes")

    def __init__(self, specs: Iterable[RouteSpec] = CATALOGUE) -> None:
        self.routes: tuple[RouteSpec, ...] = (*specs, OTHER_ROUTE)
        self._specs: list[RouteSpec] = []  # pattern index → its route
        self._trees = {fold(method): _Node() for method in _METHODS}
        self._any = _Node()  # a method outside _METHODS: only patterns with method "*"
        self._depth = 0  # the most segments any pattern compares: the split never goes further
        for spec in self.routes[:-1]:
            for text in spec.match:
                pattern = compile_pattern(text)
                index = len(self._specs)
                self._specs.append(spec)
                if pattern.method == "*":
                    roots = [*self._trees.values(), self._any]
                else:
                    roots = [self._trees[fold(pattern.method)]]
                for root in roots:
                    for segments in pattern.variants():
                        _insert(root, segments, pattern.tail, index)
                        self._depth = max(self._depth, len(segments))
        self._family_depth = max(self._depth, FAMILY_DEPTH + 1)  # room for a leading api/v1.0
        #: the routes of recent (method, path) pairs: tools ask for the same few paths again and
        #: again (a list and its pages, a poll), and a route found costs a walk of the trees
        self._seen: dict[tuple[str, str], Routed] = {}

    def match(self, method: str, path: str) -> RouteSpec:
        """The route for a request line's method and path (no query string)."""
        best, _ = self._find(method, path, self._depth)
        return OTHER_ROUTE if best == _NEVER else self._specs[best]

    def route(self, method: str, path: str) -> Routed:
        """The route, and for ``other`` the path family that keys its quota (see ``Routed``)."""
        key = (method, path)
        routed = self._seen.get(key)
        if routed is not None:
            return routed
        best, segments = self._find(method, path, self._family_depth)
        if best != _NEVER:
            routed = Routed(self._specs[best])
        else:
            routed = Routed(OTHER_ROUTE, "" if segments is None else family(segments))
        if len(path) <= _SEEN_PATH:
            # Bounded in entries and in the length of what it keeps, whatever callers send:
            # emptied when full, so a stream of distinct paths costs a walk each, as without it.
            if len(self._seen) >= _SEEN:
                self._seen.clear()
            self._seen[key] = routed
        return routed

    def _find(self, method: str, path: str, most: int) -> tuple[int, list[str] | None]:
        """The index of the first pattern matching, and the path's canonical segments (None if
        the path is no path)."""
        method = method.upper()
        if method == "HEAD":  # a HEAD costs the same quota as the GET it stands for
            method = "GET"
        if path and path[0] != "/":
            return _NEVER, None
        found = canonical(path, most)
        key = fold(method)
        root = self._trees.get(key)
        if root is None:
            # Method "*" stands for any token of letters; aiohttp passes no other kind of method.
            if not (key.isascii() and key.isalpha()):
                return _NEVER, found.segments
            root = self._any
        return _walk(root, found.segments, 0, _NEVER, found.newline), found.segments

    @property
    def names(self) -> frozenset[str]:
        """Every route name this router can return."""
        return frozenset(spec.name for spec in self.routes)
