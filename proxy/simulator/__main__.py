"""``python -m proxy.simulator``: run the simulator from the command line.

``build_parser`` and ``config_from_args`` are public so the project's CLI can offer the same
options under ``defender-proxy simulate``.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from proxy.simulator.app import SimConfig, serve
from proxy.units import Limit, parse_limit

if TYPE_CHECKING:
    from proxy.simulator.identity import IdpSite


def _limit(text: str) -> Limit:
    # argparse shows ArgumentTypeError's own message; a ValueError would become "invalid value".
    try:
        return parse_limit(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the simulator's options to ``parser``."""
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, required=True, help="port to listen on (0: any)")
    parser.add_argument(
        "--limit",
        type=_limit,
        action="append",
        default=[],
        metavar="COUNT/WINDOW",
        help="sliding-window quota such as 100/1m; repeat for several",
    )
    parser.add_argument(
        "--count-rejected",
        action="store_true",
        help="count requests answered 429 against the window too, as Graph does",
    )
    parser.add_argument(
        "--per-identity",
        action="store_true",
        help="a quota per route and per app + tenant of the bearer token (hunting: per tenant)",
    )
    parser.add_argument(
        "--check-tokens",
        action="store_true",
        help="check bearer tokens as the API does: 401 for a missing, expired or wrong-audience "
        "token, 403 without the endpoint's permission (signatures are never checked)",
    )
    parser.add_argument(
        "--check-bodies",
        action="store_true",
        help="answer 400 MissingRequiredParameter or InvalidRequestBody, as the API does, for a "
        "documented endpoint's body that leaves out a required parameter or has a key it does "
        "not document (names are case-sensitive)",
    )

    idp = parser.add_argument_group(
        "identity provider",
        "a stand-in Microsoft Entra ID on an HTTPS listener of its own (OIDC discovery, JWKS, "
        "the v2.0 token endpoint): give --idp-port, --idp-apps and its TLS pair (--idp-cert and "
        "--idp-key, or --idp-tls-dir) to start it",
    )
    idp.add_argument("--idp-port", type=int, help="its HTTPS port (0: any)")
    idp.add_argument("--idp-cert", metavar="FILE", help="its certificate chain (PEM)")
    idp.add_argument("--idp-key", metavar="FILE", help="its private key (PEM)")
    idp.add_argument(
        "--idp-tls-dir",
        metavar="DIR",
        help="instead of --idp-cert and --idp-key: make a throwaway pair at start (a CA and a "
        "leaf for 127.0.0.1 and localhost, valid for a day) and write ca.pem (what a client "
        "trusts), idp.crt and idp.key (0600) into DIR, created if missing",
    )
    idp.add_argument(
        "--idp-apps",
        metavar="FILE",
        help="the YAML file of tenants, apps, their secrets, certificates, federated "
        "credentials and roles",
    )


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m proxy.simulator``."""
    parser = argparse.ArgumentParser(
        prog="python -m proxy.simulator",
        description="Run a stand-in Defender API (answers chosen with the X-Simulate header).",
    )
    add_arguments(parser)
    return parser


def config_from_args(args: argparse.Namespace) -> SimConfig:
    """The simulator configuration the parsed options describe."""
    return SimConfig(
        limits=tuple(args.limit),
        count_rejected=args.count_rejected,
        per_identity=args.per_identity,
        check_tokens=args.check_tokens,
        check_bodies=args.check_bodies,
    )


def idp_from_args(args: argparse.Namespace) -> IdpSite | None:
    """The identity provider the parsed options ask for, or None; raises ``ValueError`` with
    every problem (a missing option, both TLS ways at once, each problem of the apps file; then a
    directory the throwaway pair cannot be written into)."""
    options = {
        "--idp-port": args.idp_port,
        "--idp-cert": args.idp_cert,
        "--idp-key": args.idp_key,
        "--idp-apps": args.idp_apps,
        "--idp-tls-dir": args.idp_tls_dir,
    }
    if all(value is None for value in options.values()):
        return None
    tls_dir: str | None = args.idp_tls_dir
    problems: list[str] = []
    if tls_dir is not None and (args.idp_cert is not None or args.idp_key is not None):
        given = [name for name in ("--idp-cert", "--idp-key") if options[name] is not None]
        problems.append(
            f"--idp-tls-dir makes the identity provider's TLS pair itself: give it or "
            f"--idp-cert and --idp-key, not both (got {' and '.join(['--idp-tls-dir', *given])})"
        )
    wanted = ["--idp-port"] + (["--idp-cert", "--idp-key"] if tls_dir is None else [])
    missing = [name for name in [*wanted, "--idp-apps"] if options[name] is None]
    if missing:
        alternative = (
            " (or --idp-tls-dir DIR in place of --idp-cert and --idp-key)"
            if tls_dir is None and args.idp_cert is None and args.idp_key is None
            else ""
        )
        problems.append(f"the identity provider also needs {', '.join(missing)}{alternative}")
    # Imported here: a simulator without an identity provider needs none of it.
    from proxy.simulator.directory import DirectoryError, load_directory
    from proxy.simulator.identity import IdpSite

    directory = None
    if args.idp_apps is not None:
        try:
            directory = load_directory(args.idp_apps)
        except DirectoryError as exc:
            problems.append(str(exc))
    cert, key = args.idp_cert, args.idp_key
    pair = None
    if tls_dir is not None and not problems:
        # Written last, once nothing else stops the start: a refused start writes nothing.
        from proxy.simulator.idp_tls import TlsPairError, write_pair

        try:
            pair = write_pair(tls_dir)
        except TlsPairError as exc:
            problems.append(f"--idp-tls-dir: {exc}")
        else:
            cert, key = str(pair.cert), str(pair.key)
    if problems:
        raise ValueError("\n".join(problems))
    if pair is not None:
        print(
            f"identity provider's throwaway CA (trust it): {pair.ca}, valid until "
            f"{pair.not_after:%Y-%m-%d %H:%M} UTC",
            flush=True,
        )
    # No problem: the apps file was read and the pair is named (given, or written above).
    assert directory is not None
    assert cert is not None
    assert key is not None
    return IdpSite(args.idp_port, cert, key, directory)


def main(argv: list[str] | None = None) -> int:
    """Run the simulator until SIGINT or SIGTERM; the exit status."""
    return run_from_args(build_parser().parse_args(argv))


def run_from_args(args: argparse.Namespace) -> int:
    """Run the simulator the parsed options describe; the exit status."""
    try:
        idp = idp_from_args(args)
    except ValueError as exc:
        print(f"simulator: {exc}", file=sys.stderr)
        return 2
    try:
        serve(args.host, args.port, config_from_args(args), idp)
    except OSError as exc:
        print(f"simulator: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
