"""The simulator's quotas, kept per (route, identity) the way Microsoft counts them.

Defender and Graph count per application + tenant; advanced hunting per tenant
(docs/defender-api.md, "Who a quota belongs to"). With ``per_identity`` the simulator does the
same: each request is counted in the quota of its route and of the identity its bearer token
claims (``tid`` + ``appid``/``azp``, or ``tid`` alone for the hunting routes). The route is named
with the proxy's own catalogue and router (``proxy.routing``) and the claims are read with
``proxy.identity``: the simulator stands in for the API, not for the proxy's decisions, so
sharing the catalogue only spares a second copy of the route table. Without ``per_identity``
every request shares one quota, as before.

Every quota has the configured limits. Their number is bounded (``MAX_QUOTAS``); requests past it
share one ``overflow`` quota.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Final

from proxy.identity import ANONYMOUS, OVERFLOW, Claims
from proxy.routing import Router
from proxy.simulator.quota import Refusal, SlidingQuota
from proxy.throttle_config import TENANT_ROUTES
from proxy.units import Limit

MAX_QUOTAS: Final = 10_000


class KeyedQuota:
    """One ``SlidingQuota`` per key, made on the key's first request."""

    def __init__(
        self,
        limits: Sequence[Limit],
        count_rejected: bool,
        clock: Callable[[], float],
        per_identity: bool,
    ) -> None:
        self._limits = tuple(limits)
        self._count_rejected = count_rejected
        self._clock = clock
        self._per_identity = per_identity
        self._router = Router()
        self._quotas: dict[str, SlidingQuota] = {}

    def key(self, method: str, path: str, claims: Claims) -> str:
        """The quota a request counts in: "" for all, else ``<route> <tid>[.<app>]``."""
        if not self._per_identity:
            return ""
        route = self._router.match(method, path).name
        if route in TENANT_ROUTES:
            who = claims.tid
        else:
            who = None if claims.tid is None or claims.app is None else f"{claims.tid}.{claims.app}"
        return f"{route} {who or ANONYMOUS}"

    def admit(self, key: str) -> Refusal | None:
        """Decide the request arriving now in quota ``key``: ``None`` admits it."""
        quota = self._quotas.get(key)
        if quota is None:
            if len(self._quotas) >= MAX_QUOTAS:
                key = OVERFLOW
                quota = self._quotas.get(key)
            if quota is None:
                quota = SlidingQuota(self._limits, self._count_rejected, self._clock)
                self._quotas[key] = quota
        return quota.admit()

    def stats(self) -> dict[str, object]:
        """The figures summed over every quota (``max_in_window``: the most of any quota), and
        with ``per_identity`` each quota's own under ``quotas``."""
        each = {key: quota.stats() for key, quota in self._quotas.items()}
        busiest = {str(limit): 0 for limit in self._limits}
        for figures in each.values():
            most = figures["max_in_window"]
            assert isinstance(most, dict)
            for name, count in most.items():
                busiest[name] = max(busiest[name], count)
        totals: dict[str, object] = {
            name: sum(int(str(figures[name])) for figures in each.values())
            for name in ("requests", "admitted", "throttled")
        }
        totals["max_in_window"] = busiest
        if self._per_identity:
            totals["quotas"] = each
        return totals

    def reset(self) -> None:
        """Forget every quota and figure."""
        self._quotas.clear()
