"""``python -m migrator``: the console's operations, headless.

Each command calls one library function and turns its errors into one line on
stderr (no traceback, never a key). Keys come from the environment
(``MIGRATOR_SOURCE_KEY``, ``MIGRATOR_DEST_KEY``) or a hidden prompt, never from a
flag, so they stay out of shell history and process lists.

Exit codes: 0 success, 1 Cliniko refused or failed (401, 403, unreachable...),
2 bad input (a malformed key, a missing key, a bad option).
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
import sys
from collections.abc import Sequence

from pydantic import SecretStr

from migrator.cliniko.client import ClientConfig, ClinikoClient
from migrator.cliniko.keys import parse_key
from migrator.errors import ConfigError, MigratorError
from migrator.preview import preview

__all__ = ["main"]

SOURCE_KEY_ENV = "MIGRATOR_SOURCE_KEY"
DEST_KEY_ENV = "MIGRATOR_DEST_KEY"
RATE_ENV = "MIGRATOR_REQUESTS_PER_MINUTE"


def _read_key(env: str, what: str) -> SecretStr:
    value = os.environ.get(env)
    if value:
        return SecretStr(value)
    if not sys.stdin.isatty():
        raise ConfigError(f"No {what} API key: set {env} in the environment (keys are never taken as flags).")
    return SecretStr(getpass.getpass(f"{what.capitalize()} Cliniko API key (input hidden): "))


def _config() -> ClientConfig:
    raw = os.environ.get(RATE_ENV)
    if raw is None:
        return ClientConfig()
    try:
        return ClientConfig(requests_per_minute=float(raw))
    except ValueError:
        raise ConfigError(f"{RATE_ENV} must be a number of requests per minute; got {raw!r}.") from None


def _client(dest: bool) -> ClinikoClient:
    env, what = (DEST_KEY_ENV, "destination") if dest else (SOURCE_KEY_ENV, "source")
    key = parse_key(_read_key(env, what))
    return ClinikoClient(key, writable=False, config=_config())


def cmd_connect(args: argparse.Namespace) -> int:
    with _client(args.dest) as client:
        identity = client.identity()
    if args.json:
        print(json.dumps(identity.as_dict()))
        return 0
    rights = ", ".join(
        part
        for part, held in (
            ("administrator", identity.is_admin),
            ("active practitioner", identity.is_practitioner),
        )
        if held
    )
    print(f"Connected to {identity.account or 'the account'} on {identity.shard} ({identity.base_url})")
    print(f"as {identity.user} ({rights or 'neither administrator nor practitioner'}).")
    return 0


def cmd_preview(args: argparse.Namespace) -> int:
    with _client(False) as client:
        result = preview(client)
    if args.json:
        print(json.dumps(result.as_dict()))
        return 0
    width = max(len(name) for name in result.counts)
    for name, count in result.counts.items():
        print(f"{name:<{width}}  {count:>9,}")
    print(
        f"Reading everything takes {result.requests:,} requests: about {result.estimated_minutes} minutes "
        f"at {result.requests_per_minute:g} requests per minute."
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m migrator",
        description="Copy a clinic's data out of Cliniko. Keys are read from MIGRATOR_SOURCE_KEY / "
        "MIGRATOR_DEST_KEY or prompted for; MIGRATOR_API_URL overrides the API's URL template.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log each retry and wait to stderr")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    connect = commands.add_parser(
        "connect", help="verify a key: account, user, administrator and practitioner rights"
    )
    connect.add_argument("--dest", action="store_true", help="check the destination key (MIGRATOR_DEST_KEY)")
    connect.add_argument("--json", action="store_true", help="print one JSON object")
    connect.set_defaults(func=cmd_connect)

    prev = commands.add_parser("preview", help="count what a migration would read, and what that costs")
    prev.add_argument("--json", action="store_true", help="print one JSON object")
    prev.set_defaults(func=cmd_preview)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    if not args.verbose:
        logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except MigratorError as exc:  # APIError and the rest: Cliniko refused or failed
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted; nothing was changed.", file=sys.stderr)
        return 130
