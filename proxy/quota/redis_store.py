"""The shared quota store: Redis, one script call (one round trip) per admission.

Every window of a route lives under one hash tag (``dp:{namespace:route}``), so a route's keys sit
in one Redis Cluster slot and the script may touch them together; ``redis+cluster://`` (or
``rediss+cluster://``) names one node of a cluster and the client finds the others. The scripts
are called by SHA and loaded again when the server lost them (after a restart). A single server
(``redis://``, ``rediss://`` without query options) is served by the lean pipelined client of
``resp``; Redis Cluster, unix sockets and URLs with options by redis-py.
Time comes from the Redis server (``TIME`` inside the script), never from a replica's clock.

Over TLS (``rediss://``, ``rediss+cluster://``) the server's certificate is checked against
``tls.ca_bundle`` when the config names one, unless the URL names its own ``ssl_ca_certs``.

Every call keeps to ``timeout`` (the lean client by itself, redis-py's calls under a deadline of
``deadline``, ``timeout`` unless given) and every error either client raises, timeouts and Redis
Cluster's own included, reaches the caller as ``StoreUnavailable``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

from proxy.quota import resp
from proxy.quota.schedule import cap_for
from proxy.quota.store import MICROS, Decision, Quota, StoreUnavailable

#: Connections to Redis per replica through redis-py (the lean client keeps one, pipelined).
MAX_CONNECTIONS = 16


def _lua(name: str) -> str:
    return resources.files("proxy.quota").joinpath("lua", name).read_text(encoding="utf-8")


class RedisStore:
    """Quota logs in Redis, shared by every replica."""

    name = "redis"

    def __init__(
        self,
        url: str,
        timeout: float,
        deadline: float | None = None,
        ca_bundle: str | None = None,
    ) -> None:
        scheme, sep, rest = url.partition("://")
        self.client: Any
        #: what a call may raise when the store is unreachable or refuses it
        self._errors: tuple[type[BaseException], ...] = (OSError, TimeoutError, resp.ReplyError)
        #: whether every call, connecting included, ends within ``timeout`` by the client's doing
        self._bounded = False
        self._deadline = timeout if deadline is None else deadline
        self._cluster = scheme.lower().endswith("+cluster")
        if scheme.lower() in ("redis", "rediss") and "?" not in rest:
            # One server, no options: the lean pipelined client (proxy.quota.resp).
            self.client = resp.Client(url, timeout, ca_bundle)
            self._bounded = True
        else:
            self.client = self._redis_py(url, scheme, sep, rest, timeout, ca_bundle)
            import redis.exceptions

            # RedisClusterException is not a RedisError: it is what an unreachable cluster
            # raises at the first call, which must mean fallback, not a crash at start-up.
            self._errors = (
                OSError,
                TimeoutError,
                redis.exceptions.RedisError,
                redis.exceptions.RedisClusterException,
            )
        self._admit = self.client.register_script(_lua("admit.lua"))
        self._release = self.client.register_script(_lua("release.lua"))
        self._pause = self.client.register_script(_lua("pause.lua"))
        self._restore = self.client.register_script(_lua("restore.lua"))
        #: the lean client's connection count when a lost connection was last reported
        self._reported = 0

    def _check_connection(self) -> None:
        """Report a lost connection once, before the next admission reconnects.

        A server that restarted without persistence answers the next call as if nothing had
        been admitted; reporting the loss as ``StoreUnavailable`` sends the replica through its
        fallback, so that it writes back what it sent before it admits there again.
        """
        client = self.client
        if isinstance(client, resp.Client) and client.lost and client.opened != self._reported:
            self._reported = client.opened
            raise StoreUnavailable(
                "ConnectionError", "the connection to Redis was lost; it may have restarted empty"
            )

    async def _call(self, script: Any, keys: Sequence[str], args: Sequence[str | int]) -> Any:
        """One script call within the deadline; any client error becomes ``StoreUnavailable``."""
        try:
            if self._bounded:
                return await script(keys=keys, args=args)
            async with asyncio.timeout(self._deadline):
                return await script(keys=keys, args=args)
        except self._errors as exc:
            raise StoreUnavailable.wrapping(exc) from exc

    @staticmethod
    def _redis_py(
        url: str, scheme: str, sep: str, rest: str, timeout: float, ca_bundle: str | None
    ) -> Any:
        """redis-py's client: for Redis Cluster, unix sockets and URLs with query options."""
        import redis.asyncio as redis
        from redis.asyncio.cluster import RedisCluster

        options: dict[str, Any] = {
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
        }
        query = urlsplit(url).query
        if (
            ca_bundle
            and scheme.lower().startswith("rediss")
            and "ssl_ca_certs" not in parse_qs(query)
        ):
            # tls.ca_bundle, unless the URL names CAs of its own (a plain redis:// connection
            # would refuse the argument).
            options["ssl_ca_certs"] = ca_bundle
        if scheme.lower().endswith("+cluster"):
            # redis+cluster://host:port names one node; the client discovers the rest.
            plain = scheme[: -len("+cluster")] + sep + rest
            return RedisCluster.from_url(plain, **options)
        # A bounded pool: a burst of concurrent admissions (at recovery, say) waits its turn for
        # a connection instead of opening one each and keeping them all afterwards.
        pool = redis.BlockingConnectionPool.from_url(
            url,
            max_connections=MAX_CONNECTIONS,
            timeout=timeout,
            retry_on_timeout=False,
            health_check_interval=0,
            **options,
        )
        return redis.Redis.from_pool(pool)

    @staticmethod
    def _window_keys(quota: Quota) -> list[str]:
        return [f"{quota.key}:w{w.width}" for w in quota.windows]

    async def admit(
        self,
        quota: Quota,
        member: str,
        max_wait: float,
        reserve: float,
        shadow: bool,
        not_before: float = 0.0,
        *,
        at: int | None = None,
    ) -> Decision:
        """See ``QuotaStore.admit``; ``at`` decides at that time (µs) instead of the server's
        ``TIME``, so that a test can replay ``schedule``'s arithmetic at times it chooses."""
        args: list[str | int] = [
            member,
            round(max_wait * MICROS),
            ",".join(str(cap_for(w.limit, reserve)) for w in quota.windows),
            1 if shadow else 0,
        ]
        for window in quota.windows:
            args += [window.limit, window.width]
        args += ["" if at is None else at, round(not_before * MICROS)]
        keys = [f"{quota.key}:pause", *self._window_keys(quota)]
        self._check_connection()
        reply = await self._call(self._admit, keys, args)
        values = [int(v) for v in reply]
        return Decision(
            admitted=values[0] == 1,
            wait=values[1] / MICROS,
            paused=values[2] / MICROS,
            turn=values[3] / MICROS,
            remaining=tuple(values[4::2]),
            reset=tuple(v / MICROS for v in values[5::2]),
        )

    async def restore(self, quota: Quota, admissions: Sequence[tuple[str, float]]) -> None:
        """See ``QuotaStore.restore``: one script call, whatever the number of admissions."""
        if not admissions:
            return
        args: list[str | int] = [w.width for w in quota.windows]
        for member, age in admissions:
            args += [member, round(age * MICROS)]
        await self._call(self._restore, self._window_keys(quota), args)

    async def release(self, quota: Quota, member: str, *, unused: bool = False) -> None:
        """See ``QuotaStore.release``."""
        await self._call(self._release, self._window_keys(quota), [member, "1" if unused else "0"])

    async def pause(self, quota: Quota, seconds: float) -> float:
        """See ``QuotaStore.pause``."""
        left = await self._call(self._pause, [f"{quota.key}:pause"], [round(seconds * MICROS)])
        return int(left) / MICROS

    async def warm(self, connections: int = 8, timeout: float = 2.0) -> bool:
        """Open the connections (``connections`` of redis-py's pool) and load every script,
        within ``timeout`` seconds in all."""
        if isinstance(self.client, resp.Client):
            connections = 1
        try:
            async with asyncio.timeout(timeout):
                await asyncio.gather(*(self.client.ping() for _ in range(connections)))
                for script in (self._admit, self._release, self._pause, self._restore):
                    script.sha = await self.client.script_load(script.script)
        except self._errors as exc:
            raise StoreUnavailable.wrapping(exc) from exc
        return True

    def tidy(self) -> None:
        """Nothing held here: Redis lets the keys expire."""

    async def close(self) -> None:
        """Close every connection the client opened."""
        await self.client.aclose()
        if self._cluster:
            # After a connection error (a master gone) redis-py 8 flags a cluster client for
            # re-initialisation, and its aclose() does nothing while that flag is up (6.4 closed
            # every node on the error itself): the nodes' connections would stay open. Closing
            # the nodes again costs nothing when aclose() did close them.
            await self.client.nodes_manager.aclose()
            await self.client.nodes_manager.aclose("startup_nodes")
