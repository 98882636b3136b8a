"""What a failed token request becomes: a code, a reason and an OAuth error from closed sets, so no
secret the authority's answer (or azure-identity's message) carries can reach a caller or a log."""

from __future__ import annotations

import orjson
from azure.core.exceptions import ClientAuthenticationError, ServiceRequestError
from azure.core.rest import HttpRequest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.tokens import REASONS, MintError, _failure
from tests.planted import Plant, plants


class _Answer:
    """An identity provider's answer with the parts of azure-core's response object that an
    exception and ``proxy.tokens`` read (the functional tests get real ones from the simulator)."""

    def __init__(self, body: bytes, status: int = 401) -> None:
        self._body = body
        self.headers: dict[str, str] = {}
        self.status_code = status
        self.reason = "Unauthorized"
        self.request = HttpRequest("POST", "https://login.example/tenant/oauth2/v2.0/token")

    def body(self) -> bytes:
        return self._body

    def text(self, encoding: str | None = None) -> str:
        return self._body.decode(encoding or "utf-8")


def _written(failure: MintError) -> str:
    """Every part of a failure that reaches a caller's 503, a log line or a metric label."""
    return " ".join((failure.code, failure.reason, failure.error, failure.detail))


@settings(max_examples=300, deadline=None)
@given(plant=plants(), code=st.sampled_from([7000215, 7000222, 700027, 123456789]))
def test_a_refusal_that_carries_a_secret_writes_none_of_it(plant: Plant, code: int) -> None:
    """An Entra refusal whose description (and azure-identity's message) holds a secret becomes
    its AADSTS code and a reason of the proxy's own: the secret is nowhere in what is written."""
    description = f"AADSTS{code}: {plant.text}"
    body = {"error": "invalid_client", "error_description": description, "error_codes": [code]}
    error = ClientAuthenticationError(message=description, response=_Answer(orjson.dumps(body)))
    failure = _failure(error)
    assert failure.code == str(code)
    assert failure.error == "invalid_client"
    assert failure.reason in (*REASONS.values(), "the identity provider refused the token request")
    for secret in plant.secrets:
        assert secret not in _written(failure)


@settings(max_examples=200, deadline=None)
@given(plant=plants())
def test_an_answer_without_a_code_writes_none_of_its_text(plant: Plant) -> None:
    """A refusal without error_codes, its error and message text holding a secret: ``unknown``,
    the exception's type as its error; a network failure's message likewise stays unwritten."""
    body = orjson.dumps({"error": plant.text, "error_description": plant.text})
    refused = _failure(ClientAuthenticationError(message=plant.text, response=_Answer(body)))
    unreachable = _failure(ServiceRequestError(message=plant.text))
    assert (refused.code, unreachable.code) == ("unknown", "unreachable")
    for secret in plant.secrets:
        assert secret not in _written(refused)
        assert secret not in _written(unreachable)
