"""The one table from transport errors to answers: total, bounded, and documented."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from proxy.errors import UpstreamError
from proxy.upstream import errors as transport
from proxy.upstream.answers import ANSWERS, KINDS, answer, upstream_error
from proxy.upstream.errors import MAX_CAUSE, TransportError

README = Path(__file__).resolve().parents[2] / "README.md"


def hierarchy() -> list[type[TransportError]]:
    """Every transport error class the errors module defines."""
    return [
        value
        for value in vars(transport).values()
        if isinstance(value, type) and issubclass(value, TransportError)
    ]


@pytest.mark.parametrize("cls", hierarchy(), ids=lambda cls: cls.__name__)
def test_every_transport_error_has_an_answer(cls: type[TransportError]) -> None:
    """Each class maps to a 5xx with a Defender code, a kind from KINDS and a fixed message."""
    row = answer(cls("what happened"))
    assert row.status in (502, 503, 504)
    assert row.code in ("BadGateway", "ServiceUnavailable", "GatewayTimeout")
    assert row.kind in KINDS
    assert row.message


def test_a_subclass_without_a_row_takes_its_parents() -> None:
    """An error class without a row of its own is answered as its nearest ancestor is."""

    class Unlisted(transport.ReadTimeout):
        pass

    assert answer(Unlisted("x")) == ANSWERS[transport.ReadTimeout]


def test_the_answer_carries_kind_cause_and_retry_after_only_on_503() -> None:
    """upstream_error keeps the cause for the log; only a 503 gets Retry-After."""
    refused = upstream_error(transport.ConnectRefused("connection refused by 10.0.0.1:443"), 5)
    assert isinstance(refused, UpstreamError)
    assert (refused.status, refused.code, refused.kind) == (502, "BadGateway", "refused")
    assert refused.cause == "connection refused by 10.0.0.1:443"
    assert refused.message == "the upstream refused the connection"
    assert refused.headers is None
    waited = upstream_error(transport.PoolTimeout("timed out waiting"), 5)
    assert (waited.status, waited.code, waited.headers) == (
        503,
        "ServiceUnavailable",
        {"Retry-After": "5"},
    )


def test_a_cause_is_bounded() -> None:
    """A cause is cut to MAX_CAUSE characters whatever it was built from."""
    assert len(str(transport.TLSError("x" * 10_000))) == MAX_CAUSE


def test_the_readme_lists_exactly_the_kinds() -> None:
    """The README's metrics table gives every kind of upstream failure, and no other."""
    row = next(
        line
        for line in README.read_text().splitlines()
        if line.startswith("| `defender_proxy_upstream_failures_total`")
    )
    assert set(re.findall(r"`([a-z_]+)`", row.split("|")[4])) == KINDS
