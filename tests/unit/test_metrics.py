"""Tests for proxy.metrics: bounded label values, isolated registries, the build info series."""

from __future__ import annotations

import platform

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from proxy import __version__
from proxy.classify import MARKERS
from proxy.codes import ERROR_TABLE, PROXY_CODES, SEEN_IN_THE_WILD
from proxy.metrics import MAX_DYNAMIC_CODES, OTHER, CodeLabels, Metrics, method_label, status_label

KNOWN = frozenset(ERROR_TABLE) | SEEN_IN_THE_WILD | PROXY_CODES | MARKERS
REQUEST_LABELS = {
    "upstream": "default",
    "route": "machines.list",
    "method": "GET",
    "status": "200",
    "source": "upstream",
}


def fill(labels: CodeLabels, count: int, prefix: str = "Dynamic") -> list[str]:
    """Feed ``count`` fresh well-shaped unknown codes; return the labels given."""
    return [labels.label(f"{prefix}{i:03d}") for i in range(count)]


# --- codes ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("code", sorted(KNOWN))
def test_known_code_kept(code: str) -> None:
    """Every documented, seen-in-the-wild, proxy and marker code is its own label value."""
    assert CodeLabels().label(code) == code


def test_known_codes_kept_after_budget_spent() -> None:
    """Known codes keep their label even once the dynamic budget is used up."""
    labels = CodeLabels()
    fill(labels, MAX_DYNAMIC_CODES + 10)
    assert [labels.label(code) for code in sorted(KNOWN)] == sorted(KNOWN)


def test_unknown_codes_admitted_up_to_budget() -> None:
    """The first MAX_DYNAMIC_CODES unknown codes each get their own label value."""
    labels = CodeLabels()
    given_labels = fill(labels, MAX_DYNAMIC_CODES)
    assert given_labels == [f"Dynamic{i:03d}" for i in range(MAX_DYNAMIC_CODES)]


def test_unknown_code_past_budget_is_other() -> None:
    """A new unknown code after the budget is spent becomes ``other``."""
    labels = CodeLabels()
    fill(labels, MAX_DYNAMIC_CODES)
    assert labels.label("OneTooMany") == OTHER
    assert labels.label("OneTooMany") == OTHER


def test_admitted_code_still_returned_past_budget() -> None:
    """A code admitted before the budget ran out keeps its label afterwards."""
    labels = CodeLabels()
    fill(labels, MAX_DYNAMIC_CODES)
    labels.label("OneTooMany")
    assert labels.label("Dynamic000") == "Dynamic000"
    assert (
        labels.label(f"Dynamic{MAX_DYNAMIC_CODES - 1:03d}") == f"Dynamic{MAX_DYNAMIC_CODES - 1:03d}"
    )


def test_repeated_unknown_code_uses_budget_once() -> None:
    """Seeing one unknown code many times consumes one slot of the budget."""
    labels = CodeLabels()
    for _ in range(MAX_DYNAMIC_CODES + 5):
        assert labels.label("SameCode") == "SameCode"
    assert fill(labels, MAX_DYNAMIC_CODES - 1) == [
        f"Dynamic{i:03d}" for i in range(MAX_DYNAMIC_CODES - 1)
    ]
    assert labels.label("OneTooMany") == OTHER


BAD_CODES = [
    "",
    "has space",
    " Leading",
    "x" * 65,
    "Tab\there",
    "New\nline",
    "Trailing\n",
    "Nul\x00",
    "Bell\x07",
    "Del\x7f",
    'quote"s',
    "brace{x}",
    "Ünïcode",
    "slash/code",
]


@pytest.mark.parametrize("code", BAD_CODES)
def test_badly_shaped_code_is_other(code: str) -> None:
    """A code that is empty, too long, or has spaces, controls or odd characters becomes ``other``."""
    assert CodeLabels().label(code) == OTHER


def test_longest_well_shaped_code_admitted() -> None:
    """A 64-character code of letters, digits, '_', '.' and '-' is admitted."""
    code = ("A_b.c-9" * 10)[:64]
    assert CodeLabels().label(code) == code


def test_badly_shaped_codes_do_not_consume_budget() -> None:
    """Refused shapes leave the whole budget for well-shaped codes."""
    labels = CodeLabels()
    for i in range(MAX_DYNAMIC_CODES + 5):
        assert labels.label(f"bad code {i}") == OTHER
    assert fill(labels, MAX_DYNAMIC_CODES) == [f"Dynamic{i:03d}" for i in range(MAX_DYNAMIC_CODES)]


_CODES = st.one_of(
    st.text(max_size=70),
    st.from_regex(r"[A-Za-z0-9_.\-]{1,10}", fullmatch=True),
    st.sampled_from(sorted(KNOWN)),
)


@settings(max_examples=60, deadline=None)
@given(raw=st.lists(_CODES, max_size=60))
def test_label_set_is_bounded(raw: list[str]) -> None:
    """Whatever codes arrive, the label values stay within known + budget + ``other``."""
    labels = CodeLabels()
    # The fillers make sure the budget is always exhausted, so the bound is actually reached for.
    codes = [*raw, *(f"Filler{i}" for i in range(MAX_DYNAMIC_CODES + 5))]
    values = {labels.label(code) for code in codes}
    assert len(values) <= len(KNOWN) + MAX_DYNAMIC_CODES + 1
    assert len(values - KNOWN - {OTHER}) <= MAX_DYNAMIC_CODES
    assert all(value == OTHER or value in codes for value in values)


# --- methods and statuses -------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
def test_known_method_kept(method: str) -> None:
    """A standard method is its own label value."""
    assert method_label(method) == method


@pytest.mark.parametrize("method", ["get", "TRACE", "CONNECT", "PROPFIND", "", "G ET"])
def test_other_method_is_other(method: str) -> None:
    """Any other method, lowercase spellings included, becomes ``other``."""
    assert method_label(method) == OTHER


@pytest.mark.parametrize(
    ("status", "label"), [(100, "100"), (200, "200"), (429, "429"), (599, "599")]
)
def test_valid_status_kept(status: int, label: str) -> None:
    """A status from 100 to 599 is its own three-digit label value."""
    assert status_label(status) == label


@pytest.mark.parametrize("status", [-1, 0, 99, 600, 1000])
def test_out_of_range_status_is_other(status: int) -> None:
    """A status outside 100-599 becomes ``other``."""
    assert status_label(status) == OTHER


# --- registry -------------------------------------------------------------------------------------


def test_instances_do_not_share_a_registry() -> None:
    """Incrementing a counter on one Metrics leaves another Metrics at zero."""
    first, second = Metrics(), Metrics()
    assert first.registry is not second.registry
    first.requests.labels(**REQUEST_LABELS).inc()
    assert first.registry.get_sample_value("defender_proxy_requests_total", REQUEST_LABELS) == 1.0
    assert second.registry.get_sample_value("defender_proxy_requests_total", REQUEST_LABELS) is None


def test_build_info_carries_the_version() -> None:
    """The exposition has defender_proxy_build_info with the package version."""
    text = Metrics().exposition().decode()
    families = {family.name: family for family in text_string_to_metric_families(text)}
    samples = families["defender_proxy_build_info"].samples
    assert [sample.name for sample in samples] == ["defender_proxy_build_info"]
    assert samples[0].labels["version"] == __version__
    assert samples[0].value == 1.0
    assert "defender_proxy_build_info{" in text


def test_every_registry_carries_the_process_and_python_collectors() -> None:
    """Each Metrics registry exports process_*, python_info and python_gc_* of this process."""
    for metrics in (Metrics(), Metrics()):
        text = metrics.exposition().decode()
        families = {family.name: family for family in text_string_to_metric_families(text)}
        for name in (
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_max_fds",
            "process_cpu_seconds",
            "process_start_time_seconds",
            "python_gc_objects_collected",
            "python_gc_collections",
        ):
            assert name in families, name
        (info,) = families["python_info"].samples
        assert info.labels["version"] == platform.python_version()
        assert info.labels["implementation"] == platform.python_implementation()
        generations = {s.labels["generation"] for s in families["python_gc_collections"].samples}
        assert generations == {"0", "1", "2"}


def test_requests_and_durations_are_labelled_with_their_upstream() -> None:
    """The same route through two upstreams is two series of the counter and of each histogram."""
    metrics = Metrics()
    metrics.observe_request("eu", "machines.list", "GET", 200, "upstream", 0.01, 0.005)
    metrics.observe_request("us", "machines.list", "GET", 200, "upstream", 0.01, None)
    sample = metrics.registry.get_sample_value
    for upstream in ("eu", "us"):
        assert (
            sample("defender_proxy_requests_total", {**REQUEST_LABELS, "upstream": upstream}) == 1
        )
        labels = {"upstream": upstream, "route": "machines.list"}
        assert sample("defender_proxy_request_duration_seconds_count", labels) == 1
    eu = {"upstream": "eu", "route": "machines.list"}
    assert sample("defender_proxy_upstream_duration_seconds_count", eu) == 1
    us = {"upstream": "us", "route": "machines.list"}
    assert sample("defender_proxy_upstream_duration_seconds_count", us) == 0


def test_in_flight_and_caller_connections_sum_every_listener() -> None:
    """Each listener adds its own count; the gauges read their sum at the scrape."""
    metrics = Metrics()
    metrics.in_flight_sources.add(lambda: 2)
    metrics.in_flight_sources.add(lambda: 3)
    metrics.caller_connection_sources.add(lambda: 7)
    metrics.caller_connection_sources.add(lambda: 1)
    sample = metrics.registry.get_sample_value
    assert sample("defender_proxy_in_flight_requests", {}) == 5
    assert sample("defender_proxy_caller_connections", {}) == 8
