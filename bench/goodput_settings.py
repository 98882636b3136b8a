"""The shape of a ``bench.goodput`` run, from its command line: the quota, the calls, the numbers
of tools and their workers, the variants; and the config its proxies start with."""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

from bench.floor import floor_seconds
from proxy.units import Limit, format_duration, parse_limit

#: Workers per tool, cycled: tool 0 has 1, tool 1 has 4, tool 2 has 2, tool 3 has 8, tool 4 has 1 …
WORKERS = (1, 4, 2, 8)
PATH = "/api/machines"
ROUTE = "machines.list"


@dataclass(frozen=True, slots=True)
class Variant:
    """A way the tools reach the API: the strategy they run and the proxies in between."""

    name: str
    strategy: str
    #: 0: straight to the simulator; 1: one proxy, in-process store; more: that many on Redis
    replicas: int


VARIANTS = (
    Variant("proxy", "plain", 1),
    Variant("proxy-3-redis", "plain", 3),
    Variant("urllib3-retry", "urllib3-retry", 0),
    Variant("tenacity", "tenacity", 0),
    Variant("kiota-retry", "kiota-retry", 0),
    Variant("azure-core-retry", "azure-core-retry", 0),
)


@dataclass(frozen=True, slots=True)
class Settings:
    """One run's shape, from the command line."""

    limits: tuple[Limit, ...]
    calls: int
    tools: tuple[int, ...]
    rounds: int
    margin: float
    timeout_factor: float
    quick: bool
    variants: tuple[Variant, ...] = VARIANTS

    def per_tool(self, n: int) -> int:
        """M: each of ``n`` tools' share of the calls, rounded up."""
        return math.ceil(self.calls / n)

    def floor(self, n: int) -> float:
        """The floor of ``n`` tools' jobs, seconds."""
        return floor_seconds(self.limits, n * self.per_tool(n))

    @property
    def max_wait(self) -> float:
        """The proxy's ``max_wait``: twice the longest window (see the module's docstring)."""
        return 2 * max(limit.window for limit in self.limits)


def workers(n: int) -> list[int]:
    """Workers of each of ``n`` tools."""
    return [WORKERS[i % len(WORKERS)] for i in range(n)]


# -- the proxies' config -----------------------------------------------------------------------


def proxy_config(settings: Settings, store: int = 0, replicas: int = 1, namespace: str = "") -> str:
    """The proxies' config: the simulator's limits on the route, in memory or on the Redis at
    port ``store`` shared by ``replicas``; upstream, ports and logs come from bench.services."""
    limits = ", ".join(f'"{limit}"' for limit in settings.limits)
    shared = (
        f"  store: redis://127.0.0.1:{store}/0\n  namespace: {namespace}\n"
        f"  fallback: {{expected_replicas: {replicas}}}\n"
        if store
        else ""
    )
    return (
        "shutdown_grace: 1s\n"
        "throttle:\n"
        f"{shared}"
        f"  max_wait: {format_duration(settings.max_wait)}\n"
        f"  margin: {settings.margin * 1000:g}ms\n"
        "  routes:\n"
        f"    - {{name: {ROUTE}, limits: [{limits}]}}\n"
    )


# -- the command line ----------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> Settings:
    """The run's settings; ``--quick`` changes the defaults of those not given."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.goodput",
        description="Bulk jobs of several tools on one quota: through the proxy, against the "
        "retry strategies tools use today.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="10/1s and 100/20s, 144 calls, N = 1 and 8, 1 round"
    )
    parser.add_argument(
        "--limit", action="append", metavar="COUNT/WINDOW", help="repeat; default 20/2s and 300/1m"
    )
    parser.add_argument("--calls", type=int, help="calls of all tools together (default 480)")
    parser.add_argument("--tools", help="the numbers of tools (default 1,3,8; quick: 1,8)")
    parser.add_argument("--rounds", type=int, help="default 3")
    parser.add_argument("--margin", type=float, default=0.1, help="the proxy's, seconds (0.1)")
    parser.add_argument("--timeout-factor", type=float, default=6.0, help="× the floor (6)")
    parser.add_argument(
        "--variants",
        default=",".join(variant.name for variant in VARIANTS),
        help="a comma-separated subset of the variants (default: all)",
    )
    args = parser.parse_args(argv)
    quick = bool(args.quick)
    settings_names = args.variants.split(",")
    limits = args.limit or (["10/1s", "100/20s"] if quick else ["20/2s", "300/1m"])
    settings = Settings(
        limits=tuple(parse_limit(text) for text in limits),
        calls=args.calls or (144 if quick else 480),
        tools=tuple(int(n) for n in (args.tools or ("1,8" if quick else "1,3,8")).split(",")),
        rounds=args.rounds or (1 if quick else 3),
        margin=args.margin,
        timeout_factor=args.timeout_factor,
        quick=quick,
        variants=tuple(variant for variant in VARIANTS if variant.name in settings_names),
    )
    unknown = set(settings_names) - {variant.name for variant in VARIANTS}
    if unknown:
        parser.error(f"unknown variants: {', '.join(sorted(unknown))}")
    longest = max(settings.limits, key=lambda limit: limit.window)
    if settings.calls <= longest.count:
        parser.error(f"--calls must exceed {longest.count} so that {longest} binds too")
    return settings
