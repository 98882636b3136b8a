"""METHOD + path → a named route: the closed set of names every metric and quota is keyed by.

All patterns compile into one regular expression of ordered alternatives, so a lookup is a single
``re.match`` whatever the size of the catalogue, and the first matching entry wins. The path is
percent-decoded before matching (``/api/machines/%69solate`` is the isolate route, as the upstream
would read it); the query string never takes part.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import unquote

from proxy.catalogue import CATALOGUE, OTHER_ROUTE, RouteSpec

_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
_PARAM = re.compile(r"^\{[A-Za-z_][A-Za-z0-9_]*\}$")
# An OData function call such as findbyip(ip='…') or GetLiveResponseResultDownloadLink(index=0).
_ODATA_CALL = r"(?:\([^/]*\))?"


class PatternError(ValueError):
    """A route pattern that cannot be compiled."""


def _segment(segment: str) -> str:
    if segment == "**":
        raise PatternError("'**' may only be the last segment")
    if _PARAM.match(segment):
        return "[^/]+"
    if "{" in segment or "}" in segment:
        raise PatternError(f"a {{param}} must be a whole segment: {segment!r}")
    if not segment:
        raise PatternError("empty path segment")
    parts = [re.escape(piece) for piece in segment.split("*")]
    return "[^/]*".join(parts) + _ODATA_CALL


def compile_pattern(pattern: str) -> str:
    """The regular expression (without anchors or groups) for one ``METHOD /path`` pattern."""
    method, sep, path = pattern.strip().partition(" ")
    method = method.upper()
    if not sep or not path.startswith("/"):
        raise PatternError(f"expected 'METHOD /path', got {pattern!r}")
    if method != "*" and method not in _METHODS:
        raise PatternError(f"unknown method {method!r} in {pattern!r}")
    segments = path.strip().strip("/").split("/") if path.strip() != "/" else []
    tail = ""
    if segments and segments[-1] == "**":
        segments.pop()
        tail = "(?:/.*)?"
    body = "".join("/" + _segment(s) for s in segments)
    if segments and segments[0].lower() == "api":
        body = "/api(?:/v1\\.0)?" + body[len("/api") :]
    method_re = "[A-Z]+" if method == "*" else re.escape(method)
    return f"{method_re} {body}{tail}/?"


class Router:
    """Finds the route of a request; unmatched requests fall into ``other``."""

    __slots__ = ("_regex", "_routes", "routes")

    def __init__(self, specs: Iterable[RouteSpec] = CATALOGUE) -> None:
        self.routes: tuple[RouteSpec, ...] = (*specs, OTHER_ROUTE)
        alternatives: list[str] = []
        self._routes: list[RouteSpec] = [OTHER_ROUTE]  # group 0 is never a route
        for spec in self.routes[:-1]:
            for pattern in spec.match:
                alternatives.append(f"({compile_pattern(pattern)})")
                self._routes.append(spec)
        joined = "|".join(alternatives) or "(?!)"
        self._regex = re.compile(f"(?:{joined})\\Z", re.IGNORECASE)

    def match(self, method: str, path: str) -> RouteSpec:
        """The route for a request line's method and path (no query string)."""
        if "%" in path:
            path = unquote(path, errors="replace")
        method = method.upper()
        if method == "HEAD":  # a HEAD costs the same quota as the GET it stands for
            method = "GET"
        found = self._regex.match(f"{method} {path}")
        if found is None or found.lastindex is None:
            return OTHER_ROUTE
        return self._routes[found.lastindex]

    @property
    def names(self) -> frozenset[str]:
        """Every route name this router can return."""
        return frozenset(spec.name for spec in self.routes)
