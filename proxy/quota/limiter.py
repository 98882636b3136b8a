"""The quota policy: wait or refuse, deadlines, priorities, upstream pauses, shadow mode.

Per request: the route's quota is asked for the earliest slot within the caller's deadline
(``throttle.max_wait``, or less if the caller asks for less). Admitted callers sleep until their
slot; for the others ``admit`` raises ``QuotaExceeded``, which the handler answers with 429 and
``Retry-After``. Bulk requests (by route, or when the caller says so) may not use the last
``bulk_reserve`` share of any window, so an isolate action is never starved by an export.
Plain values in, plain values out: the caller's headers are read, and the answer's headers
written, by ``proxy.quota_headers``. The clock and the sleep are injected, so a test of waiting
moves time instead of spending it.

When the API itself answers 429, the route's quota is paused for every replica until the time the
API asked for (``Retry-After`` or the hints in the body), capped at ``max_pause`` and jittered;
with no hint at all the pause backs off exponentially from one second.

Quotas per identity and per path family are made on first use and held only while they can
matter: each admission holds its quota (and its identity, and its family) until a window after
its slot, and a pause until it ends. A request holds them for a window from the moment it asks
(whatever the answer), so nothing is let go while a decision is in flight: a store call lasts
far less than a window, and the slot it gives is held from its answer on. Past that the quota holds
nothing in any window, and the limiter forgets it (``proxy.leases``): the tables hold the callers
of the last window, not every caller since the start.

A reload changes the policy in place (``reconfigure``): the store and what it holds stay, so a
slot already given is kept, and admissions asked from then on are decided by the new limits
against the same logs.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Final

from proxy import hints
from proxy.catalogue import OTHER, RouteSpec
from proxy.config import Throttle
from proxy.identity import NO_CLAIMS, Claims, Identities, Labels
from proxy.leases import Leases
from proxy.logs import get_logger
from proxy.metrics import Metrics
from proxy.quota import fair
from proxy.quota.families import Families
from proxy.quota.learned import LearnedLimits
from proxy.quota.policies import RoutePolicy, RouteSeries, route_table
from proxy.quota.store import Decision, Quota, QuotaStore, quota_key

#: The shortest a deferred request sleeps before it asks again (seconds).
MIN_TURN: Final = 0.001


def fresh_member(member: str) -> str:
    """Another admission id for the same request (a retry after a pause)."""
    return f"{member}+"


class QuotaExceeded(Exception):  # noqa: N818 - a refusal, not a failure
    """No slot within the caller's deadline: the request is refused (429 from the proxy)."""

    def __init__(
        self, route: str, deadline: float, decision: Decision, batch_index: int | None = None
    ) -> None:
        #: whole seconds until a slot would be free (at least 1), for ``Retry-After``
        self.retry_after = max(1, math.ceil(decision.wait))
        if batch_index is None:
            text = f"the {route} quota has no slot within {deadline:g}s"
        else:
            text = (
                f"the batch's request {batch_index} ({route}) has no slot within {deadline:g}s; "
                "no request of the batch was sent"
            )
        super().__init__(f"{text}; retry in {self.retry_after}s")
        self.route = route
        self.decision = decision


@dataclass(slots=True)
class Admission:
    """The quota's answer for one request, as the handler needs it."""

    quota: Quota
    decision: Decision
    outcome: str
    waited: float
    #: seconds the store took to decide (one round trip for Redis)
    decided: float


@dataclass(frozen=True, slots=True)
class BatchAdmission:
    """The quota's answer for every inner request of a ``$batch`` at once."""

    #: ``admitted`` (every slot free at once) or ``waited`` (for the latest slot)
    outcome: str
    waited: float
    #: seconds the store took to decide, over all the inner requests
    decided: float
    #: inner requests that hold a slot (shadow routes take none)
    count: int


@dataclass(frozen=True, slots=True)
class _Held:
    """A quota made for one identity or path family, and what holding it holds."""

    quota: Quota
    #: (route or ``other:<family>``, identity): its place in the limiter's table
    pair: tuple[str, str]
    #: the identity ("" for ``shared``) and the path family ("" but for ``other``)
    identity: str
    family: str


class Limiter:
    """Admits requests against the shared quota and reacts to the API's own 429s."""

    def __init__(
        self,
        throttle: Throttle,
        routes: tuple[RouteSpec, ...],
        policies: Mapping[str, tuple[str, str]],
        store: QuotaStore,
        metrics: Metrics,
        rng: random.Random | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._throttle = throttle
        self.store = store
        self._metrics = metrics
        self._rng = rng or random.Random()
        self._clock = clock
        self._sleep = sleep
        self._routes = route_table(throttle, routes, policies)
        #: the policies of routes the last reload took away, for requests routed before it
        self._retired: dict[str, RoutePolicy] = {}
        # `other`'s limits are the catalogue's (the config may set only its priority, mode and
        # scope) and the margin never changes while the process runs: its families' windows stay.
        other = self._routes.get(OTHER)
        self._families = (
            None
            if other is None
            else Families(
                throttle.namespace, OTHER, other.quota.windows, on_forget=self._forget_state
            )
        )
        self._identities = Identities(throttle.identities.max)
        self._labels = Labels(dict(throttle.identities.names))
        # (route or ``other:<family>``, identity) → its quota, held while it can matter.
        self._quotas: dict[tuple[str, str], _Held] = {}
        self._by_key: dict[str, _Held] = {}
        self._held: Leases[tuple[str, str]] = Leases(on_forget=self._forget)
        self._series = RouteSeries(metrics, self._routes)
        self._streak: dict[str, int] = {}
        self._paused_until: dict[str, float] = {}
        self._pending: set[asyncio.Task[None]] = set()
        self._learned = LearnedLimits(routes, metrics)
        self._log = get_logger("quota")
        self._store_timer = metrics.store_duration.labels(store.name)
        metrics.pauses_active.set_function(self._count_pauses)

    def _count_pauses(self) -> float:
        now = self._clock()
        # Pauses that ended are dropped here (a scrape), so the table holds the current ones.
        self._paused_until = {k: until for k, until in self._paused_until.items() if until > now}
        return float(len(self._paused_until))

    def reconfigure(
        self,
        throttle: Throttle,
        routes: tuple[RouteSpec, ...],
        policies: Mapping[str, tuple[str, str]],
    ) -> None:
        """Take a reload's settings in place: the route table, each route's limits, priority,
        mode and scope, ``mode``, ``max_wait``, ``max_pause``, ``bulk_reserve`` and
        ``identities``; ``store``, ``namespace``, ``margin`` and the rest of the store's
        settings stay as they were at start (they name its keys or make the store itself).

        Nothing is awaited, so no admission sees half of it. The store keeps every log: a slot
        already given (a waiter's) is kept and taken at its time, a window keeps its key while
        its width does, and every admission asked from now on is decided by the new limits
        against what the windows already hold. Identities, families and pauses are kept.
        """
        throttle = replace(
            throttle, namespace=self._throttle.namespace, margin=self._throttle.margin
        )
        table = route_table(throttle, routes, policies)
        self._retired = {name: policy for name, policy in self._routes.items() if name not in table}
        self._routes = table
        self._throttle = throttle
        # Quotas made per identity carry their route's windows: from now on, the new ones.
        for pair, held in list(self._quotas.items()):
            policy = None if held.family else table.get(pair[0])
            if policy is None or held.quota.windows == policy.quota.windows:
                continue
            fresh = replace(held, quota=Quota(held.quota.key, policy.quota.windows))
            self._quotas[pair] = fresh
            if self._by_key.get(held.quota.key) is held:
                self._by_key[held.quota.key] = fresh
        self._identities.resize(throttle.identities.max)
        self._labels = Labels(dict(throttle.identities.names))
        self._series.retable(table)
        self._learned = LearnedLimits(routes, self._metrics)

    def _policy(self, route: str) -> RoutePolicy:
        """The policy of ``route``; a route the last reload took away keeps its policy for the
        requests routed before it, and one gone for longer has ``other``'s."""
        policy = self._routes.get(route) or self._retired.get(route)
        return policy if policy is not None else self._routes[OTHER]

    def _quota_of(
        self,
        route: str,
        policy: RoutePolicy,
        claims: Claims,
        family: str = "",
    ) -> Quota:
        """The route's quota for the identity ``claims`` have under the route's scope; for
        ``other`` with a path family, the family's (``quota.families``) for that identity.

        It is held (with its identity and family) for a window from now, which covers the store
        call about to be made; the caller holds it on to a window after the slot it gets.
        """
        now = self._clock()
        until = now + policy.horizon
        self._held.sweep(now)
        base, name = policy.quota, route
        if family and self._families is not None and route == OTHER:
            family, base = self._families.quota(family, now=now, until=until)
            name = f"{route}:{family}"
        else:
            family = ""
        identity = self._identities.key(claims, policy.scope, now=now, until=until)
        if not identity and not family:
            return base
        pair = (name, identity)
        held = self._quotas.get(pair)
        if held is None:
            quota = (
                Quota(quota_key(self._throttle.namespace, name, identity), base.windows)
                if identity
                else base
            )
            held = _Held(quota, pair, identity, family)
            self._quotas[pair] = held
        self._by_key[held.quota.key] = held
        self._held.hold(pair, until)
        return held.quota

    def _hold(self, quota: Quota, until: float) -> None:
        """Hold ``quota`` (if it is one made per identity or family) and its identity and
        family at least until ``until``."""
        held = self._by_key.get(quota.key)
        if held is None:
            return
        self._held.extend(held.pair, until)
        if held.identity:
            self._identities.extend(held.identity, until)
        if held.family and self._families is not None:
            self._families.extend(held.family, until)

    def _forget(self, pair: tuple[str, str]) -> None:
        held = self._quotas.pop(pair)
        if self._by_key.get(held.quota.key) is held:
            del self._by_key[held.quota.key]
        self._forget_state(held.quota)

    def _forget_state(self, quota: Quota) -> None:
        # Forgotten only once any pause of it has ended (a pause holds its quota).
        self._streak.pop(quota.key, None)
        self._paused_until.pop(quota.key, None)

    def tidy(self) -> None:
        """Forget now every identity, path family and quota whose time has passed, here and in
        the store: the process has gone quiet, and each would otherwise wait for the next
        request to be let go (a burst's leftovers, scattered over the memory it took)."""
        now = self._clock()
        self._held.sweep(now, None)
        self._identities.sweep(now)
        if self._families is not None:
            self._families.sweep(now)
        self.store.tidy()

    def held(self) -> dict[str, int]:
        """What the limiter holds now: identities, path families, quotas made for either."""
        families = 0 if self._families is None else len(self._families)
        return {
            "identities": len(self._identities),
            "families": families,
            "quotas": len(self._quotas),
        }

    def quota_for(self, route: str, claims: Claims, family: str = "") -> Quota:
        """The quota a request on ``route`` (and path ``family``, for ``other``) from the caller
        ``claims`` name is admitted on."""
        return self._quota_of(route, self._policy(route), claims, family)

    def _deadline(self, max_wait: float | None) -> float:
        limit = self._throttle.max_wait
        return limit if max_wait is None else min(limit, max_wait)

    def _reserve(self, policy: RoutePolicy, bulk: bool | None) -> float:
        return self._throttle.bulk_reserve if self._is_bulk(policy, bulk) else 0.0

    @staticmethod
    def _is_bulk(policy: RoutePolicy, bulk: bool | None) -> bool:
        return policy.bulk if bulk is None else bulk

    async def admit(
        self,
        route: str,
        member: str,
        max_wait: float | None = None,
        bulk: bool | None = None,
        claims: Claims = NO_CLAIMS,
        family: str = "",
        *,
        client: str | None = None,
    ) -> Admission:
        """Wait for the request's slot, or raise ``QuotaExceeded``.

        ``max_wait`` is the caller's own deadline in seconds (never more than
        ``throttle.max_wait``; None: that one); ``bulk`` whether the caller asked for bulk or
        interactive priority (None: the route's). The slot is taken in the quota of the caller
        ``claims`` name (and of the path ``family``, for ``other``).

        ``client`` names the calling tool for the fair share (``throttle.fair_share``; None: no
        share is kept for it). A request the store defers waits for its caller's turn and asks
        again, within the same deadline; the time it waited so counts as waiting for its slot.
        """
        policy = self._policy(route)
        deadline = self._deadline(max_wait)
        quota = self._quota_of(route, policy, claims, family)
        reserve = self._reserve(policy, bulk)
        if client is not None and self._throttle.fair_share:
            member = fair.tagged(fair.tag(client, self._is_bulk(policy, bulk)), member)
        first = self._clock()
        deferred = 0.0
        turns = 0
        while True:
            started = self._clock()
            left = max(0.0, deadline - (started - first))
            if turns and not left:
                # The deadline comes before the share: its last ask is first come, first served,
                # so a deferral never turns into a refusal the queue alone would not give.
                member = fair.untagged(member)
            decision = await self._ask(quota, member, left, reserve, policy.shadow)
            ended = self._clock()
            if decision.turn <= 0:
                break
            # Deferred: the caller holds its share of the queue. Nothing is held meanwhile, so a
            # caller that leaves now has nothing to give back. A turn microseconds away is slept
            # as MIN_TURN, so a run of such turns cannot spin on the store.
            self._metrics.fair_share_deferrals.labels(route).inc()
            turn = max(decision.turn, MIN_TURN)
            await self._sleep(min(turn, max(0.0, deadline - (ended - first))))
            deferred = self._clock() - first
            turns += 1
        decided = ended - started
        if decision.admitted or policy.shadow:
            self._hold(quota, ended + max(0.0, decision.wait) + policy.horizon)
        labels = (route, self._labels.of(claims.tid), self._labels.of(claims.app))
        if decision.admitted and decision.wait <= 0 and not deferred and not policy.shadow:
            # Admitted at once, the usual case: the request goes upstream now, and what the
            # admission counts in the metrics is counted on the loop's next turn, while the
            # upstream answers, not on the way there.
            asyncio.get_running_loop().call_soon(
                self._count_admitted, labels, policy, decided, decision.remaining
            )
            return Admission(quota, decision, "admitted", 0.0, decided)
        self._store_timer.observe(decided)
        waited = deferred + max(0.0, decision.wait)
        children = self._series.of(labels, policy)
        children.show(decision.remaining)
        if policy.shadow:
            if decision.wait <= 0:
                outcome = "admitted"
            else:
                outcome = "shadow_waited" if decision.admitted else "shadow_refused"
            children.outcomes[outcome].inc()
            return Admission(quota, decision, outcome, 0.0, decided)
        if not decision.admitted:
            children.outcomes["refused"].inc()
            raise QuotaExceeded(route, deadline, decision)
        # Admitted with a wait (or after the fair share deferred it): wait for the slot.
        try:
            await self._sleep(decision.wait)
        except asyncio.CancelledError:
            # The caller went away while waiting: give its slot back to the others.
            self._release_later(quota, member)
            raise
        if self._paused_until.get(quota.key, 0.0) > self._clock():
            # The API answered 429 while this caller waited: its slot predates the pause.
            self._release_later(quota, member)
            # The member already names its caller: asked again as it is, not tagged twice.
            return await self.admit(route, fresh_member(member), max_wait, bulk, claims, family)
        children.wait.observe(waited)
        children.outcomes["waited"].inc()
        return Admission(quota, decision, "waited", waited, decided)

    def _count_admitted(
        self,
        labels: tuple[str, str, str],
        policy: RoutePolicy,
        decided: float,
        remaining: tuple[int, ...],
    ) -> None:
        """The metrics of an admission that took its slot at once (see ``admit``)."""
        self._store_timer.observe(decided)
        children = self._series.of(labels, policy)
        children.show(remaining)
        children.wait.observe(0.0)
        children.outcomes["admitted"].inc()

    async def _ask(
        self, quota: Quota, member: str, deadline: float, reserve: float, shadow: bool
    ) -> Decision:
        try:
            return await self.store.admit(quota, member, deadline, reserve, shadow)
        except asyncio.CancelledError:
            # The caller went away during the store's own round trip: whatever slot the store
            # gave it is never used, so it goes back, whether its time has come or not.
            self._release_later(quota, member, unused=True)
            raise

    def _release_later(self, quota: Quota, member: str, *, unused: bool = False) -> None:
        release = self.store.release(quota, member, unused=unused)
        task = asyncio.get_running_loop().create_task(release)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    # A $batch: every inner request admitted as if sent alone, all of them or none.

    async def admit_batch(
        self,
        routes: Sequence[str],
        member: str,
        max_wait: float | None = None,
        bulk: bool | None = None,
        claims: Claims = NO_CLAIMS,
        families: Sequence[str] = (),
    ) -> BatchAdmission:
        """Take a slot for each inner request of a batch (``routes``, in order, with the path
        ``families`` of the unmatched ones, as ``admit`` takes them), then wait once
        for the latest; if any has no slot within the deadline, give back every one and raise
        ``QuotaExceeded`` for the whole batch.

        Reserve first, wait after: each store call is one atomic admission on one quota, so the
        slots are taken one by one with the caller's deadline, and only when all are held does the
        batch wait (once, until the latest). The batch itself takes no slot: Graph counts the
        requests inside it, each on its own, in the quota of the batch's caller (``claims``).
        """
        deadline = self._deadline(max_wait)
        tenant, app = self._labels.of(claims.tid), self._labels.of(claims.app)
        held: list[tuple[str, Quota, str]] = []
        # Per route, the policy the batch is admitted on (one, whatever a reload does meanwhile)
        # and what the batch's last decision on it left: the gauge a refusal corrects.
        taken: dict[str, RoutePolicy] = {}
        shown: dict[str, tuple[int, ...]] = {}
        latest = 0.0
        decided = 0.0
        for index, route in enumerate(routes):
            policy = taken.setdefault(route, self._policy(route))
            family = families[index] if index < len(families) else ""
            quota = self._quota_of(route, policy, claims, family)
            inner = f"{member}.{index}"
            started = self._clock()
            try:
                decision = await self._ask(
                    quota, inner, deadline, self._reserve(policy, bulk), policy.shadow
                )
            except asyncio.CancelledError:
                for _, given, held_inner in held:
                    self._release_later(given, held_inner, unused=True)
                raise
            ended = self._clock()
            took = ended - started
            if decision.admitted or policy.shadow:
                self._hold(quota, ended + max(0.0, decision.wait) + policy.horizon)
            decided += took
            self._store_timer.observe(took)
            children = self._series.of((route, tenant, app), policy)
            children.show(decision.remaining)
            shown[route] = decision.remaining
            if policy.shadow:
                if decision.wait <= 0:
                    children.outcomes["admitted"].inc()
                else:
                    shadow = "shadow_waited" if decision.admitted else "shadow_refused"
                    children.outcomes[shadow].inc()
                continue
            if not decision.admitted:
                await self._give_back(held)
                self._show_given_back(held, taken, shown, tenant, app)
                for other in routes:
                    policy = taken.get(other) or self._policy(other)
                    if not policy.shadow:
                        children = self._series.of((other, tenant, app), policy)
                        children.outcomes["refused"].inc()
                raise QuotaExceeded(route, deadline, decision, batch_index=index)
            held.append((route, quota, inner))
            latest = max(latest, decision.wait)
        if latest > 0:
            try:
                await self._sleep(latest)
            except asyncio.CancelledError:
                # The caller went away while waiting: give every slot back to the others.
                for _, quota, inner in held:
                    self._release_later(quota, inner)
                raise
            now = self._clock()
            if any(self._paused_until.get(quota.key, 0.0) > now for _, quota, _ in held):
                # The API answered 429 while the batch waited: its slots predate the pause.
                for _, quota, inner in held:
                    self._release_later(quota, inner)
                return await self.admit_batch(
                    routes, fresh_member(member), max_wait, bulk, claims, families
                )
        outcome = "waited" if latest > 0 else "admitted"
        for route, _, _ in held:
            children = self._series.of((route, tenant, app), taken[route])
            children.wait.observe(latest)
            children.outcomes[outcome].inc()
        return BatchAdmission(outcome, latest, decided, len(held))

    def _show_given_back(
        self,
        held: Sequence[tuple[str, Quota, str]],
        taken: Mapping[str, RoutePolicy],
        shown: dict[str, tuple[int, ...]],
        tenant: str,
        app: str,
    ) -> None:
        # The gauges last showed the batch's own decisions, which counted the slots it has just
        # given back as used: without this a refused batch leaves its routes showing 0 left.
        given = Counter(route for route, _, _ in held)
        for route, count in given.items():
            children = self._series.of((route, tenant, app), taken[route])
            children.show([left + count for left in shown[route]])

    async def _give_back(self, held: Sequence[tuple[str, Quota, str]]) -> None:
        # Awaited, not left to a task: the 429 goes out only once no slot of the batch is held.
        for _, quota, inner in held:
            await self.store.release(quota, inner, unused=True)

    async def observe_answer(
        self,
        route: str,
        status: int,
        hint: hints.Hint | None = None,
        quota: Quota | None = None,
    ) -> None:
        """React to the API's answer: a 429 — or a 503 that says when to come back (``hint``),
        as Graph throttles too — pauses the quota the request was admitted on (by default the
        route's quota of a caller without a token) for every replica.

        ``hint`` is what the answer said about waiting (``hints.upstream_hint``); a 429 without
        one backs off.
        """
        quota = quota or self.quota_for(route, NO_CLAIMS)
        if status != 429 and (status != 503 or hint is None):
            self._streak.pop(quota.key, None)
            return
        hint = hint or hints.NO_HINT
        self._metrics.upstream_throttled.labels(route, hint.reason).inc()
        if hint.stated is not None:
            self._learned.observe(route, *hint.stated)
        if hint.seconds is None:
            streak = self._streak.get(quota.key, 0) + 1
            self._streak[quota.key] = streak
            seconds = hints.backoff(streak)
        else:
            seconds = hint.seconds
        pause = hints.jittered(seconds, self._throttle.max_pause, self._rng)
        left = await self.store.pause(quota, pause)
        until = self._clock() + left
        self._paused_until[quota.key] = until
        # A paused identity is held until its pause ends: forgotten earlier, it could come back
        # on overflow and walk around the pause.
        self._hold(quota, until)
        self._log.warning(
            "upstream throttled: quota paused for every replica",
            route=route,
            pause_s=round(left, 3),
            hint=hint.source,
            cause=hint.reason,
        )

    async def warm(self) -> None:
        """Prepare the store before the first request (connections, scripts)."""
        if not await self.store.warm():
            self._log.warning("quota store not reachable at start: using the local share")

    async def close(self) -> None:
        """Finish the give-backs in flight and close the store."""
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
        await self.store.close()
