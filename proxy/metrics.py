"""Every metric the proxy exports, declared in one place, with bounded label sets.

Label values come from closed sets only: ``upstream`` is the name of a configured upstream (at most
``proxy.upstreams.MAX_UPSTREAMS``); ``route`` is a catalogue name or ``other``; ``method`` one
of the HTTP methods below or ``other``; ``status`` a three-digit code; ``code`` a known Defender
code, a classification marker, or one of the first ``MAX_DYNAMIC_CODES`` other codes seen on the
wire — after that ``other``; ``tenant`` and ``app`` (the caller, on the quota metrics) a name from
``throttle.identities.names``, ``other``, or ``anonymous`` with no token (``proxy.identity.Labels``);
``kind`` on the body hints one of ``proxy.body_hints.KINDS``; ``result`` on the reloads one of
``RELOAD_RESULTS``; ``listener`` the name of an upstream whose listener serves HTTPS.
No upstream or caller, however hostile, can grow the series without bound.

Beside the proxy's own, the registry carries prometheus_client's standard ``process_*`` (RSS, open
file descriptors, CPU seconds), ``python_info`` and ``python_gc_*`` collectors, so the readings a
soak takes from outside the process are on every replica's admin port too.
"""

from __future__ import annotations

import platform
import re
from collections.abc import Callable
from typing import Final

import prometheus_client
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Info,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.exposition import generate_latest

from proxy import __version__, classify, codes, series

# No ``_created`` series: neither the rules nor the dashboards read them, and the per-request
# series (proxy.series) have none, so none of the rest should either.
_disable_created: Callable[[], None] = prometheus_client.disable_created_metrics  # untyped there
_disable_created()

#: The results of a reload (``proxy.reload``): the values of ``defender_proxy_reloads_total``'s label.
RELOAD_RESULTS: Final = ("ok", "unchanged", "invalid")
#: How many codes outside the known set get their own label value before the rest become ``other``.
MAX_DYNAMIC_CODES: Final = 100
OTHER: Final = "other"

_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_CODE_SHAPE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}\Z")
# Request latency through a sidecar is small; the upstream's (hunting queries) can be minutes.
_LATENCY_BUCKETS: Final = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0,
)  # fmt: skip


class CodeLabels:
    """Maps raw error codes to a bounded set of label values."""

    __slots__ = ("_known", "_seen")

    def __init__(self) -> None:
        self._known: frozenset[str] = (
            frozenset(codes.ERROR_TABLE)
            | codes.SEEN_IN_THE_WILD
            | codes.PROXY_CODES
            | classify.MARKERS
        )
        self._seen: set[str] = set()

    def label(self, code: str) -> str:
        """The label value for ``code``."""
        if code in self._known or code in self._seen:
            return code
        if len(self._seen) >= MAX_DYNAMIC_CODES or not _CODE_SHAPE.match(code):
            return OTHER
        if code.startswith("eyJ"):  # a JWT's first part: never a label value
            return OTHER
        self._seen.add(code)
        return code


def method_label(method: str) -> str:
    """The label value for an HTTP method."""
    return method if method in _METHODS else OTHER


def status_label(status: int) -> str:
    """The label value for an HTTP status."""
    return str(status) if 100 <= status <= 599 else OTHER


class _Total:
    """A gauge that reads the sum of several sources, one per listener, at each scrape."""

    __slots__ = ("_sources",)

    def __init__(self, gauge: Gauge) -> None:
        self._sources: list[Callable[[], float]] = []
        gauge.set_function(self.total)

    def add(self, source: Callable[[], float]) -> None:
        """Count ``source`` in the gauge from now on."""
        self._sources.append(source)

    def total(self) -> float:
        """The sum of the sources now."""
        return float(sum(source() for source in self._sources))


class Metrics:
    """The proxy's metrics on one registry (a fresh registry per app, so tests stay isolated)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.codes = CodeLabels()
        r = self.registry
        self.api_errors = series.Counter(
            "defender_api_errors",
            "Error responses (status >= 400) from the Defender API, by parsed error code.",
            ["route", "status", "code"],
            registry=r,
        )
        self.requests = series.Counter(
            "defender_proxy_requests",
            "Requests answered, by upstream, route, method, status and who answered (upstream "
            "or proxy).",
            ["upstream", "route", "method", "status", "source"],
            registry=r,
        )
        self.request_duration = series.Histogram(
            "defender_proxy_request_duration_seconds",
            "Time from receiving a request to the end of its response.",
            ["upstream", "route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_duration = series.Histogram(
            "defender_proxy_upstream_duration_seconds",
            "Time from sending a request upstream to receiving the response headers.",
            ["upstream", "route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_failures = Counter(
            "defender_proxy_upstream_failures",
            "Upstream requests that got no response, by kind (see the README for the set).",
            ["route", "kind"],
            registry=r,
        )
        self.in_flight = Gauge(
            "defender_proxy_in_flight_requests",
            "Requests being handled right now.",
            registry=r,
        )
        #: every listener's requests in flight, summed
        self.in_flight_sources = _Total(self.in_flight)
        self.ready = Gauge(
            "defender_proxy_ready",
            "1 while the proxy accepts new requests, 0 while it drains.",
            registry=r,
        )
        self.upstream_reachable = Gauge(
            "defender_proxy_upstream_reachable",
            "1 while the upstream can be reached (a TCP and TLS connect every 10s), 0 after 3 "
            "failed checks in a row, 1 again after one success.",
            ["upstream"],
            registry=r,
        )
        self.admissions = series.Counter(
            "defender_proxy_admissions",
            "Quota decisions by route and outcome: admitted (at once), waited (after a wait), "
            "refused (429 from the proxy), shadow_waited and shadow_refused (shadow mode); tenant "
            "and app name the caller through throttle.identities.names, else other or anonymous.",
            ["route", "outcome", "tenant", "app"],
            registry=r,
        )
        self.admission_wait = series.Histogram(
            "defender_proxy_admission_wait_seconds",
            "How long admitted requests waited for their slot in the quota.",
            ["route"],
            buckets=(0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0),
            registry=r,
        )
        self.quota_remaining = series.Gauge(
            "defender_proxy_quota_remaining",
            "Requests left in the route's quota window ending now, as of the last admission (of "
            "any caller the tenant and app labels cover).",
            ["route", "window", "tenant", "app"],
            registry=r,
        )
        self.store_duration = series.Histogram(
            "defender_proxy_quota_store_duration_seconds",
            "Time one admission decision took in the quota store (one round trip for Redis).",
            ["store"],
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25),
            registry=r,
        )
        self.fair_share_deferrals = Counter(
            "defender_proxy_fair_share_deferrals",
            "Times a request took no slot and waited for another caller's turn (or its own "
            "earliest reservation) under throttle.fair_share, by route.",
            ["route"],
            registry=r,
        )
        self.upstream_throttled = Counter(
            "defender_proxy_upstream_throttled",
            "429 answers from the API (and 503s that say when to come back), by route and the "
            "quota they hit as their body tells: calls (the call count), cpu (hunting's "
            "processing resources) or unknown.",
            ["route", "cause"],
            registry=r,
        )
        self.auth_failures = Counter(
            "defender_proxy_auth_failures",
            "401 and 403 answers from the API, by route, status, the cause read from the token "
            "the caller sent (no_token, not_bearer, malformed, expired, not_yet_valid, "
            "wrong_audience, missing_role, token_ok) and the caller's app (a name from "
            "throttle.identities.names, else other, or anonymous without one).",
            ["route", "status", "cause", "app"],
            registry=r,
        )
        self.quota_learned_limit = Gauge(
            "defender_proxy_quota_learned_limit",
            "The count an upstream 429 stated for the route's window (maximum allowed N per W); "
            "compare with the configured limit (throttle.routes). Windows the route does not "
            "configure are labelled other.",
            ["route", "window"],
            registry=r,
        )
        self.pauses_active = Gauge(
            "defender_proxy_upstream_pauses_active",
            "Routes whose quota is paused after an upstream 429, as this replica knows.",
            registry=r,
        )
        self.store_fallback = Gauge(
            "defender_proxy_quota_store_fallback",
            "1 while the shared quota store is unreachable and the local share is used.",
            registry=r,
        )
        self.store_fallbacks = Counter(
            "defender_proxy_quota_store_fallbacks",
            "Times the shared quota store became unreachable and the local share took over.",
            registry=r,
        )
        self.caller_timeouts = Counter(
            "defender_proxy_caller_timeouts",
            "Callers cut off after timeouts.caller, by phase: head (the request head was not sent "
            "in time), body (no more of the request body came), answer (the caller stopped taking "
            "the answer).",
            ["phase"],
            registry=r,
        )
        self.caller_connections = Gauge(
            "defender_proxy_caller_connections",
            "Caller connections open on the proxy ports.",
            registry=r,
        )
        #: every listener's open caller connections, summed
        self.caller_connection_sources = _Total(self.caller_connections)
        self.caller_connections_shed = Counter(
            "defender_proxy_caller_connections_shed",
            "Caller connections closed at the connection cap (limits.caller_connections): evicted "
            "(an idle or half-sent connection closed to make room) or refused (no room).",
            ["reason"],
            registry=r,
        )
        self.links_rewritten = Counter(
            "defender_proxy_links_rewritten",
            "Paging links (@odata.nextLink, @odata.deltaLink) on the upstream's origin rewritten "
            "to the origin the caller used, by route.",
            ["route"],
            registry=r,
        )
        self.body_hints = Counter(
            "defender_proxy_body_hints",
            "Hints given on a 400 the API may have answered for a typo in the request body, by "
            "route and kind: case, misspelt, missing (a required parameter), not_object.",
            ["route", "kind"],
            registry=r,
        )
        self.reloads = Counter(
            "defender_proxy_reloads",
            "Reloads of the config file on SIGHUP, by result: ok (settings applied), unchanged "
            "(valid, but nothing that can change without a restart differed), invalid (refused; "
            "the running settings stay).",
            ["result"],
            registry=r,
        )
        for result in RELOAD_RESULTS:
            self.reloads.labels(result)
        self.config_loaded = Gauge(
            "defender_proxy_config_loaded_timestamp_seconds",
            "When the settings in force were last read and found valid (Unix time): at start, "
            "and at every reload that was not refused.",
            registry=r,
        )
        self.listen_tls_reloads = Counter(
            "defender_proxy_listen_tls_reloads",
            "Reloads of a listener's certificate and key after its files changed (listen_tls), "
            "by result: ok (new handshakes get the new pair) or failed (the old pair keeps "
            "serving).",
            ["listener", "result"],
            registry=r,
        )
        self.listen_tls_expiry = Gauge(
            "defender_proxy_listen_tls_expiry_seconds",
            "When the certificate a listener serves expires (its notAfter), as a Unix time.",
            ["listener"],
            registry=r,
        )
        self.token_requests = Counter(
            "defender_proxy_token_requests_total",
            "Token requests the proxy made to the identity provider for callers that bring no "
            "token, by result (ok, failed) and code: the AADSTS number of a refusal, "
            "unreachable, unknown, credential_file or other; empty for ok.",
            ["result", "code"],
            registry=r,
        )
        self.credential_expiry = Gauge(
            "defender_proxy_credential_expiry_seconds",
            "When the app credential the proxy holds for an upstream expires, as a Unix time: "
            "a certificate's notAfter, or a secret's client_secret_expires from the config.",
            ["upstream", "kind"],
            registry=r,
        )
        self.build = Info("defender_proxy_build", "Version of the running proxy.", registry=r)
        self.build.info({"version": __version__, "python": platform.python_version()})
        # Read at each scrape from /proc and the interpreter: nothing is kept between scrapes.
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)

        # Label children cached per label tuple: the label sets are closed, so these stay small.
        self._request_children: dict[tuple[str, str, str, int, str], series.CounterChild] = {}
        self._duration_children: dict[
            tuple[str, str], tuple[series.HistogramChild, series.HistogramChild]
        ] = {}

    def observe_request(
        self,
        upstream: str,
        route: str,
        method: str,
        status: int,
        source: str,
        seconds: float,
        upstream_seconds: float | None,
    ) -> None:
        """Count one answered request and record its durations."""
        # Keyed by the method's label, not the method: a caller inventing methods adds nothing.
        key = (upstream, route, method if method in _METHODS else OTHER, status, source)
        counter = self._request_children.get(key)
        if counter is None:
            counter = self.requests.labels(upstream, route, key[2], status_label(status), source)
            self._request_children[key] = counter
        counter.inc()
        durations = self._duration_children.get((upstream, route))
        if durations is None:
            durations = (
                self.request_duration.labels(upstream, route),
                self.upstream_duration.labels(upstream, route),
            )
            self._duration_children[(upstream, route)] = durations
        durations[0].observe(seconds)
        if upstream_seconds is not None:
            durations[1].observe(upstream_seconds)

    def observe_inner(self, upstream: str, route: str, method: str, status: int) -> None:
        """Count one answer from inside a ``$batch`` answer (``source="batch"``)."""
        key = (upstream, route, method if method in _METHODS else OTHER, status, "batch")
        counter = self._request_children.get(key)
        if counter is None:
            counter = self.requests.labels(upstream, route, key[2], status_label(status), "batch")
            self._request_children[key] = counter
        counter.inc()

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format."""
        return generate_latest(self.registry)
