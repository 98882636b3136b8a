"""The router as it was up to 8db9520: every pattern one alternative of one regular expression.

Kept only as an oracle: the differential property tests of ``tests/unit/test_routing.py`` check
that ``proxy.routing.Router`` names the same route for the same request, and ``bench/routing.py``
times both. It backtracks (``[^/]+``, globs and the optional OData call overlap), which is why it
was replaced; never use it to route requests. Patterns are assumed valid (``compile_pattern``
checks them).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import unquote

from proxy.catalogue import CATALOGUE, OTHER_ROUTE, RouteSpec


def _segment(segment: str) -> str:
    if re.match(r"^\{[A-Za-z_][A-Za-z0-9_]*\}$", segment):
        return "[^/]+"
    return "[^/]*".join(re.escape(piece) for piece in segment.split("*")) + r"(?:\([^/]*\))?"


def _pattern(pattern: str) -> str:
    method, _, path = pattern.strip().partition(" ")
    method = method.upper()
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


class RegexRouter:
    """``Router.match`` as one case-insensitive alternation; the first alternative that fits wins."""

    def __init__(self, specs: Iterable[RouteSpec] = CATALOGUE) -> None:
        self.routes: list[RouteSpec] = [OTHER_ROUTE]  # group 0 is never a route
        alternatives: list[str] = []
        for spec in specs:
            for pattern in spec.match:
                alternatives.append(f"({_pattern(pattern)})")
                self.routes.append(spec)
        joined = "|".join(alternatives) or "(?!)"
        self.regex = re.compile(f"(?:{joined})\\Z", re.IGNORECASE)

    def match(self, method: str, path: str) -> RouteSpec:
        """The route the old router named for this method and path."""
        if "%" in path:
            path = unquote(path, errors="replace")
        method = method.upper()
        if method == "HEAD":
            method = "GET"
        found = self.regex.match(f"{method} {path}")
        if found is None or found.lastindex is None:
            return OTHER_ROUTE
        return self.routes[found.lastindex]
