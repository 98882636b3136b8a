"""Reloading the config file on SIGHUP: read it again, compare it with what runs, apply the rest.

The file is read as at start (``load_settings``: the same path, the same environment, whose
variables still win), and validated the same way: a file that does not validate is refused with
the problems ``check-config`` prints, and the running settings stay. Each key that differs is
either applied at once, for the requests and admissions that start after the reload, or — if it
cannot change without a restart — named in a warning and left as it is (``RESTART_ONLY``).

Nothing in flight is dropped: a request keeps the settings it started with (``Proxy.reconfigure``);
the limiter is changed in place, so a waiter keeps the slot it holds (``Limiter.reconfigure``);
the store, its connections and what it counts are never rebuilt.

Reloads run one at a time: a SIGHUP during one makes one more run after it, never two at once.
Each ends in one result, counted in ``defender_proxy_reloads_total{result}``: ``ok`` (something
was applied), ``unchanged`` (valid, and nothing that can change live differed) or ``invalid``.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, fields, is_dataclass, replace
from typing import Any, Final

from proxy import app as wiring
from proxy import logs
from proxy.callers import CallerServer, caller_connection_cap
from proxy.config import (
    ConfigError,
    Fallback,
    Identities,
    Limits,
    Pool,
    Settings,
    Throttle,
    Timeouts,
    Tls,
    load_settings,
)
from proxy.handler import Proxy
from proxy.listen_tls import ListenTls, ServerTls
from proxy.metrics import Metrics
from proxy.quota.limiter import Limiter
from proxy.recent_errors import RecentErrors
from proxy.routing import Router
from proxy.upstreams import Upstream

#: Keys (and sections) that need a restart, each for the reason beside it.
RESTART_ONLY: Final = (
    # the set of listeners: each one's socket, origin, pool and name
    "upstream",
    "listen",
    "upstreams",
    "admin_listen",
    # the renderer is chosen once, and loggers made since hold it
    "log_format",
    # the drain's runners are made with it at start
    "shutdown_grace",
    # fixed before the interpreter starts
    "allocator",
    # the upstream pools: their TLS context and their size
    "tls",
    "pool",
    # aiohttp's server fixes these for its connections at start
    "timeouts.caller_keepalive",
    "limits.max_header_size",
    # the quota store: made once, its keys named by the namespace and by each window's width,
    # margin included (a new margin would start every window of Redis empty)
    "throttle.store",
    "throttle.namespace",
    "throttle.store_timeout",
    "throttle.margin",
    "throttle.fallback",
    # the token sources: made at start, one per credential
    "credentials",
)
#: Problems of a refused file written in its warning; ``problems_total`` says how many there were.
MAX_LOGGED_PROBLEMS: Final = 50
#: The sections whose keys are compared one by one.
_SECTIONS: Final = (Timeouts, Tls, Limits, Pool, Throttle, Fallback, Identities)


@dataclass(frozen=True, slots=True)
class Changes:
    """The keys (dotted paths) in which two settings differ, by whether they apply live."""

    live: tuple[str, ...]
    restart: tuple[str, ...]


def _leaves(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    for field in fields(value):
        path = f"{prefix}{field.name}"
        item = getattr(value, field.name)
        if isinstance(item, _SECTIONS):
            yield from _leaves(item, f"{path}.")
        else:
            yield path, item


def needs_restart(key: str) -> bool:
    """Whether the key at dotted path ``key`` can change only with a restart."""
    return any(key == path or key.startswith(f"{path}.") for path in RESTART_ONLY)


def _listeners_alone(upstreams: tuple[Upstream, ...]) -> tuple[Upstream, ...]:
    """The entries without what ``diff`` names apart: their pairs and their credentials."""
    return tuple(replace(upstream, listen_tls=None, credentials=None) for upstream in upstreams)


def _credentials_differ(running: Settings, loaded: Settings) -> bool:
    """Whether a listener both settings serve holds other credentials, its own or inherited."""
    before = {upstream.name: upstream.credentials for upstream in running.listeners}
    after = {upstream.name: upstream.credentials for upstream in loaded.listeners}
    return any(before[name] != after[name] for name in before.keys() & after.keys())


def _served_tls(settings: Settings) -> dict[str, ListenTls | None]:
    return {upstream.name: upstream.listen_tls for upstream in settings.listeners}


def diff(running: Settings, loaded: Settings) -> Changes:
    """The keys in which ``loaded`` differs from ``running``, in the order of the settings.

    The pairs the listeners serve are ``listen_tls``, whether the top-level key or an
    ``upstreams`` entry's own named them: new files apply live, but a listener that would switch
    between HTTP and HTTPS needs a restart (its socket is made with its scheme). Likewise the
    credentials the listeners hold are ``credentials``, whichever section named them.
    """
    theirs = dict(_leaves(loaded))

    def differs(key: str, value: Any) -> bool:
        if key == "upstreams":
            return _listeners_alone(theirs[key]) != _listeners_alone(value)
        if key == "credentials":
            return bool(theirs[key] != value) or _credentials_differ(running, loaded)
        return bool(theirs[key] != value)

    changed = [
        key for key, value in _leaves(running) if key != "listen_tls" and differs(key, value)
    ]
    live = [key for key in changed if not needs_restart(key)]
    restart = [key for key in changed if needs_restart(key)]
    # Listeners are matched by name: one added or taken away is the restart ``upstreams`` names.
    before, after = _served_tls(running), _served_tls(loaded)
    common = before.keys() & after.keys()
    if any(before[name] != after[name] for name in common):
        switched = any((before[name] is None) != (after[name] is None) for name in common)
        (restart if switched else live).insert(0, "listen_tls")
    return Changes(tuple(live), tuple(restart))


def applicable(running: Settings, loaded: Settings) -> Settings:
    """``loaded`` with every key that needs a restart as it is in ``running``; the listeners
    take the pairs ``loaded`` names where their scheme stays."""
    kept: Settings = _keep(running, loaded, "")
    if "listen_tls" in diff(running, loaded).restart:
        return replace(kept, listen_tls=running.listen_tls)
    after = _served_tls(loaded)
    upstreams = tuple(
        replace(upstream, listen_tls=after.get(upstream.name, upstream.listen_tls))
        for upstream in kept.upstreams
    )
    return replace(kept, upstreams=upstreams)


def _keep(running: Any, loaded: Any, prefix: str) -> Any:
    assert is_dataclass(running)
    changes: dict[str, Any] = {}
    for field in fields(running):
        path = f"{prefix}{field.name}"
        mine = getattr(running, field.name)
        if needs_restart(path):
            changes[field.name] = mine
        elif isinstance(mine, _SECTIONS):
            changes[field.name] = _keep(mine, getattr(loaded, field.name), f"{path}.")
    return replace(loaded, **changes)


class Reloader:
    """Reloads the config file into the running process: the listeners' handlers and servers,
    the limiter, the ring of recent errors and the log level."""

    def __init__(
        self,
        path: str | None,
        settings: Settings,
        listeners: Sequence[tuple[Proxy, CallerServer]],
        limiter: Limiter,
        errors: RecentErrors,
        metrics: Metrics,
        environ: Mapping[str, str] | None = None,
        tls: Mapping[str, ServerTls] | None = None,
    ) -> None:
        self._environ = os.environ if environ is None else environ
        #: the file read at start and on every reload (None: the environment alone)
        self.path = path or self._environ.get("DEFENDER_PROXY_CONFIG") or None
        self.settings = settings
        self._listeners = tuple(listeners)
        self._limiter = limiter
        self._errors = errors
        self._metrics = metrics
        #: each HTTPS listener's pair, by upstream name
        self._tls = dict(tls or {})
        self._task: asyncio.Task[None] | None = None
        self._again = False
        self._log = logs.get_logger("lifecycle")

    def request(self) -> None:
        """Reload soon (the SIGHUP handler): now, or once the reload under way has ended."""
        if self._task is not None and not self._task.done():
            self._again = True
            return
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def wait(self) -> None:
        """Until no reload is under way or asked for."""
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)

    async def _run(self) -> None:
        while True:
            self._again = False
            try:
                await self.reload()
            except Exception as exc:  # a bug: the process carries on with what it runs
                self._log.error("reload failed", error=repr(exc), exc_info=True)
            if not self._again:
                return

    async def reload(self) -> str:
        """Read the file again and apply it; the result (``ok``, ``unchanged``, ``invalid``)."""
        try:
            # In a thread: a long route table takes a while to validate, and requests go on.
            loaded = await asyncio.to_thread(load_settings, self.path, self._environ)
        except ConfigError as exc:
            self._log.warning(
                "reload refused: the running settings stay",
                file=self.path,
                # check-config prints them all; one log line stays readable (and bounded).
                problems=exc.problems[:MAX_LOGGED_PROBLEMS],
                problems_total=len(exc.problems),
            )
            return self._count("invalid")
        return self.apply(loaded)

    def apply(self, loaded: Settings) -> str:
        """Apply valid settings ``loaded``, but what needs a restart; the result."""
        changes = diff(self.settings, loaded)
        if changes.restart:
            self._log.warning(
                "reload: settings that need a restart were not applied",
                file=self.path,
                needs_restart=list(changes.restart),
            )
        self._metrics.config_loaded.set(time.time())
        if not changes.live:
            self._log.info("reload: nothing to apply", file=self.path)
            return self._count("unchanged")
        settings = applicable(self.settings, loaded)
        # Nothing below awaits: no request or admission sees half of the new settings.
        logs.set_level(settings.log_level)
        routers = wiring.routers_for(settings)
        self._limiter.reconfigure(settings.throttle, *wiring.quota_routes(settings, routers))
        for proxy, server in self._listeners:
            self._listener(proxy, server, settings, routers[proxy.upstream.catalogue])
        self._errors.resize(settings.limits.recent_errors)
        self.settings = settings
        self._log.info("reloaded", file=self.path, changed=list(changes.live))
        if "allow_from" in changes.live:
            wiring.warn_if_open(settings)
        return self._count("ok")

    def _listener(
        self, proxy: Proxy, server: CallerServer, settings: Settings, router: Router
    ) -> None:
        """One listener's part of a reload: its handler and its server."""
        (upstream,) = (u for u in settings.listeners if u.name == proxy.upstream.name)
        proxy.reconfigure(settings, upstream, router)
        served = self._tls.get(upstream.name)
        if served is not None and upstream.listen_tls not in (None, served.files):
            # A pair that no longer loads was refused by the validation above, unless its files
            # changed since: then ``use`` warns and the pair served now stays.
            served.use(upstream.listen_tls)
        server.retune(settings.timeouts.caller, caller_connection_cap(settings))

    def _count(self, result: str) -> str:
        self._metrics.reloads.labels(result).inc()
        return result
