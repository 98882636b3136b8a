"""``python -m tests.graphsdk COMMAND PORT …``: a tool built on the Microsoft Graph SDK, its base URL
``http://127.0.0.1:PORT/v1.0`` (the proxy), that prints what it got as one JSON value.

- ``page PORT TOP``: pages ``/v1.0/security/alerts_v2`` with ``PageIterator``, anonymous (the
  simulator needs no token); prints the alerts' titles as a list.
- ``hunt PORT TID APP QUERY``: runs ``QUERY`` with ``security.microsoft_graph_security_run_hunting_
  query`` (the SDK posts it to ``/v1.0/security/microsoft.graph.security.runHuntingQuery``);
  prints ``{"status", "columns", "rows"}``.
- ``batch PORT TID APP COUNT``: sends ``COUNT`` ``GET /security/alerts_v2?$top=1`` in one
  ``$batch`` (msgraph-core's ``BatchRequestContent``, ``client.batch.post``); prints
  ``{"status", "answers"}`` (each inner status by id).

- ``https PORT CAFILE TID APP``: a session against the proxy as an HTTPS gateway,
  ``https://127.0.0.1:PORT/v1.0``, trusting the CA in ``CAFILE``, signed in the SDK's normal way
  (``AzureIdentityAuthenticationProvider`` over an azure-core ``AsyncTokenCredential``). It pages
  the alerts, prints ``{"before": [...]}`` as a line, waits for a line on stdin (the test rotates
  the proxy's certificate meanwhile), runs a hunting query on the same client, then reads the
  alerts through a new client; prints ``{"after": [...]}``. Each record is one HTTP exchange:
  ``{"status", "serial", "port"}``, the peer certificate's serial (hex) and the local port.

``hunt`` and ``batch`` send an unsigned app token of ``APP`` in tenant ``TID``
(``proxy.simulator.tokens``) through kiota's bearer provider, as a tool with its own token source
does. The SDK's retries are off: a 429 comes back to the tool (status 429) rather than being
waited out, so the test sees each request the SDK sent. The SDK runs as the separate tool it would
be, in a process of its own: on the test's own uvloop loop it blocked at loop close.
"""

from __future__ import annotations

import asyncio
import ssl
import sys
import time
import warnings
from typing import TYPE_CHECKING, Any

import httpx
import orjson

from proxy.simulator.tokens import bearer

if TYPE_CHECKING:
    from azure.core.credentials import AccessToken, TokenRequestOptions
    from kiota_abstractions.authentication import AuthenticationProvider
    from msgraph.graph_service_client import GraphServiceClient

HOST = "127.0.0.1"


def _graph(
    port: int, auth: AuthenticationProvider, http: httpx.AsyncClient, scheme: str = "http"
) -> GraphServiceClient:
    from kiota_http.middleware.options import RetryHandlerOption
    from msgraph.graph_request_adapter import GraphRequestAdapter
    from msgraph.graph_service_client import GraphServiceClient
    from msgraph_core import GraphClientFactory

    no_retries = RetryHandlerOption(max_retries=0, should_retry=False)
    client = GraphClientFactory.create_with_default_middleware(
        client=http, options={no_retries.get_key(): no_retries}
    )
    adapter = GraphRequestAdapter(auth, client)
    adapter.base_url = f"{scheme}://{HOST}:{port}/v1.0"
    return GraphServiceClient(request_adapter=adapter)


def _token_auth(tid: str, app: str) -> AuthenticationProvider:
    """kiota's bearer provider over a fixed token, sent to the proxy's host only."""
    from kiota_abstractions.authentication import (
        AccessTokenProvider,
        AllowedHostsValidator,
        BaseBearerTokenAuthenticationProvider,
    )

    token = bearer(tid, app).removeprefix("Bearer ")

    class FixedToken(AccessTokenProvider):
        def __init__(self) -> None:
            self.hosts = AllowedHostsValidator([HOST])

        async def get_authorization_token(
            self, uri: str, additional_authentication_context: dict[str, Any] | None = None
        ) -> str:
            return token if self.hosts.is_url_host_valid(uri) else ""

        def get_allowed_hosts_validator(self) -> AllowedHostsValidator:
            return self.hosts

    return BaseBearerTokenAuthenticationProvider(FixedToken())


async def titles(port: int, top: int) -> list[str]:
    """Every alert's title, in the order the pages gave them."""
    from kiota_abstractions.authentication import AnonymousAuthenticationProvider
    from kiota_abstractions.base_request_configuration import RequestConfiguration
    from msgraph.generated.models.security.alert import Alert
    from msgraph.generated.security.alerts_v2.alerts_v2_request_builder import (
        Alerts_v2RequestBuilder,
    )
    from msgraph_core.tasks.page_iterator import PageIterator

    seen: list[str] = []

    def collect(alert: Alert) -> bool:
        seen.append(alert.title or "")
        return True

    async with httpx.AsyncClient(trust_env=False) as http:
        graph = _graph(port, AnonymousAuthenticationProvider(), http)
        query = Alerts_v2RequestBuilder.Alerts_v2RequestBuilderGetQueryParameters(top=top)
        first = await graph.security.alerts_v2.get(RequestConfiguration(query_parameters=query))
        assert first is not None
        await PageIterator(first, graph.request_adapter).iterate(collect)
    return seen


async def hunt(port: int, tid: str, app: str, query: str) -> dict[str, Any]:
    """Run a hunting query: the status, the result's column names and its row count."""
    from kiota_abstractions.api_error import APIError
    from msgraph.generated.security.microsoft_graph_security_run_hunting_query import (
        run_hunting_query_post_request_body as hunting,
    )

    async with httpx.AsyncClient(trust_env=False) as http:
        graph = _graph(port, _token_auth(tid, app), http)
        action = graph.security.microsoft_graph_security_run_hunting_query
        try:
            found = await action.post(hunting.RunHuntingQueryPostRequestBody(query=query))
        except APIError as exc:
            return {"status": exc.response_status_code}
    assert found is not None
    return {
        "status": 200,
        "columns": [column.name for column in found.schema or []],
        "rows": len(found.results or []),
    }


async def batch(port: int, tid: str, app: str, count: int) -> dict[str, Any]:
    """Send ``count`` alert reads in one batch: the batch's status and each inner status by id."""
    from kiota_abstractions.api_error import APIError
    from kiota_abstractions.base_request_configuration import RequestConfiguration
    from msgraph.generated.security.alerts_v2.alerts_v2_request_builder import (
        Alerts_v2RequestBuilder,
    )
    from msgraph_core.requests.batch_request_content import BatchRequestContent
    from msgraph_core.requests.batch_request_item import BatchRequestItem
    from msgraph_core.requests.batch_response_content import BatchResponseContent

    async with httpx.AsyncClient(trust_env=False) as http:
        graph = _graph(port, _token_auth(tid, app), http)
        query = Alerts_v2RequestBuilder.Alerts_v2RequestBuilderGetQueryParameters(top=1)
        content = BatchRequestContent()
        for index in range(count):
            info = graph.security.alerts_v2.to_get_request_information(
                RequestConfiguration(query_parameters=query)
            )
            # add_request_information drops the id it is given for a random one: set it here.
            content.add_request(None, BatchRequestItem(info, id=str(index)))
        try:
            answer = await graph.batch.post(content)
        except APIError as exc:
            return {"status": exc.response_status_code}
    assert isinstance(answer, BatchResponseContent)
    return {"status": 200, "answers": answer.get_response_status_codes()}


#: The roles the session's calls need from a simulator that checks tokens.
SESSION_ROLES = ("SecurityAlert.Read.All", "ThreatHunting.Read.All")


class FixedCredential:
    """An azure-core ``AsyncTokenCredential`` that hands out one app token of ``APP`` in ``TID``
    for Graph, as a client-secret credential would after its sign-in (there is no identity
    provider here to sign in against)."""

    def __init__(self, tid: str, app: str) -> None:
        self.expires_on = int(time.time()) + 3600
        self.token = bearer(
            tid,
            app,
            aud="https://graph.microsoft.com",
            exp=self.expires_on,
            roles=list(SESSION_ROLES),
        ).removeprefix("Bearer ")
        #: the scopes each call asked for
        self.asked: list[tuple[str, ...]] = []

    async def get_token(
        self,
        *scopes: str,
        claims: str | None = None,
        tenant_id: str | None = None,
        enable_cae: bool = False,
        **kwargs: Any,
    ) -> AccessToken:
        from azure.core.credentials import AccessToken

        self.asked.append(scopes)
        return AccessToken(self.token, self.expires_on)

    async def get_token_info(
        self, *scopes: str, options: TokenRequestOptions | None = None
    ) -> AccessToken:
        return await self.get_token(*scopes)

    async def close(self) -> None:
        return None

    async def __aenter__(self) -> FixedCredential:
        return self

    async def __aexit__(self, *_: object) -> None:
        return None


async def https_session(port: int, cafile: str, tid: str, app: str) -> dict[str, Any]:
    """The session of the ``https`` command; returns what it prints last."""
    from cryptography import x509
    from kiota_abstractions.base_request_configuration import RequestConfiguration
    from msgraph.generated.models.security.alert import Alert
    from msgraph.generated.security.alerts_v2.alerts_v2_request_builder import (
        Alerts_v2RequestBuilder,
    )
    from msgraph.generated.security.microsoft_graph_security_run_hunting_query import (
        run_hunting_query_post_request_body as hunting,
    )
    from msgraph_core.authentication import AzureIdentityAuthenticationProvider
    from msgraph_core.tasks.page_iterator import PageIterator

    credential = FixedCredential(tid, app)
    trust = ssl.create_default_context(cafile=cafile)
    exchanges: list[dict[str, Any]] = []

    async def record(response: httpx.Response) -> None:
        stream = response.extensions["network_stream"]
        der = stream.get_extra_info("ssl_object").getpeercert(True)
        exchanges.append(
            {
                "status": response.status_code,
                "serial": format(x509.load_der_x509_certificate(der).serial_number, "x"),
                "port": stream.get_extra_info("client_addr")[1],
            }
        )

    def client() -> httpx.AsyncClient:
        return httpx.AsyncClient(verify=trust, trust_env=False, event_hooks={"response": [record]})

    def sign_in() -> AuthenticationProvider:
        scopes = ["https://graph.microsoft.com/.default"]
        provider: AuthenticationProvider = AzureIdentityAuthenticationProvider(
            credential, scopes=scopes, allowed_hosts=[HOST]
        )
        return provider

    titles: list[str] = []

    def collect(alert: Alert) -> bool:
        titles.append(alert.title or "")
        return True

    query = Alerts_v2RequestBuilder.Alerts_v2RequestBuilderGetQueryParameters(top=10)
    async with client() as http:
        graph = _graph(port, sign_in(), http, "https")
        first = await graph.security.alerts_v2.get(RequestConfiguration(query_parameters=query))
        assert first is not None
        await PageIterator(first, graph.request_adapter).iterate(collect)
        print(orjson.dumps({"before": exchanges, "alerts": len(titles)}).decode(), flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        before = len(exchanges)
        action = graph.security.microsoft_graph_security_run_hunting_query
        found = await action.post(hunting.RunHuntingQueryPostRequestBody(query="DeviceInfo"))
        assert found is not None
    async with client() as http:
        graph = _graph(port, sign_in(), http, "https")
        top = Alerts_v2RequestBuilder.Alerts_v2RequestBuilderGetQueryParameters(top=1)
        again = await graph.security.alerts_v2.get(RequestConfiguration(query_parameters=top))
        assert again is not None
    return {"after": exchanges[before:], "scopes": sorted(set(credential.asked))}


def main(argv: list[str]) -> Any:
    """Run the command ``argv`` names and return what it found."""
    # The SDK's generated code declares classes that it and its abstractions library deprecate.
    warnings.simplefilter("ignore", DeprecationWarning)
    command, port, *rest = argv
    match command:
        case "page":
            return asyncio.run(titles(int(port), int(rest[0])))
        case "hunt":
            tid, app, query = rest
            return asyncio.run(hunt(int(port), tid, app, query))
        case "batch":
            tid, app, count = rest
            return asyncio.run(batch(int(port), tid, app, int(count)))
        case "https":
            cafile, tid, app = rest
            return asyncio.run(https_session(int(port), cafile, tid, app))
    raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    sys.stdout.buffer.write(orjson.dumps(main(sys.argv[1:])))
