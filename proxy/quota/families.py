"""The quotas of ``other``: one per path family, made on first use, their number bounded.

The API counts an endpoint the catalogue does not know under its own limits, not together with
every other unknown one; so each path family (``proxy.canonical.family``: the canonical path, ids
collapsed) gets its own quota, with the limits of ``other`` and the key ``…other:<family>``. A
client walking many distinct paths could make a quota for each, so while ``MAX_FAMILIES`` are held
at once the new ones share the one overflow quota (a warning is logged when it is first used, and
again only after it has been idle as long as it was held). A family is held until its caller (the
limiter) says its quota holds nothing any more, then forgotten (``proxy.leases``): junk paths
leave the table a window after their last request. Metrics keep the route name ``other``:
families never become label values.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Final

from proxy.leases import Leases, Overflow
from proxy.logs import get_logger
from proxy.quota.schedule import Window
from proxy.quota.store import Quota, quota_key

#: Distinct families with a quota of their own at once, per process; others share OVERFLOW's.
MAX_FAMILIES: Final = 256
#: The family of every family past the bound; no path's family has this form (they start with /).
OVERFLOW: Final = "overflow"


class Families:
    """The ``other`` quota of each path family held, up to ``bound`` at once, then the overflow."""

    __slots__ = (
        "_bound",
        "_held",
        "_namespace",
        "_on_forget",
        "_overflow",
        "_quotas",
        "_route",
        "_sent",
        "_windows",
    )

    def __init__(
        self,
        namespace: str,
        route: str,
        windows: tuple[Window, ...],
        bound: int = MAX_FAMILIES,
        on_forget: Callable[[Quota], None] | None = None,
    ) -> None:
        self._namespace = namespace
        self._route = route
        self._windows = windows
        self._bound = bound
        self._on_forget = on_forget
        self._quotas: dict[str, Quota] = {}
        self._held: Leases[str] = Leases(bound, self._forget)
        self._overflow = Quota(quota_key(namespace, f"{route}:{OVERFLOW}"), windows)
        self._sent = Overflow(bound)

    def _forget(self, family: str) -> None:
        quota = self._quotas.pop(family)
        if self._on_forget is not None:
            self._on_forget(quota)

    def quota(self, family: str, *, now: float = 0.0, until: float = math.inf) -> tuple[str, Quota]:
        """The family a request of ``family`` is counted under (itself, or the overflow while
        the bound is held), and its quota, held until ``until`` (the default: for good)."""
        held = self._held
        held.sweep(now)
        if family not in held and self._sent.keeps(family, now):
            # Its requests on the overflow are still inside a window: see ``leases.Overflow``.
            self._sent.send(family, until)
            return OVERFLOW, self._overflow
        if not held.hold(family, until):
            held.sweep(now, None)
            if not held.hold(family, until):
                if not self._sent.busy(now):
                    # Neither the family nor the path is logged: a path may carry what a log
                    # must not.
                    get_logger("quota").warning(
                        "path families of unmatched requests over the bound: "
                        "new ones share one quota until others fall idle",
                        route=self._route,
                        bound=self._bound,
                    )
                self._sent.send(family, until)
                return OVERFLOW, self._overflow
        quota = self._quotas.get(family)
        if quota is None:
            quota = Quota(quota_key(self._namespace, f"{self._route}:{family}"), self._windows)
            self._quotas[family] = quota
        return family, quota

    def extend(self, family: str, until: float) -> None:
        """Hold ``family`` (if it is held, or the overflow) at least until ``until``."""
        if family == OVERFLOW:
            self._sent.extend(until)
        else:
            self._held.extend(family, until)

    def __len__(self) -> int:
        """Families held, the overflow not counted."""
        return len(self._held)

    def sweep(self, now: float) -> None:
        """Forget every family held until ``now`` or before."""
        self._held.sweep(now, None)
