"""``python -m bench.goodput_tools``: the tools of one ``bench.goodput`` variant, in a process of
their own, so that thread-based and asyncio-based libraries never share an interpreter.

Each tool is a bulk job of ``--calls`` GETs of ``--path`` run by its own number of workers
(``--tools 1,4,2``: tool 0 has one worker, tool 1 four, tool 2 two). Tool ``i`` sends
``User-Agent: goodput-tool-<i>/1.0`` and ``X-Defender-Proxy-Client: tool-<i>`` to the
``i mod len(--url)``-th URL. Every worker takes the tool's next call until none is left or the
``--deadline`` (seconds) has passed; calls not answered by then are *unfinished*.

Strategies, each as small as the library's own examples:

- ``plain``: ``requests``, one Session per worker, no retry (a caller of the proxy);
- ``urllib3-retry``: ``requests`` with ``urllib3.util.Retry(total=10, backoff_factor=0.5,
  status_forcelist=[429])`` mounted on one Session per worker (Retry-After is honoured by default);
- ``tenacity``: ``requests`` under tenacity's ``wait_random_exponential(multiplier=1, max=60)``,
  ``stop_after_attempt(10)``, retrying while the answer is 429 (it does not read Retry-After);
- ``kiota-retry``: msgraph-core's ``GraphClientFactory.create_with_default_middleware`` httpx
  client, one per tool, its workers asyncio tasks: kiota's ``RetryHandler`` with its defaults
  (3 retries, Retry-After honoured);
- ``azure-core-retry``: an azure-core ``PipelineClient`` per worker with a default
  ``RetryPolicy`` (retry_total 10, retry_status 3, Retry-After honoured).

Prints one JSON object: the start on the machine's monotonic clock (the simulator's journal
uses the same clock) and, per tool, calls answered 2xx, failed (a final non-2xx or an
exception; ``raised`` counts the exceptions), unfinished, the 429s seen on the wire (the
retried ones included), and when its last call ended, in seconds from the start.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import requests

#: A call's status when it raised instead of answering.
RAISED = 0
#: The request extension kiota's adapter puts its request options in (no options: the defaults).
KIOTA_OPTIONS = "kiota_request_options"


@dataclass(frozen=True, slots=True)
class Answer:
    """How one call ended: its final status (``RAISED`` for an exception) and the 429s it met."""

    status: int
    throttled: int


@dataclass
class Job:
    """One tool's bulk job: calls handed out one at a time to its workers, their ends recorded."""

    calls: int
    workers: int
    handed: int = 0
    ok: int = 0
    failed: int = 0
    #: the failed calls that raised instead of answering
    raised: int = 0
    throttled: int = 0
    last_end: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self) -> bool:
        """Whether a call is left for the asking worker (and it is now that worker's)."""
        with self.lock:
            if self.handed >= self.calls:
                return False
            self.handed += 1
            return True

    def done(self, answer: Answer, at: float) -> None:
        """Record a call that ended ``at`` seconds from the start."""
        with self.lock:
            if 200 <= answer.status < 300:
                self.ok += 1
            else:
                self.failed += 1
                self.raised += answer.status == RAISED
            self.throttled += answer.throttled
            self.last_end = max(self.last_end, at)

    def report(self, tool: int, deadline: float) -> dict[str, Any]:
        """The job's figures; a job with unfinished calls ends at the deadline."""
        with self.lock:
            unfinished = self.calls - self.ok - self.failed
            return {
                "tool": tool,
                "workers": self.workers,
                "calls": self.calls,
                "ok": self.ok,
                "failed": self.failed,
                "raised": self.raised,
                "unfinished": unfinished,
                "throttled_seen": self.throttled,
                "finish_s": deadline if unfinished else self.last_end,
            }


def headers(tool: int) -> dict[str, str]:
    """What tool ``tool`` says about itself on every request."""
    return {"User-Agent": f"goodput-tool-{tool}/1.0", "X-Defender-Proxy-Client": f"tool-{tool}"}


# -- the strategies: each builds one worker's caller --------------------------------------------

SyncCall = Callable[[], Answer]


def _session() -> requests.Session:
    session = requests.Session()
    # Loopback only: an HTTP_PROXY in the environment must not take the bench's traffic.
    session.trust_env = False
    return session


def plain(url: str, sent: dict[str, str], timeout: float) -> SyncCall:
    """One GET, no retry: what a caller of the proxy needs."""
    session = _session()

    def call() -> Answer:
        response = session.get(url, headers=sent, timeout=timeout)
        return Answer(response.status_code, int(response.status_code == 429))

    return call


def urllib3_retry(url: str, sent: dict[str, str], timeout: float) -> SyncCall:
    """requests with urllib3's Retry on 429, as the common examples mount it."""
    from requests.adapters import HTTPAdapter
    from urllib3.util import Retry

    # raise_on_status=False returns the last 429 instead of raising RetryError: the same
    # traffic, and the answer keeps its retry history for counting.
    retry = Retry(total=10, backoff_factor=0.5, status_forcelist=[429], raise_on_status=False)
    session = _session()
    session.mount("http://", HTTPAdapter(max_retries=retry))

    def call() -> Answer:
        response = session.get(url, headers=sent, timeout=timeout)
        history = response.raw.retries.history if response.raw.retries else ()
        retried = sum(1 for entry in history if entry.status == 429)
        return Answer(response.status_code, retried + int(response.status_code == 429))

    return call


def tenacity_retry(url: str, sent: dict[str, str], timeout: float) -> SyncCall:
    """requests under tenacity: exponential back-off with full jitter while the answer is 429."""
    from tenacity import (
        RetryCallState,
        Retrying,
        retry_if_result,
        stop_after_attempt,
        wait_random_exponential,
    )

    def last_answer(state: RetryCallState) -> Any:
        assert state.outcome is not None
        return state.outcome.result()

    retrying = Retrying(
        retry=retry_if_result(lambda response: response.status_code == 429),
        wait=wait_random_exponential(multiplier=1, max=60),
        stop=stop_after_attempt(10),
        retry_error_callback=last_answer,
    )
    session = _session()

    def call() -> Answer:
        seen = 0

        def once() -> requests.Response:
            nonlocal seen
            response = session.get(url, headers=sent, timeout=timeout)
            seen += response.status_code == 429
            return response

        response: requests.Response = retrying(once)
        return Answer(response.status_code, seen)

    return call


def azure_core_retry(url: str, sent: dict[str, str], timeout: float) -> SyncCall:
    """An azure-core PipelineClient with the default RetryPolicy, as an Azure SDK client has."""
    from azure.core import PipelineClient
    from azure.core.pipeline import PipelineRequest, PipelineResponse
    from azure.core.pipeline.policies import (
        HeadersPolicy,
        RetryPolicy,
        SansIOHTTPPolicy,
        UserAgentPolicy,
    )
    from azure.core.pipeline.transport import RequestsTransport
    from azure.core.rest import HttpRequest

    class Count429(SansIOHTTPPolicy[Any, Any]):
        """Counts the 429s behind the retry policy: every attempt passes here."""

        seen = 0

        def on_response(
            self, request: PipelineRequest[Any], response: PipelineResponse[Any, Any]
        ) -> None:
            self.seen += response.http_response.status_code == 429

    counter = Count429()
    agent = sent["User-Agent"]
    client: PipelineClient[Any, Any] = PipelineClient(
        url,
        policies=[
            HeadersPolicy({k: v for k, v in sent.items() if k != "User-Agent"}),
            UserAgentPolicy(user_agent=agent),
            RetryPolicy(),
        ],
        per_retry_policies=[counter],
        transport=RequestsTransport(
            use_env_settings=False, connection_timeout=timeout, read_timeout=timeout
        ),
    )

    def call() -> Answer:
        counter.seen = 0
        response = client.send_request(HttpRequest("GET", url))
        return Answer(response.status_code, counter.seen)

    return call


SYNC: dict[str, Callable[[str, dict[str, str], float], SyncCall]] = {
    "plain": plain,
    "urllib3-retry": urllib3_retry,
    "tenacity": tenacity_retry,
    "azure-core-retry": azure_core_retry,
}
STRATEGIES = (*SYNC, "kiota-retry")


# -- running the jobs ---------------------------------------------------------------------------


def run_threads(
    strategy: str, urls: list[str], jobs: list[Job], timeout: float, deadline: float
) -> float:
    """Every job's workers as threads, started together; returns the start (monotonic)."""
    workers = sum(job.workers for job in jobs)
    start = [0.0]
    gate = threading.Barrier(workers + 1, action=lambda: start.__setitem__(0, time.monotonic()))

    def work(tool: int, job: Job) -> None:
        call = SYNC[strategy](urls[tool % len(urls)], headers(tool), timeout)
        gate.wait()
        while time.monotonic() - start[0] < deadline and job.take():
            try:
                answer = call()
            except Exception:  # any failure of a call is a failed call
                answer = Answer(RAISED, 0)
            job.done(answer, time.monotonic() - start[0])

    threads = [
        threading.Thread(target=work, args=(tool, job), daemon=True)
        for tool, job in enumerate(jobs)
        for _ in range(job.workers)
    ]
    for thread in threads:
        thread.start()
    gate.wait()
    for thread in threads:
        thread.join(max(0.0, start[0] + deadline - time.monotonic()))
    return start[0]


async def run_kiota(
    origins: list[str], path: str, jobs: list[Job], timeout: float, deadline: float
) -> float:
    """Every job's workers as asyncio tasks on one Graph SDK client per tool, its base URL the
    tool's origin."""
    import httpx
    from msgraph_core import GraphClientFactory

    clients = [
        GraphClientFactory.create_with_default_middleware(
            client=httpx.AsyncClient(
                base_url=origins[tool % len(origins)],
                trust_env=False,
                timeout=httpx.Timeout(timeout),
            )
        )
        for tool in range(len(jobs))
    ]
    start = time.monotonic()

    async def work(tool: int, job: Job) -> None:
        client: httpx.AsyncClient = clients[tool]
        while time.monotonic() - start < deadline and job.take():
            try:
                # The SDK's request adapter marks every request with its options; the client's
                # middleware (the RetryHandler among it) runs only for a marked request.
                request = client.build_request(
                    "GET", path, headers=headers(tool), extensions={KIOTA_OPTIONS: {}}
                )
                response = await client.send(request)
                # kiota's RetryHandler numbers its retries in the request's Retry-Attempt.
                retried = int(response.request.headers.get("Retry-Attempt", "0"))
                answer = Answer(response.status_code, retried + int(response.status_code == 429))
            except Exception:  # any failure of a call is a failed call
                answer = Answer(RAISED, 0)
            job.done(answer, time.monotonic() - start)

    tasks = [
        asyncio.create_task(work(tool, job))
        for tool, job in enumerate(jobs)
        for _ in range(job.workers)
    ]
    _, pending = await asyncio.wait(tasks, timeout=deadline)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    for client in clients:
        await client.aclose()
    return start


def main(argv: list[str] | None = None) -> None:
    """Run the tools, print the JSON report, exit without waiting for stragglers."""
    parser = argparse.ArgumentParser(prog="python -m bench.goodput_tools")
    parser.add_argument("--strategy", choices=STRATEGIES, required=True)
    parser.add_argument("--url", action="append", required=True, help="an origin; repeat")
    parser.add_argument("--path", default="/api/machines")
    parser.add_argument("--tools", required=True, help="workers per tool, e.g. 1,4,2")
    parser.add_argument("--calls", type=int, required=True, help="calls per tool")
    parser.add_argument("--timeout", type=float, default=150.0, help="seconds per request")
    parser.add_argument("--deadline", type=float, required=True, help="seconds for the jobs")
    args = parser.parse_args(argv)
    origins = [url.rstrip("/") for url in args.url]
    jobs = [Job(args.calls, int(workers)) for workers in args.tools.split(",")]
    if args.strategy == "kiota-retry":
        start = asyncio.run(run_kiota(origins, args.path, jobs, args.timeout, args.deadline))
    else:
        urls = [origin + args.path for origin in origins]
        start = run_threads(args.strategy, urls, jobs, args.timeout, args.deadline)
    report = {
        "strategy": args.strategy,
        "started_at": start,
        "tools": [job.report(tool, args.deadline) for tool, job in enumerate(jobs)],
    }
    sys.stdout.write(json.dumps(report) + "\n")
    sys.stdout.flush()
    # Workers past the deadline may still sleep in a library's back-off: they are not waited for.
    os._exit(0)


if __name__ == "__main__":
    main()
