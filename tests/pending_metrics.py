"""Metrics the alert rules and the dashboard name before the proxy exports them.

The names and labels are a fixed interface (the proxy's own credential and the tokens it mints
with it), so the rules, the runbook and the panels are written against it while the proxy's side
is built. Until the proxy declares such a metric, ``tests/integration/test_rules.py`` takes its
labels from here; once it does, they must be these. The dashboard proof against a real Prometheus
scrapes a proxy that holds no credential, so it has no series of these: for them alone it checks
that each expression is accepted, not that it returns data. Drop an entry once the proxy exports
the metric and that test's proxy makes its series.
"""

from __future__ import annotations

#: metric name -> its label names
PENDING: dict[str, frozenset[str]] = {
    "defender_proxy_credential_expiry_seconds": frozenset({"upstream", "kind"}),
    "defender_proxy_token_requests_total": frozenset({"result", "code"}),
}
