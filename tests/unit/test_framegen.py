"""The framing generator's own readings agree with an independent strict parser (h11).

The differential framing test trusts ``tests.framegen`` to say which generated requests are valid
and what their bodies are; this property checks that claim against h11 without any proxy.
"""

from __future__ import annotations

import os

import h11
from hypothesis import HealthCheck, given, settings

from tests.framegen import Conversation, Reading, conversations

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "300"))


def _body(connection: h11.Connection) -> bytes:
    body = b""
    while True:
        event = connection.next_event()
        if isinstance(event, h11.EndOfMessage):
            return body
        assert isinstance(event, h11.Data), event
        body += event.data


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(conversation=conversations())
def test_h11_reads_valid_requests_as_the_generator_says(conversation: Conversation) -> None:
    """h11 parses every request the generator calls plain or valid with the generator's body."""
    connection = h11.Connection(h11.SERVER)
    connection.receive_data(conversation.raw)
    for sent in conversation.requests:
        if sent.reading < Reading.VALID:
            return
        event = connection.next_event()
        assert isinstance(event, h11.Request), (event, sent)
        assert event.target.decode() == sent.path
        assert _body(connection) == sent.body
        if sent.closes or connection.their_state is h11.MUST_CLOSE:
            return
        connection.send(h11.Response(status_code=200, headers=[("Content-Length", "0")]))
        connection.send(h11.EndOfMessage())
        connection.start_next_cycle()
