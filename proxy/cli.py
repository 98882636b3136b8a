"""The ``defender-proxy`` command: run, check-config, simulate, catalogue, errors."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence

from proxy import __version__, logs


def _parser(command: str | None = None) -> argparse.ArgumentParser:
    """The command line's parser; the options of ``command`` only are those of its module."""
    parser = argparse.ArgumentParser(
        prog="defender-proxy",
        description="A sidecar reverse proxy for the Microsoft Defender API.",
    )
    parser.add_argument("--version", action="version", version=f"defender-proxy {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = commands.add_parser("run", help="start the proxy", description="Start the proxy.")
    run.add_argument(
        "--config",
        metavar="FILE",
        help="YAML config file (default: $DEFENDER_PROXY_CONFIG, else the embedded defaults)",
    )

    check = commands.add_parser(
        "check-config",
        help="validate a config file without starting",
        description="Validate a config file (and the DEFENDER_PROXY_* environment) and exit.",
    )
    check.add_argument("file", metavar="FILE")

    simulate = commands.add_parser(
        "simulate",
        help="run a stand-in Defender API for demos and tests",
        description="Run a stand-in Defender API: the error table, odd bodies, quotas.",
    )
    if command == "simulate":
        # The simulator's options are declared with the simulator, whose modules (aiohttp's web
        # app, its tables, gzip) would otherwise stay in every proxy's memory: only a process
        # that runs it imports them.
        from proxy.simulator.__main__ import add_arguments

        add_arguments(simulate)

    catalogue = commands.add_parser(
        "catalogue",
        help="print the effective route table and its limits",
        description="Print the effective route table: the built-in catalogue with the config's "
        "throttle.routes applied (first match wins), each route's limits, priority, mode and the "
        "least privileged permission of each documented endpoint in it.",
    )
    catalogue.add_argument(
        "--config",
        metavar="FILE",
        help="YAML config file (default: $DEFENDER_PROXY_CONFIG, else the embedded defaults)",
    )

    errors = commands.add_parser(
        "errors",
        help="print the recent error answers of a running proxy, newest first",
        description="Fetch /errors from a running proxy's admin port and print its recent error "
        "answers, newest first, with the tracking id (target) a Microsoft support case asks for.",
    )
    errors.add_argument(
        "--admin",
        metavar="URL",
        help="the admin port, e.g. http://127.0.0.1:9464 (default: admin_listen of the config)",
    )
    errors.add_argument(
        "--config",
        metavar="FILE",
        help="YAML config file whose admin_listen to use (default: $DEFENDER_PROXY_CONFIG, "
        "else the embedded defaults)",
    )
    errors.add_argument("--limit", metavar="K", help="only the K newest")
    errors.add_argument("--status", metavar="STATUS", help="only answers with this status")
    errors.add_argument("--route", metavar="NAME", help="only answers on this route")
    errors.add_argument("--json", action="store_true", help="print the JSON as fetched")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``defender-proxy`` console script."""
    args = _parser(_command(sys.argv[1:] if argv is None else argv)).parse_args(argv)
    if args.command == "run":
        # Only as the process's own command may it start itself again on another allocator.
        return _run(args.config, restart=argv is None)
    if args.command == "check-config":
        return _check(args.file)
    if args.command == "simulate":
        from proxy.simulator.__main__ import run_from_args

        return run_from_args(args)
    if args.command == "catalogue":
        return _catalogue(args.config)
    if args.command == "errors":
        from proxy.errors_command import show

        return show(args.admin, args.config, args.limit, args.status, args.route, args.json)
    _parser().print_help()
    return 2


def _command(argv: Sequence[str]) -> str | None:
    """The subcommand ``argv`` names: its first word that is no option (the top level's options,
    ``--help`` and ``--version``, take no value)."""
    return next((word for word in argv if not word.startswith("-")), None)


def _run(path: str | None, *, restart: bool = False) -> int:
    from proxy.allocator import AllocatorError, settle
    from proxy.config import ConfigError, load_settings

    # SIGHUP reloads once the proxy is up; until then it must not end the process (its default),
    # and the settings read next are the file's newest anyway.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        settings = load_settings(path)
    except ConfigError as exc:
        print(f"defender-proxy: invalid configuration:\n{exc}", file=sys.stderr)
        return 2
    if restart:
        try:
            settle(settings.allocator)
        except AllocatorError as exc:
            print(f"defender-proxy: {exc}", file=sys.stderr)
            return 2
    # Imported once the allocator is settled: a start that is done again on jemalloc has loaded
    # no more than the settings need.
    from proxy.serve import run

    logs.configure(settings.log_format, settings.log_level)
    return run(settings, path)


def _check(path: str) -> int:
    import os
    import time

    from proxy.config import ConfigError, load_settings
    from proxy.credentials import describe
    from proxy.tracing import plan

    # What `run` would warn about the OTEL_* environment: said, never fatal (as at start).
    for warning in plan(os.environ).warnings:
        print(f"warning: {warning}", file=sys.stderr)
    try:
        settings = load_settings(path)
    except ConfigError as exc:
        print(f"{exc}", file=sys.stderr)
        return 2
    listeners = settings.listeners
    if not settings.upstreams:
        https = " (https)" if listeners[0].listen_tls else ""
        print(
            f"{path}: ok (upstream {settings.upstream}, listen {settings.listen}{https}, "
            f"catalogue {listeners[0].catalogue}, admin {settings.admin_listen})"
        )
        if settings.credentials is not None:
            print(f"  credentials: {describe(settings.credentials, time.time())}")
        return 0
    print(f"{path}: ok ({len(listeners)} upstreams, admin {settings.admin_listen})")
    rows = [("name", "listen", "scheme", "catalogue", "origin")]
    rows += [(u.name, str(u.listen), u.scheme, u.catalogue, u.origin) for u in listeners]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        cells = [f"{cell:<{width}}" for cell, width in zip(row[:4], widths, strict=True)]
        print("  " + "  ".join([*cells, row[4]]))
    for upstream in listeners:
        if upstream.credentials is not None:
            line = describe(upstream.credentials, time.time())
            print(f"  credentials of {upstream.name}: {line}")
    return 0


def _catalogue(path: str | None) -> int:
    from proxy.catalogue import CATALOGUES
    from proxy.config import (
        ConfigError,
        effective_routes,
        load_settings,
        route_policies,
        route_scopes,
    )
    from proxy.reference import ENDPOINTS
    from proxy.routing import Router

    try:
        settings = load_settings(path)
    except ConfigError as exc:
        print(f"{exc}", file=sys.stderr)
        return 2
    throttle = settings.throttle
    scopes = route_scopes(throttle)
    # What a route's endpoints want, least privileged first: the first permission of each
    # documented endpoint in it, once each, in the reference table's order.
    wanted: dict[str, dict[str, None]] = {}
    for endpoint in ENDPOINTS:
        wanted.setdefault(endpoint.route, {})[endpoint.permissions[0]] = None
    listeners = settings.listeners
    # One table per catalogue served, in the order the upstreams name them.
    for index, name in enumerate(dict.fromkeys(u.catalogue for u in listeners)):
        served = ", ".join(u.name for u in listeners if u.catalogue == name)
        print(f"{chr(10) if index else ''}catalogue {name} (upstreams: {served})")
        catalogue = CATALOGUES[name]
        policies = route_policies(throttle, catalogue)
        rows = [("route", "limits", "per", "priority", "mode", "permissions", "match")]
        for spec in Router(effective_routes(throttle, catalogue)).routes:
            limits = ", ".join(str(limit) for limit in spec.limits)
            priority, mode = policies.get(spec.name, ("interactive", throttle.mode))
            per = scopes.get(spec.name, "app")
            permissions = ", ".join(wanted.get(spec.name, ())) or "-"
            match = "; ".join(spec.match) or "(anything else, per path family)"
            rows.append((spec.name, limits, per, priority, mode, permissions, match))
        widths = [max(len(row[i]) for row in rows) for i in range(6)]
        for row in rows:
            cells = [f"{cell:<{width}}" for cell, width in zip(row[:6], widths, strict=True)]
            print("  ".join([*cells, row[6]]))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
