"""``python -m migrator``: the console's operations, headless.

Each command calls one library function and turns its errors into one line on
stderr (no traceback, never a key). Keys come from the environment
(``MIGRATOR_SOURCE_KEY``, ``MIGRATOR_DEST_KEY``) or a hidden prompt, never from a
flag, so they stay out of shell history and process lists.

Exit codes: 0 success, 1 Cliniko refused or failed (401, 403, unreachable...) or, for
``reconcile``, something does not reconcile; 2 bad input (a malformed key, a missing key,
a bad option).
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr

from migrator.cliniko.client import ClientConfig, ClinikoClient
from migrator.cliniko.keys import parse_key
from migrator.errors import ConfigError, MappingError, MigratorError
from migrator.preview import preview
from migrator.workflow import DEFAULT_STORE, DEFAULT_WORKSPACE

if TYPE_CHECKING:  # the engine loads only for the commands that need it
    from migrator.engine import ProgressEvent

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


def cmd_mapping(args: argparse.Namespace) -> int:
    from migrator.mapping import save_mapping
    from migrator.workflow import auto_mapping, open_local_store, verify_source

    with _client(False) as client:
        verify_source(client)
        _, store = open_local_store(args.to, args.workspace)
        rows = auto_mapping(client, store)
    save_mapping(args.out, rows)
    unresolved = [r for r in rows if r.action == "unresolved"]
    print(f"Wrote {len(rows)} mapping rows to {args.out}; {len(unresolved)} need a decision before a run.")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from migrator.plan import Scope, parse_include
    from migrator.workflow import make_plan, open_local_store, run_plan, unfinished_batch, verify_source

    scope = Scope.parse(args.filter)
    include = parse_include(args.include) if args.include else None
    with _client(False) as client:
        identity = verify_source(client)
        ledger, store = open_local_store(args.to, args.workspace)
        plan = make_plan(
            client,
            identity,
            store,
            scope=scope,
            include=include,
            mappings=args.mapping,
            include_archived_patients=not args.no_archived_patients,
        )
        resume = unfinished_batch(ledger, plan)
        progress = _ProgressLine() if sys.stderr.isatty() and not args.json else None
        if resume and not args.json:
            print(f"Resuming batch {resume}.", file=sys.stderr)
        result = run_plan(plan, client, store, ledger, top_up=args.top_up, progress=progress)
        if progress:
            progress.finish()
    if args.json:
        print(json.dumps(result.as_dict()))
        return 0
    print(f"Batch {result.batch_id}: {result.requests:,} requests in {result.seconds:.1f} s.")
    if result.top_up is not None:
        saved = result.requests_saved
        baseline = result.top_up.baseline_requests
        if saved is None or baseline is None:
            cost = "."
        elif saved >= 0:
            cost = f": {saved:,} requests fewer than the full run's {baseline:,}."
        else:  # one request per list of changes, even where a whole list fits in one page
            cost = f": {-saved:,} requests more than the full run's {baseline:,}, as every list of this clinic fits in a page."
        print(
            f"A top-up of batch {result.top_up.of}, reading what changed since "
            f"{result.top_up.since:%Y-%m-%d %H:%M} UTC{cost}"
        )
    width = max(len(e) for e in result.entities)
    print(f"{'':<{width}}  {'in scope':>8} {'created':>8} {'linked':>8} {'present':>8} {'skipped':>8}")
    for entity, row in result.entities.items():
        print(
            f"{entity:<{width}}  {row['in_scope']:>8,} {row['created']:>8,} {row['linked']:>8,} "
            f"{row['already_present']:>8,} {row['skipped']:>8,}"
        )
    return 0


class _ProgressLine:
    """A one-line progress display on a terminal (stderr), quiet elsewhere."""

    def __init__(self) -> None:
        self._last = 0.0

    def __call__(self, event: ProgressEvent) -> None:
        import time

        now = time.monotonic()
        if now - self._last < 0.2 and event.done < event.total:
            return
        self._last = now
        width = 30
        filled = int(width * event.done / event.total) if event.total else width
        bar = "#" * filled + "-" * (width - filled)
        print(
            f"\r{event.stage:<26} [{bar}] {event.done:>7,}/{event.total:<7,} "
            f"created {event.created:,} linked {event.linked:,} present {event.already_present:,} "
            f"skipped {event.skipped:,}   ",
            end="",
            file=sys.stderr,
            flush=True,
        )

    def finish(self) -> None:
        print(file=sys.stderr)


def cmd_reconcile(args: argparse.Namespace) -> int:
    from migrator.destinations.local import LocalStore
    from migrator.ledger import Ledger
    from migrator.reconcile import reconcile

    ledger = Ledger(args.workspace)
    batch = ledger.batch(args.batch_id)
    if not batch.destination.startswith("sqlite:"):
        raise ConfigError(
            f"Batch {batch.id} went to {batch.destination}; only the local clinic store can be reconciled here."
        )
    store = LocalStore(LocalStore.parse_target(batch.destination), ledger)
    with _client(False) as client:
        identity = client.identity()
        if (identity.account or identity.user) != batch.source_account:
            raise ConfigError(
                f"The source key belongs to {identity.account or identity.user}, but batch {batch.id} was read "
                f"from {batch.source_account}; set {SOURCE_KEY_ENV} to that account's key."
            )
        result = reconcile(ledger, batch.id, source=client, store=store)
    files = result.write(args.out) if args.out else []
    if args.json:
        print(json.dumps(result.as_dict()))
        return 0 if result.ok else 1
    _print_reconciliation(result)
    if files:
        print(
            f"Wrote {len(files)} files to {args.out}: counts, balances, skipped, skipped_summary (CSV and Parquet)."
        )
    if result.ok:
        print("Everything reconciles.")
        return 0
    print("It does not reconcile:")
    for problem in result.problems:
        print(f"  - {problem}")
    return 1


def _print_reconciliation(result: Any) -> None:
    counts = result.counts
    width = max(len(e) for e in counts["entity"])
    headers = ("in scope", "created", "linked", "present", "skipped", "in dest", "diff", "source", "src diff")
    print(f"{'':<{width}}  " + " ".join(f"{h:>8}" for h in headers))
    for row in counts.iter_rows(named=True):
        cells = (
            row["in_scope"],
            row["created"],
            row["linked"],
            row["already_present"],
            row["skipped"],
            row["in_destination"],
            row["difference"],
            row["source_count"],
            row["source_difference"],
        )
        print(f"{row['entity']:<{width}}  " + " ".join(f"{'-' if c is None else f'{c:,}':>8}" for c in cells))
    diffs = result.balance_diffs
    print(
        f"Balances: {result.balances.height:,} patients checked against Cliniko's invoices; {diffs.height:,} differ."
    )
    for row in diffs.head(20).iter_rows(named=True):
        print(
            f"  {row['patient'] or 'patient'} ({row['patient_id']}): Cliniko {row['source_outstanding']}, "
            f"destination {row['destination_outstanding']}, difference {row['difference']:+}"
        )
    summary = result.skipped_summary
    reasons = ", ".join(
        f"{r['count']:,} {r['entity']} ({r['reason_code']})" for r in summary.iter_rows(named=True)
    )
    print(f"Skipped: {result.skipped.height:,} records" + (f": {reasons}." if reasons else "."))


def cmd_batches(args: argparse.Namespace) -> int:
    from migrator.ledger import Ledger

    ledger = Ledger(args.workspace)
    batches = ledger.batches()
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "id": b.id,
                        "created_at": b.created_at.isoformat(),
                        "status": b.status,
                        "source_account": b.source_account,
                        "destination": b.destination,
                        "counts": b.counts,
                        "deletable": b.deletable()[0],
                    }
                    for b in batches
                ]
            )
        )
        return 0
    if not batches:
        print("No batches yet.")
    for b in batches:
        allowed, why = b.deletable()
        print(
            f"{b.id}  {b.created_at:%Y-%m-%d %H:%M} UTC  {b.status:<10} {b.source_account} -> {b.destination}"
        )
        if not allowed and b.status != "deleted":
            print(f"    {why}")
    return 0


def cmd_delete_batch(args: argparse.Namespace) -> int:
    from migrator.batches import delete_batch, deletion_plan
    from migrator.workflow import open_local_store

    ledger, store = open_local_store(_batch_destination(args), args.workspace)
    plan = deletion_plan(ledger, store, args.batch_id)
    summary = plan.as_dict()
    print(f"Deleting batch {args.batch_id} removes {summary['total']:,} records:")
    for entity, n in summary["created"].items():
        print(f"  {entity}: {n:,} created by the batch")
    for entity, n in summary["created_since_for_its_patients"].items():
        print(f"  {entity}: {n:,} created since for the batch's patients (they go with their patients)")
    if args.dry_run:
        return 0
    if not args.yes:
        raise ConfigError("Deleting a batch cannot be undone: add --yes to confirm (try --dry-run first).")
    delete_batch(ledger, store, args.batch_id)
    print(f"Batch {args.batch_id} is deleted.")
    return 0


def _batch_destination(args: argparse.Namespace) -> str:
    from migrator.ledger import Ledger

    batch = Ledger(args.workspace).batch(args.batch_id)
    return batch.destination


def cmd_setup_store(args: argparse.Namespace) -> int:
    from migrator.setup import copy_clinic_setup
    from migrator.workflow import open_local_store

    with _client(True) as client:
        _, store = open_local_store(args.to, args.workspace)
        added = copy_clinic_setup(store, client)
    print("Set up " + ", ".join(f"{n} {entity}" for entity, n in added.items()) + f" in {store.describe()}.")
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

    def workspace(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--workspace",
            default=DEFAULT_WORKSPACE,
            metavar="DIR",
            help="where ledger.db lives (default ./workspace)",
        )

    mapping = commands.add_parser(
        "mapping", help="write the auto-matched mapping tables to a file for editing"
    )
    mapping.add_argument("--out", required=True, metavar="FILE", help="the JSON file to write")
    mapping.add_argument(
        "--to",
        default=DEFAULT_STORE,
        metavar="sqlite:PATH",
        help=f"the destination (default {DEFAULT_STORE})",
    )
    workspace(mapping)
    mapping.set_defaults(func=cmd_mapping)

    run = commands.add_parser("run", help="migrate (or resume an unfinished run of the same plan)")
    run.add_argument(
        "--to",
        default=DEFAULT_STORE,
        metavar="sqlite:PATH",
        help=f"the destination (default {DEFAULT_STORE})",
    )
    run.add_argument(
        "--filter", default="all", help="all, business:ID[,ID...] or practitioner:ID[,ID...] (default all)"
    )
    run.add_argument("--include", metavar="LIST", help="comma-separated data types (default: all of them)")
    run.add_argument(
        "--mapping", metavar="FILE", help="mapping tables from 'mapping --out' (default: auto-matched)"
    )
    run.add_argument("--no-archived-patients", action="store_true", help="leave archived patients out")
    run.add_argument(
        "--top-up",
        action="store_true",
        help="read only what changed since the plan's last completed batch (the sweep before go-live)",
    )
    run.add_argument("--json", action="store_true", help="print one JSON object")
    workspace(run)
    run.set_defaults(func=cmd_run)

    rec = commands.add_parser(
        "reconcile",
        help="check a batch: counts, per-patient balances and skipped records (exit 1 if they differ)",
    )
    rec.add_argument("batch_id", metavar="BATCH_ID")
    rec.add_argument(
        "--json", action="store_true", help='print {"counts": [...], "balance_diffs": [...], "skipped": N}'
    )
    rec.add_argument("--out", metavar="DIR", help="write each frame as CSV and Parquet into DIR")
    workspace(rec)
    rec.set_defaults(func=cmd_reconcile)

    batches = commands.add_parser("batches", help="list every batch with its status")
    batches.add_argument("--json", action="store_true", help="print JSON")
    workspace(batches)
    batches.set_defaults(func=cmd_batches)

    delete = commands.add_parser("delete-batch", help="delete what a batch created, within 48 hours")
    delete.add_argument("batch_id", metavar="ID")
    delete.add_argument("--dry-run", action="store_true", help="only list what would be deleted")
    delete.add_argument("--yes", action="store_true", help="confirm: deletion cannot be undone")
    workspace(delete)
    delete.set_defaults(func=cmd_delete_batch)

    setup = commands.add_parser(
        "setup-store",
        help="give the local store the destination account's practitioners and businesses (MIGRATOR_DEST_KEY)",
    )
    setup.add_argument("--to", default=DEFAULT_STORE, metavar="sqlite:PATH")
    workspace(setup)
    setup.set_defaults(func=cmd_setup_store)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    if not args.verbose:
        logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        return args.func(args)
    except (ConfigError, MappingError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except MigratorError as exc:  # APIError and the rest: Cliniko refused or failed
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted; nothing was changed.", file=sys.stderr)
        return 130
