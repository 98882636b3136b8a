"""One scrubber for everything from outside: every shape a secret takes, both log formats, and
ordinary text left as it was."""

from __future__ import annotations

import io
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy import logs
from tests.planted import Plant, plants

REDACTED = logs.REDACTED
GUID = "1e5ad6b8-52a3-4bb6-bd2a-0a5b1b9a2d41"
JWT = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJodHRwczovL2FwaSJ9.c2lnbmF0dXJlLXNlY3JldA"
SECRET = "Zx9-s3cr3t.V4lue"

# Fields whose value can come from outside the proxy, and one added later (the caller's own id).
OUTSIDE_FIELDS = (
    "message", "path", "target", "code", "inner_code", "note", "request_id", "caller_request_id",
    "error", "method", "upstream",
)  # fmt: skip
# Fields an upstream error code fills: no spaces, at most 64 characters.
COMPACT_FIELDS = frozenset({"code", "inner_code", "method"})


def _render(log_format: str, fields: dict[str, Any]) -> str:
    """``fields`` written as a lifecycle line and as a request line, in ``log_format``."""
    stream = io.StringIO()
    logs.configure(log_format, "info", stream)
    logs.get_logger("t").warning("upstream error", **fields)
    logs.RequestLog().write(dict(fields))
    return stream.getvalue()


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("Invalid request: code=0.AXoA7k2-xY_z9.Qm4", "0.AXoA7k2-xY_z9.Qm4"),
        ("Header rejected: Cookie: session=s3ss10n-V4lue; theme=dark", "s3ss10n-V4lue"),
        ("Authorization: Basic dXNlcjpwYXNzd29yZDEyMw==", "dXNlcjpwYXNzd29yZDEyMw"),
        ('Bad body {"client_secret": "Qx7~aB3.9fK_2mZ", "scope": "x"}', "Qx7~aB3.9fK_2mZ"),
        ('Bad header {"x-api-key": "ak_live_0123456789abcdef"}', "ak_live_0123456789abcdef"),
        ("/api/machines/x?token=t0k3n-V4lue", "t0k3n-V4lue"),
        ("/api/machines/x;sig=s1g%2BV4lue%3D", "s1g%2BV4lue"),
        (f"Token rejected: Bearer {JWT}", JWT),
        (f"a bare {JWT} in text", "c2lnbmF0dXJlLXNlY3JldA"),
        ("Set-Cookie: ESTSAUTH=Ab3dEf9hIj; Path=/; HttpOnly", "Ab3dEf9hIj"),
        ("SharedAccessSignature sr=x&sig=Qm9vYmFy0x%3D&se=1", "Qm9vYmFy0x"),
        ("AccountKey=Zm9vYmFyYmF6/1+==;EndpointSuffix=core.windows.net", "Zm9vYmFyYmF6"),
        ("https://svc:p4ssw0rd-x@login.example/token", "p4ssw0rd-x"),
        ('{"refresh_token":"0.ARoA-r3fr3sh","id_token":"x"}', "0.ARoA-r3fr3sh"),
        ('the \\"password\\": \\"two w0rds\\", then', "two w0rds"),
        ("Negotiate TlRMTVNTUAABAAAAB4IIogAAAAAAAAAAAAAAAAAAAAAGAbEdAAAADw==", "TlRMTVNTUAAB"),
        (
            'Digest username="bob", realm="api", response="6629fae49393a05397450978507c4ef1"',
            "6629fae",
        ),
        (
            "X-Amz-Signature=fe5f80f77d5fa3beca038a24&X-Amz-Date=20260101",
            "fe5f80f77d5fa3beca038a24",
        ),
        ("Ocp-Apim-Subscription-Key: 0123456789abcdef0123456789abcdef", "0123456789abcdef"),
    ],
)
def test_each_shape_loses_its_secret(text: str, secret: str) -> None:
    """A secret in each reported and documented shape is replaced; the text around it stays."""
    scrubbed = logs.scrub(text)
    assert secret not in scrubbed
    assert REDACTED in scrubbed


@pytest.mark.parametrize(
    ("path", "secret"),
    [
        ("/api/machines/x%3Ftoken=t0k3n-V4lue", "t0k3n-V4lue"),
        ("/api/machines/x%3Ftoken%3Dt0k3n-V4lue", "t0k3n-V4lue"),
        ("/api/machines/x?tok%65n=t0k3n-V4lue", "t0k3n-V4lue"),
        ("/api/machines/x%253Fsig%253Ds1gV4lue0", "s1gV4lue0"),
        ("/api/machines/x;sig=s1gV4lue0/isolate", "s1gV4lue0"),
        ("/api/machines/Bearer%20Ab0cdefgh", "Ab0cdefgh"),
    ],
)
def test_a_path_is_scrubbed_raw_and_decoded(path: str, secret: str) -> None:
    """A secret in a path is caught whether it shows raw or only once percent-decoded."""
    assert secret not in logs.scrub(path)


def test_text_whose_lowering_changes_length_is_scrubbed_in_place() -> None:
    """A character that lowers to two (U+0130) does not shift where the secret is found."""
    scrubbed = logs.scrub("\u0130\u0130 rejected token=t0k3nV4lue, retry")
    assert scrubbed == f"\u0130\u0130 rejected token={REDACTED}, retry"


def test_decoding_cannot_forge_a_line() -> None:
    """A decoded path that had a secret comes back without the line breaks decoding made."""
    scrubbed = logs.scrub("/api/x%0Aevent=forged%3Ftoken%3Dt0k3nV4lue")
    assert "t0k3nV4lue" not in scrubbed
    assert "\n" not in scrubbed


@pytest.mark.parametrize(
    "text",
    [
        "Machine not found",
        "Invalid ODataQuery",
        "Invalid ODataQuery: $filter=lastSeen gt 2024-01-01T00:00:00Z is not supported",
        f"Machine {GUID} was not found",
        f"/api/machines/{GUID}/isolate",
        "/api/files/4b6f0c3e8f9a2d1c7e5b3a9f0d2c4e6a8b1c3d5e/stats",
        "machines.isolate",
        "Basic authentication is not supported.",
        "Bearer token is missing",
        "error code: 404",
        'code=NotFound, "code": "Request_ResourceNotFound"',
        '{"error": {"code": "BadRequest", "message": "Invalid input"}}',
        "https://api.securitycenter.microsoft.com/api/alerts?$top=10",
        "AADSTS700016: Application with identifier 'x' was not found in the directory",
        "upstream failed mid-body (reset)",
        "version 1.2.3 of api.security.microsoft.com",
        "Quota 100% used: retry later",
    ],
)
def test_ordinary_text_is_left_as_it_was(text: str) -> None:
    """Route names, GUIDs, machine ids, error codes and ordinary messages survive unchanged."""
    assert logs.scrub(text) == text


@pytest.mark.parametrize(
    "path", ["/api/alerts", f"/api/machines/{GUID}", f"/api/machines/{GUID}/runAntiVirusScan"]
)
def test_a_plain_path_is_returned_as_it_came(path: str) -> None:
    """A path with nothing suspicious is handed back as the same object: no work beyond the check."""
    assert logs.scrub(path) is path


@pytest.mark.parametrize("log_format", ["json", "console"])
def test_every_outside_field_is_scrubbed_in_both_formats(log_format: str) -> None:
    """The same secret in each outside field, a new field included, is replaced in either format."""
    fields = dict.fromkeys(OUTSIDE_FIELDS, f"token={SECRET}")
    text = _render(log_format, fields)
    assert SECRET not in text
    assert text.count(REDACTED) >= 2 * len(OUTSIDE_FIELDS)


@pytest.mark.parametrize("log_format", ["json", "console"])
def test_nested_values_and_odd_types_are_scrubbed(log_format: str) -> None:
    """Secrets inside a dict, a list or an object's text are replaced too."""

    class Odd:
        def __str__(self) -> str:
            return f"Odd(password={SECRET})"

    fields = {
        "headers": {"X-Api-Key": SECRET, "Accept": f"sig={SECRET}", f"token={SECRET}": "x"},
        "items": [f"pwd={SECRET}"],
        "thing": Odd(),
    }
    text = _render(log_format, fields)
    assert SECRET not in text


@pytest.mark.parametrize("log_format", ["json", "console"])
def test_a_traceback_is_scrubbed(log_format: str) -> None:
    """An exception's text in a logged traceback loses its secrets in either format."""
    stream = io.StringIO()
    logs.configure(log_format, "info", stream)
    try:
        raise ValueError(f"upstream said client_secret={SECRET}")
    except ValueError:
        logs.get_logger("t").error("unexpected error", exc_info=True)
    text = stream.getvalue()
    assert "ValueError" in text
    assert SECRET not in text


def test_the_proxy_made_fields_are_kept() -> None:
    """The event name, route and other fields from the proxy's own closed sets are written as is."""
    stream = io.StringIO()
    logs.configure("json", "info", stream)
    logs.get_logger("t").info("request", route="machines.get", source="upstream", quota="admitted")
    line = orjson.loads(stream.getvalue())
    assert (line["event"], line["route"], line["source"], line["quota"]) == (
        "request", "machines.get", "upstream", "admitted"
    )  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(
    st.fixed_dictionaries(
        {field: plants(compact=field in COMPACT_FIELDS) for field in OUTSIDE_FIELDS}
    )
)
def test_no_planted_secret_survives_either_format(planted: dict[str, Plant]) -> None:
    """A generated secret, in any shape, in every outside field at once, appears in neither format."""
    fields = {field: plant.text for field, plant in planted.items()}
    for log_format in ("json", "console"):
        text = _render(log_format, fields)
        for field, plant in planted.items():
            for secret in plant.secrets:
                assert secret not in text, (log_format, field, plant)


@settings(max_examples=300, deadline=None)
@given(plants())
def test_scrub_is_idempotent_and_total(plant: Plant) -> None:
    """Scrubbing twice changes nothing more, and any secret-bearing text loses the secret."""
    once = logs.scrub(plant.text)
    assert logs.scrub(once) == once
    for secret in plant.secrets:
        assert secret not in once


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_any_text_is_scrubbed_without_error(text: str) -> None:
    """Arbitrary text, control characters and odd Unicode included, never makes scrub raise."""
    assert isinstance(logs.scrub(text), str)


def test_a_long_word_is_scrubbed_in_linear_time() -> None:
    """Text built to make a backtracking pattern stall is scrubbed (the per-test timeout bounds it)."""
    for text in (
        "a" * 100_000 + "." + "a" * 100_000 + "." + "a",
        "token=" + "=" * 100_000,
        ("Bearer " * 20_000) + "x",
        '"token": "' + "\\" * 50_000,
        "ey" + "J" * 100_000,
    ):
        assert isinstance(logs.scrub(text), str)
