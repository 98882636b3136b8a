"""The inner answers of a ``$batch``, as they are relayed: each counted, logged, kept among the
recent errors when it is one, and taught to the quota like a whole answer of its own.

Graph counts every request of a batch on its own, and throttles each on its own: a batch that comes
back 200 may carry inner 429s. Were only the outer status looked at, those would go unseen by the
metrics, the log and, worst, the limiter, which would go on admitting a route Graph has paused.
So the 200 answer of a batch is fed, chunk by chunk as it goes to the caller, to a
``batch_answer.Scanner``, and every inner answer it finds is recorded here.

Only answers to the ids the batch sent are trusted, each once: an answer for an id never sent,
or a second one for an id, is counted as unknown (``batch_unknown_answers``) and nothing more, so
it can neither pause a route the batch did not ask for nor count one inner request twice.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from multidict import CIMultiDict

from proxy import classify, quota_headers
from proxy.logs import scrub
from proxy.metrics import status_label
from proxy.outcome import MAX_LOGGED_ID, Outcome, Recorder
from proxy.quota.limiter import Limiter

if TYPE_CHECKING:
    from proxy.batch_answer import InnerAnswer, Scanner


class InnerAnswers:
    """One listener's reading of the inner answers of its batches."""

    def __init__(self, recorder: Recorder, limiter: Limiter | None) -> None:
        self._recorder = recorder
        self._limiter = limiter

    def scanner(self, status: int, headers: CIMultiDict[str], outcome: Outcome) -> Scanner | None:
        """A scanner for the inner answers of a ``$batch``'s 200 answer, if it can be read."""
        if outcome.batch is None or status != 200:
            return None
        coding = headers.get("Content-Encoding", "identity").strip().lower()
        if coding != "identity":
            # Never decompressed on its way through, so not read either: said in the log line.
            outcome.note = f"inner answers not read: Content-Encoding {coding[:32]}"
            return None
        # The scanner comes with the first $batch answered: a proxy that sees none never loads it.
        from proxy.batch_answer import Scanner

        return Scanner(self._recorder.cap)

    async def record(
        self, found: list[InnerAnswer], outcome: Outcome, authorization: str | None = None
    ) -> None:
        """Count and log each inner answer like an outer one; an inner 429 pauses its route; an
        inner 401 or 403 is explained from the batch's ``authorization``, which its requests
        travel on."""
        assert outcome.batch is not None
        recorder = self._recorder
        metrics = recorder.metrics
        requests = outcome.batch.by_id()
        for answer in found:
            inner = requests.get(answer.id)
            if inner is None or answer.id in outcome.answered:
                # An id the batch did not send, or a second answer for one: never trusted.
                outcome.unknown_answers += 1
                continue
            outcome.answered[answer.id] = answer.status
            route = inner.route.name
            metrics.observe_inner(recorder.name, route, inner.method, answer.status)
            fields: dict[str, Any] = {
                "upstream": recorder.name,
                "method": inner.method,
                "route": route,
                "status": answer.status,
                "source": "batch",
                "request_id": outcome.request_id,
                "inner_id": scrub(answer.id[:MAX_LOGGED_ID]),
                "tid": outcome.claims.tid,
                "app": outcome.claims.app,
            }
            message = cause = ""
            if answer.status >= 400:
                info = classify.classify(
                    answer.body,
                    complete=answer.complete,
                    content_encoding=None,
                    content_type="application/json",
                    cap=recorder.cap,
                )
                message = info.message
                fields.update(code=info.code, message=info.message, target=info.target)
                if info.inner_code:
                    fields["inner_code"] = info.inner_code
                metrics.api_errors.labels(
                    route, status_label(answer.status), metrics.codes.label(info.code)
                ).inc()
                if answer.status in (401, 403):
                    explained = recorder.auth_failure(
                        answer.status,
                        authorization,
                        outcome.claims,
                        inner.method,
                        inner.path,
                        route,
                    )
                    fields.update(explained)
                    cause = str(explained["auth_cause"])
            hint = quota_headers.upstream_hint(answer.status, answer.retry_after, message)
            if hint is not None:
                fields.update(recorder.throttled(hint))
                cause = hint.reason
            if answer.status >= 400 and recorder.errors is not None:
                recorder.errors.add(
                    recorder.name,
                    route,
                    inner.method,
                    answer.status,
                    fields.get("code", ""),
                    cause,
                    fields.get("target", ""),
                    outcome.request_id,
                    "batch",
                )
            recorder.log.write(fields)
            if self._limiter is not None:
                quota = self._limiter.quota_for(route, outcome.claims, inner.family)
                await self._limiter.observe_answer(route, answer.status, hint, quota)
