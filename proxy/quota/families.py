"""The quotas of ``other``: one per path family, made on first use, their number bounded.

The API counts an endpoint the catalogue does not know under its own limits, not together with
every other unknown one; so each path family (``proxy.canonical.family``: the canonical path, ids
collapsed) gets its own quota, with the limits of ``other`` and the key ``…other:<family>``. A
client walking many distinct paths could make a quota for each, so past ``MAX_FAMILIES`` the new
ones share the one overflow quota (a warning is logged once). Metrics keep the route name
``other``: families never become label values.
"""

from __future__ import annotations

from typing import Final

from proxy.logs import get_logger
from proxy.quota.schedule import Window
from proxy.quota.store import Quota, quota_key

#: Distinct families with a quota of their own, per process; later ones share OVERFLOW's.
MAX_FAMILIES: Final = 256
#: The family of every family past the bound; no path's family has this form (they start with /).
OVERFLOW: Final = "overflow"


class Families:
    """The ``other`` quota of each path family seen, up to ``bound`` of them, then the overflow."""

    __slots__ = ("_bound", "_namespace", "_quotas", "_route", "_windows")

    def __init__(
        self, namespace: str, route: str, windows: tuple[Window, ...], bound: int = MAX_FAMILIES
    ) -> None:
        self._namespace = namespace
        self._route = route
        self._windows = windows
        self._bound = bound
        self._quotas: dict[str, Quota] = {}

    def quota(self, family: str) -> tuple[str, Quota]:
        """The family a request of ``family`` is counted under (itself, or the overflow past the
        bound), and its quota, made on first use."""
        quota = self._quotas.get(family)
        if quota is None:
            if len(self._quotas) >= self._bound:
                family = OVERFLOW
                quota = self._quotas.get(family)
                if quota is not None:
                    return family, quota
                # Neither the family nor the path is logged: a path may carry what a log must not.
                get_logger("quota").warning(
                    "path families of unmatched requests over the bound: new ones share one quota",
                    route=self._route,
                    bound=self._bound,
                )
            quota = Quota(quota_key(self._namespace, f"{self._route}:{family}"), self._windows)
            self._quotas[family] = quota
        return family, quota

    def __len__(self) -> int:
        return len(self._quotas)
