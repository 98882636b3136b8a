"""What the API reference pages document for each endpoint: its permissions and its JSON body.

The quota catalogue (``proxy.catalogue``) groups requests by what Microsoft counts; this table
says what each endpoint needs, so an error can be explained: a 403 whose token lacks every
permission the endpoint accepts names the one it wants (``missing_role``), and a 400 on a body
the caller sent is compared with the documented parameters, whose names are case-sensitive
(``proxy.body_hints``).

Each ``Endpoint`` holds its patterns (the catalogue's pattern syntax, matched in the same
canonical form), the permissions of which any one suffices — the application permission of the
reference page first (the least privileged the page lists), then the others the page accepts,
application or delegated — and its documented body parameters with their exact case. The source
page is given in a comment beside each entry. An endpoint the table does not know gets no
explanation beyond what its token says.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from proxy.catalogue import RouteSpec
from proxy.routing import Router


@dataclass(frozen=True, slots=True)
class Param:
    """One documented body parameter: its exact name, and whether the page marks it required."""

    name: str
    required: bool = False


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One documented endpoint: the catalogue route it falls in, its patterns, the permissions of
    which any one suffices (least privileged first), and its JSON body's parameters."""

    route: str
    match: tuple[str, ...]
    permissions: tuple[str, ...]
    body: tuple[Param, ...] = ()


def _p(*names: str) -> tuple[Param, ...]:
    """Body parameters; a name ending in ``!`` is required."""
    return tuple(Param(name.rstrip("!"), name.endswith("!")) for name in names)


# In match order, like the catalogue: the first entry whose pattern matches wins.
ENDPOINTS: Final[tuple[Endpoint, ...]] = (
    # learn.microsoft.com/defender-endpoint/api/isolate-machine
    Endpoint(
        "machines.isolate",
        ("POST /api/machines/{id}/isolate",),
        ("Machine.Isolate",),
        _p("Comment!", "IsolationType"),
    ),
)


class Reference:
    """Finds the documented endpoint of a request (method and path, no query string)."""

    __slots__ = ("_by_name", "_router")

    def __init__(self, endpoints: tuple[Endpoint, ...] = ENDPOINTS) -> None:
        # The catalogue's router does the matching: the same canonical form, the same costs.
        specs = [
            RouteSpec(str(index), endpoint.match, ()) for index, endpoint in enumerate(endpoints)
        ]
        self._router = Router(specs)
        self._by_name = {str(index): endpoint for index, endpoint in enumerate(endpoints)}

    def find(self, method: str, path: str) -> Endpoint | None:
        """The endpoint a request is for, or None when the table does not know it."""
        return self._by_name.get(self._router.match(method, path).name)


#: The table of the built-in endpoints.
REFERENCE: Final = Reference()
