"""``python -m tests.graphpager PORT``: a tool built on the Microsoft Graph SDK that pages
``/v1.0/security/alerts_v2`` with ``PageIterator``, its base URL ``http://127.0.0.1:PORT/v1.0``,
anonymous (the proxy's upstream is the simulator, which needs no token). Prints the alerts'
titles as one JSON list."""

from __future__ import annotations

import asyncio
import sys
import warnings

import httpx
import orjson


async def titles(port: int, top: int) -> list[str]:
    """Every alert's title, in the order the pages gave them."""
    # The SDK's generated code declares classes that it and its abstractions library deprecate.
    warnings.simplefilter("ignore", DeprecationWarning)
    from kiota_abstractions.authentication import AnonymousAuthenticationProvider
    from kiota_abstractions.base_request_configuration import RequestConfiguration
    from msgraph.generated.models.security.alert import Alert
    from msgraph.generated.security.alerts_v2.alerts_v2_request_builder import (
        Alerts_v2RequestBuilder,
    )
    from msgraph.graph_request_adapter import GraphRequestAdapter
    from msgraph.graph_service_client import GraphServiceClient
    from msgraph_core import GraphClientFactory
    from msgraph_core.tasks.page_iterator import PageIterator

    seen: list[str] = []

    def collect(alert: Alert) -> bool:
        seen.append(alert.title or "")
        return True

    async with httpx.AsyncClient(trust_env=False) as http:
        client = GraphClientFactory.create_with_default_middleware(client=http)
        adapter = GraphRequestAdapter(AnonymousAuthenticationProvider(), client)
        adapter.base_url = f"http://127.0.0.1:{port}/v1.0"
        graph = GraphServiceClient(request_adapter=adapter)
        query = Alerts_v2RequestBuilder.Alerts_v2RequestBuilderGetQueryParameters(top=top)
        first = await graph.security.alerts_v2.get(RequestConfiguration(query_parameters=query))
        assert first is not None
        await PageIterator(first, adapter).iterate(collect)
    return seen


if __name__ == "__main__":
    found = asyncio.run(titles(int(sys.argv[1]), int(sys.argv[2])))
    sys.stdout.buffer.write(orjson.dumps(found))
