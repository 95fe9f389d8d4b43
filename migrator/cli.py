"""``python -m migrator``: the console's operations, headless.

Each command calls one library function and turns its errors into one line on
stderr (no traceback, never a key). Keys come from the environment
(``MIGRATOR_SOURCE_KEY``, ``MIGRATOR_DEST_KEY``) or a hidden prompt, never from a
flag, so they stay out of shell history and process lists.

Exit codes: 0 success, 1 Cliniko refused or failed (401, 403, unreachable...) or, for
``reconcile``, something does not reconcile; 2 bad input (a malformed key, a missing key,
a bad option, a path the file system refuses).
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
import select
import signal
import sqlite3
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

from migrator.cliniko.pacing import pace_from_env
from migrator.errors import (
    ConfigError,
    MappingError,
    MigratorError,
    RetriableAPIError,
    database_refused,
    path_refused,
)
from migrator.workspace import DEFAULT_WORKSPACE, audit_mark, refuse_file

# The library (httpx, pydantic, polars, SQLite's helpers) loads only for the commands that need it, so
# that --help, and a bad option, answer at once.
if TYPE_CHECKING:
    from pydantic import SecretStr

    from migrator.cliniko.client import ClientConfig, ClinikoClient
    from migrator.engine import ProgressEvent
    from migrator.ledger import Ledger

__all__ = ["main"]

SOURCE_KEY_ENV = "MIGRATOR_SOURCE_KEY"
DEST_KEY_ENV = "MIGRATOR_DEST_KEY"
NOTE_KEYS_ENV = "MIGRATOR_NOTE_KEYS"


def _read_key(env: str, what: str) -> SecretStr:
    from pydantic import SecretStr

    value = os.environ.get(env)
    if value:
        return SecretStr(value)
    if not sys.stdin.isatty():
        raise ConfigError(f"No {what} API key: set {env} in the environment (keys are never taken as flags).")
    try:
        typed = _hidden_input(f"{what.capitalize()} Cliniko API key (input hidden): ")
    except EOFError:  # Ctrl+D at the prompt
        raise ConfigError(f"No {what} API key was typed: paste it at the prompt, or set {env}.") from None
    return SecretStr(typed)


def _hidden_input(prompt: str) -> str:
    """A line typed at ``prompt`` on the terminal without echo, as ``getpass`` reads it, but Ctrl+C stops it at once.

    Once polars is loaded, its threads leave SIGINT unblocked, so the kernel may hand Ctrl+C
    to one of them; Python runs the handler only when the main thread next runs Python code,
    which ``getpass``'s blocking read never lets it do. Reading in short waits does. The
    prompt's line is ended however the input ends, so what is said next has a line of its
    own. Ctrl+D on an empty line raises ``EOFError``. Where there is no terminal to open
    (or no ``termios``), ``getpass`` reads it.
    """
    try:
        import termios

        tty = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    except (ImportError, OSError):
        return _getpass_on_its_own_line(prompt)
    try:
        try:
            shown = termios.tcgetattr(tty)
        except termios.error:
            return _getpass_on_its_own_line(prompt)
        hidden = termios.tcgetattr(tty)
        hidden[3] &= ~termios.ECHO
        os.write(tty, prompt.encode())
        termios.tcsetattr(tty, termios.TCSAFLUSH, hidden)
        typed = b""
        try:
            while not typed.endswith(b"\n"):
                if select.select([tty], [], [], 0.1)[0]:  # a Ctrl+C's handler runs between waits
                    chunk = os.read(tty, 1024)
                    if not chunk:
                        raise EOFError
                    typed += chunk
        finally:
            termios.tcsetattr(tty, termios.TCSAFLUSH, shown)
            os.write(tty, b"\n")
        return typed.decode("utf-8", "replace").rstrip("\r\n")
    finally:
        os.close(tty)


def _getpass_on_its_own_line(prompt: str) -> str:
    """``getpass``, with the prompt's line ended on Ctrl+C or Ctrl+D (it ends it only for a typed line)."""
    try:
        return getpass.getpass(prompt)
    except (KeyboardInterrupt, EOFError):
        if sys.stderr.isatty():
            print(file=sys.stderr)
        raise


def _config() -> ClientConfig:
    from migrator.cliniko.client import ClientConfig

    return ClientConfig(requests_per_minute=pace_from_env())


def _client(dest: bool, *, writable: bool = False) -> ClinikoClient:
    from migrator.cliniko.client import ClinikoClient
    from migrator.cliniko.keys import parse_key

    env, what = (DEST_KEY_ENV, "destination") if dest else (SOURCE_KEY_ENV, "source")
    key = parse_key(_read_key(env, what), name=f"{what} API key")  # says which key, never the key itself
    return ClinikoClient(key, writable=writable and dest, config=_config())


def _note_clients() -> list[ClinikoClient]:
    """Writable clients of the extra destination practitioners' keys (``MIGRATOR_NOTE_KEYS``, comma-separated)."""
    from pydantic import SecretStr

    from migrator.cliniko.client import ClinikoClient
    from migrator.cliniko.keys import parse_key

    parts = [part.strip() for part in os.environ.get(NOTE_KEYS_ENV, "").split(",") if part.strip()]
    keys = []
    for n, part in enumerate(parts, 1):
        try:
            keys.append(parse_key(SecretStr(part)))
        except ConfigError as exc:  # which entry, never the key
            raise ConfigError(f"{NOTE_KEYS_ENV}, key {n} of {len(parts)}: {exc}") from None
    return [ClinikoClient(key, writable=True, config=_config()) for key in keys]


def _cliniko_destination(workspace: str, source: ClinikoClient | None, *, check: bool) -> tuple[Any, Any]:
    """The ledger and the Cliniko destination of ``MIGRATOR_DEST_KEY``; pre-flight first when ``check``.

    ``source`` (the source's client) is needed to copy attachments' files and for the pre-flight.
    """
    from migrator.destinations.cliniko import preflight
    from migrator.workflow import open_cliniko_destination

    ledger, dest = open_cliniko_destination(
        _client(True, writable=True), workspace, source=source, note_keys=_note_clients()
    )
    if check and source is not None:
        try:
            result = preflight(source, dest)
            result.raise_for_refusal()
        except MigratorError:
            ledger.close()
            raise
        for warning in result.warnings:
            print(f"warning: {warning}", file=sys.stderr)
    return ledger, dest


def _is_local(to: str | None) -> bool:
    """Whether ``--to`` names a local clinic store (the default) rather than ``cliniko``.

    Raises:
        ConfigError: it names neither (the sentence does not repeat it: it may be a key).
    """
    if to is None or to.strip().startswith("sqlite:"):  # the store judges the path
        return True
    if to.strip() == "cliniko":
        return False
    raise ConfigError(
        "--to takes sqlite:PATH, a local clinic store (for example sqlite:workspace/clinic.db), "
        f"or cliniko, the account of {DEST_KEY_ENV}."
    )


def _destination(args: argparse.Namespace, source: ClinikoClient, *, check: bool = True) -> tuple[Any, Any]:
    """``--to``: the local store (``sqlite:PATH``) or the Cliniko account of ``MIGRATOR_DEST_KEY`` (``cliniko``)."""
    from migrator.workflow import open_local_store

    if not _is_local(args.to):
        return _cliniko_destination(args.workspace, source, check=check)
    return open_local_store(args.to, args.workspace)


def _batch_store(
    workspace: str,
    batch_id: str,
    source: ClinikoClient | None = None,
    *,
    cliniko_only: str | None = None,
    admin_for: str | None = None,
) -> tuple[Any, Any]:
    """The ledger and the destination a batch wrote into (a Cliniko one needs ``MIGRATOR_DEST_KEY``).

    ``cliniko_only``: why the command makes no sense for a batch into the local clinic
    store, said (as a :class:`ConfigError`) when the batch is one. ``admin_for``: what
    the command does to a Cliniko account, which only its administrator may (seed 000):
    ``MIGRATOR_DEST_KEY``'s user is checked with Cliniko, now, before anything is read.
    """
    from migrator.workflow import current_destination, existing_ledger, open_local_store

    with existing_ledger(workspace, batch_id) as ledger:
        batch = ledger.batch(batch_id)
        if batch.destination.startswith("sqlite:"):
            if cliniko_only:
                raise ConfigError(
                    f"Batch {batch_id} went into the local clinic store, not a Cliniko account: {cliniko_only}"
                )
            # A copied workspace's own store, not the original's it still records.
            destination = current_destination(ledger, workspace, batch.destination)
    if batch.destination.startswith("sqlite:"):
        return open_local_store(destination, workspace)
    ledger, dest = _cliniko_destination(workspace, source, check=False)
    if dest.describe() != batch.destination:
        raise ConfigError(
            f"Batch {batch_id} wrote into Cliniko account {batch.destination.removeprefix('cliniko:')}, but "
            f"{DEST_KEY_ENV} belongs to account {dest.account_id}; set it to a key of that account."
        )
    if admin_for:
        identity = dest.client.identity()
        if not identity.is_admin:
            raise ConfigError(
                f"{DEST_KEY_ENV} belongs to {identity.user}, who is not an administrator of "
                f"{identity.account or 'the account'}; {admin_for} needs an administrator's key."
            )
    return ledger, dest


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
    from migrator.preview import preview

    if any(v is not None for v in (args.filter, args.include, args.to)) or args.no_archived_patients:
        return _preview_plan(args)
    with _client(False) as client:
        result = preview(client)
    if args.json:
        print(json.dumps(result.as_dict()))
        return 0
    width = max(len(name) for name in result.counts)
    for name, count in result.counts.items():
        print(f"{name:<{width}}  {count:>9,}")
    pace = _pace(result.estimated_minutes, result.requests_per_minute)
    print(f"Reading everything takes {result.requests:,} requests: {pace}.")
    return 0


def _pace(minutes: float, requests_per_minute: float) -> str:
    """How long reading takes at the key's pace, for the end of a preview's last sentence."""
    if requests_per_minute <= 0:
        return "unpaced, as fast as Cliniko answers"
    return f"about {minutes:g} minutes at {requests_per_minute:g} requests per minute"


def _preview_plan(args: argparse.Namespace) -> int:
    """``preview`` with a plan's options: what ``run`` with the same options would read, per data type."""
    from migrator.plan import Scope, parse_include
    from migrator.workflow import preview_plan

    local = _is_local(args.to)
    scope = Scope.parse(args.filter or "all")
    include = parse_include(args.include, local=local) if args.include is not None else None
    with _client(False) as client:
        result = preview_plan(
            client, scope, include, local=local, include_archived_patients=not args.no_archived_patients
        )
    approx = "" if result.exact else "≈ "
    transfer = None
    if not local:
        from migrator.destinations.cliniko import transfer_estimate

        transfer = transfer_estimate(result)
    if args.json:
        entities = {row.pop("entity"): row for row in result.frame.iter_rows(named=True)}
        print(
            json.dumps(
                {
                    "filter": str(scope),
                    "include": result.include,
                    "include_archived_patients": not args.no_archived_patients,
                    "entities": entities,
                    "records": result.records,
                    "requests": result.requests,
                    "estimated_minutes": result.estimated_minutes,
                    "exact": result.exact,
                    "transfer": transfer.as_dict() if transfer is not None else None,
                }
            )
        )
        return 0
    rows = list(result.frame.iter_rows(named=True))
    width = max(len(row["entity"]) for row in rows)
    print(f"{'':<{width}}  {'records':>9}  {'requests':>8}")
    for row in rows:
        mark = "" if row["exact"] else "≈ "
        print(
            f"{row['entity']:<{width}}  {mark + format(row['records'], ','):>9}  {row['requests']:>8,}  {row['how']}"
        )
    pace = _pace(result.estimated_minutes, result.requests_per_minute)
    print(f"Reading {approx}{result.records:,} records takes {approx}{result.requests:,} requests: {pace}.")
    if transfer is not None:
        print(
            f"Writing them into the Cliniko account takes {approx}{transfer.writes:,} requests on its key, one "
            f"a record (a file two, after its download from the source) and one for each of the {approx}"
            f"{result.follow_up_total:,} cancellations and archives, while the source is read; the whole "
            f"transfer: {_pace(transfer.minutes, result.requests_per_minute)}."
        )
    if not result.exact:
        print(
            "≈ marks estimates: which patients come across is known only once a run has read the appointments, "
            "invoices and notes in scope; the run reports the exact figures."
        )
    return 0


def cmd_mapping(args: argparse.Namespace) -> int:
    from migrator.mapping import save_mapping
    from migrator.workflow import auto_mapping, default_store, unmade_if_refused, verify_source

    if Path(args.out).is_file() and not args.force:  # before any request: it may hold a person's decisions
        raise ConfigError(
            f"{args.out} already exists, perhaps with decisions made in it: add --force to write over it, "
            "or choose another --out."
        )
    # It only reads the destination: a workspace (or store) it had to make to do so goes again.
    local_store = (args.to or default_store(args.workspace)) if _is_local(args.to) else None
    with unmade_if_refused(args.workspace, local_store, reading_only=True), _client(False) as client:
        verify_source(client)
        ledger, store = _destination(args, client, check=False)
        with closing(ledger):
            rows = auto_mapping(client, store)
    save_mapping(args.out, rows)
    unresolved = [r for r in rows if r.action == "unresolved"]
    print(f"Wrote {len(rows)} mapping rows to {args.out}; {len(unresolved)} need a decision before a run.")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from migrator.plan import Scope, parse_include
    from migrator.workflow import (
        default_store,
        make_plan,
        run_plan,
        unfinished_batch,
        unmade_if_refused,
        verify_source,
    )

    scope = Scope.parse(args.filter)
    include = parse_include(args.include, local=_is_local(args.to)) if args.include is not None else None
    # Some refusals need the ledger or Cliniko (a filter id, a top-up of nothing): what they made goes again.
    local_store = (args.to or default_store(args.workspace)) if _is_local(args.to) else None
    with unmade_if_refused(args.workspace, local_store), _client(False) as client:
        identity = verify_source(client)
        ledger, store = _destination(args, client)
        with closing(ledger):  # closed before a refused run's new files go
            plan = make_plan(
                client,
                identity,
                store,
                scope=scope,
                include=include,
                mappings=args.mapping,
                include_archived_patients=not args.no_archived_patients,
                ledger=ledger,
                top_up=args.top_up,
            )
            resume = unfinished_batch(ledger, plan)
            progress = _ProgressLine() if sys.stderr.isatty() and not args.json else None
            if resume and not args.json:
                print(f"Resuming batch {resume}.", file=sys.stderr)
            try:
                result = run_plan(plan, client, store, ledger, top_up=args.top_up, progress=progress)
            finally:
                if progress:
                    progress.finish()  # the line ends, so a message after it starts on its own
            skips = _skipped_sentence(ledger, result.batch_id) if not args.json else None
    if args.json:
        print(json.dumps(result.as_dict()))
        return 0
    written = (
        f" to the source and {result.destination_requests:,} to the destination"
        if result.destination_requests is not None
        else ""
    )
    print(f"Batch {result.batch_id}: {result.requests:,} requests{written} in {result.seconds:.1f} s.")
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
    if result.updated:
        print(_updated_sentence(result.updated, result.batch_id))
    if skips:
        print(skips)
    return 0


def _updated_sentence(updated: dict[str, int], batch_id: str) -> str:
    """How many present records the batch rewrote in place, by entity, and where each is listed."""
    from migrator.plan import records_of

    listed = ", ".join(records_of(e, n) for e, n in sorted(updated.items(), key=lambda kv: (-kv[1], kv[0])))
    return (
        f"Updated in place {records_of('records', sum(updated.values()))} an earlier batch brought ({listed}): "
        "changed in Cliniko since, edited here, or given another mapping. "
        f"`python -m migrator reconcile {batch_id} --out DIR` lists each with why (updated.csv)."
    )


def _skipped_sentence(ledger: Ledger, batch_id: str) -> str | None:
    """What the batch skipped, by reason, and where each record's sentence is; ``None`` if nothing."""
    import polars as pl

    from migrator.reconcile import skipped_summary

    summary = skipped_summary(ledger, batch_id)
    if summary.is_empty():
        return None
    by_reason = summary.group_by("reason_code", maintain_order=True).agg(pl.col("count").sum())
    reasons = ", ".join(f"{n:,} {code or 'other'}" for code, n in by_reason.iter_rows())
    return (
        f"Skipped {int(by_reason['count'].sum()):,} ({reasons}): `python -m migrator reconcile {batch_id} --out DIR` "
        "writes each with its reason (skipped.csv)."
    )


class _TerminalLine:
    """One line redrawn in place on a terminal (stderr), at most five times a second until the last."""

    def __init__(self) -> None:
        self._last = 0.0
        self._shown = False

    def _show(self, text: str, *, last: bool) -> None:
        import time

        now = time.monotonic()
        if now - self._last < 0.2 and not last:
            return
        self._last, self._shown = now, True
        print(f"\r{text}", end="", file=sys.stderr, flush=True)

    def finish(self) -> None:
        """End the line, if one was drawn."""
        if self._shown:
            print(file=sys.stderr)

    @staticmethod
    def _bar(done: int, total: int, width: int = 30) -> str:
        """``[#####-----]``: ``done`` out of ``total`` (full when there is nothing to do)."""
        filled = int(width * done / total) if total else width
        return f"[{'#' * filled}{'-' * (width - filled)}]"


class _ProgressLine(_TerminalLine):
    """A run's progress: the stage, a bar and its counts."""

    def __call__(self, event: ProgressEvent) -> None:
        self._show(
            f"{event.stage:<26} {self._bar(event.done, event.total)} {event.done:>7,}/{event.total:<7,} "
            f"created {event.created:,} linked {event.linked:,} present {event.already_present:,} "
            f"skipped {event.skipped:,}   ",
            last=event.done >= event.total,
        )


class _DeletionLine(_TerminalLine):
    """``delete-batch``: the records removed so far (a Cliniko account's go at the key's pace)."""

    def __call__(self, entity: str, removed: int, total: int) -> None:
        self._show(
            f"deleting {entity:<24} {self._bar(removed, total)} {removed:>9,}/{total:<9,}",
            last=removed >= total,
        )


class _InvoiceLine(_TerminalLine):
    """``reconcile`` reading the source's invoices (minutes for a large clinic at Cliniko's pace)."""

    def __call__(self, read: int, listed: int) -> None:
        self._show(
            f"Reading the source's invoices for the balances: {read:,} of {listed:,}", last=read >= listed
        )


def cmd_reconcile(args: argparse.Namespace) -> int:
    from migrator.reconcile import reconcile
    from migrator.workflow import require_batch_source

    with _client(False) as client:
        ledger, store = _batch_store(args.workspace, args.batch_id, client)
        batch = ledger.batch(args.batch_id)
        require_batch_source(
            ledger,
            batch,
            client.identity(),
            key="The source key",
            fix=f"set {SOURCE_KEY_ENV} to that account's key",
        )
        reading = _InvoiceLine() if sys.stderr.isatty() and not args.json else None
        try:
            result = reconcile(ledger, batch.id, source=client, store=store, progress=reading)
        finally:
            if reading:
                reading.finish()
    files = result.write(args.out) if args.out else []
    if args.json:
        print(json.dumps(result.as_dict()))
        return 0 if result.ok else 1
    _print_reconciliation(result, batch, out=args.out)
    if files:
        names = ", ".join(dict.fromkeys(f.stem for f in files))
        print(f"Wrote {len(files)} files to {args.out}: {names} (CSV and Parquet).")
    if result.ok:
        print("Everything reconciles.")
        return 0
    print("It does not reconcile:")
    for problem in result.problems:
        print(f"  - {problem}")
    return 1


def _print_reconciliation(result: Any, batch: Any, *, out: Any = None) -> None:
    from migrator.plan import records_of
    from migrator.reconcile import REMOVED_SINCE_WHY, by_reason

    counts = result.counts
    width = max(len(e) for e in counts["entity"])
    headers = (
        "in scope", "created", "linked", "present", "skipped", "removed", "in dest", "diff", "source", "src diff"
    )  # fmt: skip
    print(f"{'':<{width}}  " + " ".join(f"{h:>8}" for h in headers))
    for row in counts.iter_rows(named=True):
        cells = (
            row["in_scope"],
            row["created"],
            row["linked"],
            row["already_present"],
            row["skipped"],
            row["removed_since"],
            row["in_destination"],
            row["difference"],
            row["source_count"],
            row["source_difference"],
        )
        print(f"{row['entity']:<{width}}  " + " ".join(f"{'-' if c is None else f'{c:,}':>8}" for c in cells))
    where = f" in {out}" if out else " with --out"
    removed = int(counts["removed_since"].fill_null(0).sum())
    if removed:
        print(
            f"Removed since: {records_of('records', removed)} the batch created, linked or found already present "
            f"{'is' if removed == 1 else 'are'} no longer expected in the destination ({REMOVED_SINCE_WHY}: "
            "running the plan again brings back what a deletion took, and the balances it held)."
        )
    diffs = result.balance_diffs
    if "invoices" in (batch.plan.get("include") or ()):
        print(
            f"Balances: {result.balances.height:,} patients checked against Cliniko's invoices; "
            f"{diffs.height:,} differ."
        )
    elif batch.destination.startswith("cliniko:"):
        print(
            "Balances: not compared, as a Cliniko account cannot take invoices; "
            f"`opening-balances {batch.id}` lists what each patient owes."
        )
    else:
        print("Balances: not compared, as the batch's plan does not include invoices.")
    for row in diffs.head(20).iter_rows(named=True):
        print(
            f"  {row['patient'] or 'patient'} ({row['patient_id']}): Cliniko {row['source_outstanding']}, "
            f"destination {row['destination_outstanding']}, difference {row['difference']:+}"
        )
    reasons = _listed(result.skipped_summary)
    print(f"Skipped: {result.skipped.height:,} records" + (f": {reasons}." if reasons else "."))
    if result.flagged.height:
        print(
            f"Flagged for review: {result.flagged.height:,} records in the destination: "
            f"{_listed(by_reason(result.flagged))} (see flagged.csv{where})."
        )
    if result.updated.height:
        print(
            f"Updated in place: {result.updated.height:,} records an earlier batch brought: "
            f"{_listed(by_reason(result.updated))} (see updated.csv{where})."
        )


def _listed(summary: Any) -> str:
    """A count-by-reason frame as ``12 patients (invalid), 3 invoices (...)``."""
    return ", ".join(
        f"{r['count']:,} {r['entity']} ({r['reason_code']})" for r in summary.iter_rows(named=True)
    )


def cmd_batches(args: argparse.Namespace) -> int:
    from migrator.batches import deletable
    from migrator.ledger import Ledger
    from migrator.workflow import claim_copied_batches

    refuse_file(args.workspace)  # said as run says it
    if not Ledger.file_in(args.workspace).exists():  # listing makes no workspace
        print("[]" if args.json else f"No batches yet: {args.workspace} holds no ledger (ledger.db).")
        return 0
    ledger = Ledger(args.workspace)
    claim_copied_batches(ledger, args.workspace)  # a fresh copy lists its own store, not the original's
    batches = ledger.batches(current_counts=True)
    verdicts = {b.id: deletable(ledger, b) for b in batches}
    top_ups = ledger.top_ups()
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "id": b.id,
                        "created_at": b.created_at.isoformat(),
                        "status": b.status,
                        "kind": "top-up" if b.id in top_ups else "full",
                        "source_account": b.source_account,
                        "destination": b.destination,
                        "counts": b.counts,
                        "deletable": verdicts[b.id][0],
                        "why": verdicts[b.id][1],
                    }
                    for b in batches
                ]
            )
        )
        return 0
    if not batches:
        print("No batches yet.")
    said: dict[str, str] = {}  # a sentence said once (a copy's shared store: the same for every batch)
    for b in batches:
        allowed, why = verdicts[b.id]
        print(
            f"{b.id}  {b.created_at:%Y-%m-%d %H:%M} UTC  {b.state:<11} "
            f"{'top-up' if b.id in top_ups else 'full':<6}  {b.source_account} -> {b.destination}"
        )
        if not allowed and b.status != "deleted":
            print(f"    {why}" if why not in said else f"    As for {said[why]} above.")
            said.setdefault(why, b.id)
    return 0


def cmd_delete_batch(args: argparse.Namespace) -> int:
    from migrator.batches import BatchNotDeletable, DeletionPlan, delete_batch, deletion_plan
    from migrator.plan import records_of

    ledger, store = _batch_store(args.workspace, args.batch_id, admin_for="deleting a batch")
    allowed, why = ledger.batch(args.batch_id).deletable()
    if not allowed:  # too old, deleted or running: no plan to show (nor an account to read for one)
        raise BatchNotDeletable(why)
    archived = (
        ""
        if store.describe().startswith("sqlite:")
        else " (patients are archived: Cliniko's API cannot delete them)"
    )

    def show(plan: DeletionPlan) -> None:
        # A reader gone early (`| head`) does not stop a deletion confirmed with --yes: it ends quietly after.
        try:
            say(plan)
        except BrokenPipeError:
            if not (args.yes and not args.dry_run):
                raise

    def say(plan: DeletionPlan) -> None:
        summary = plan.as_dict()
        if not summary["total"] and not summary["unanswered_creates"]:
            print(
                f"Deleting batch {args.batch_id} removes no record: it created nothing that is still there, and is "
                "only marked deleted in the ledger."
            )
        else:
            print(
                f"Deleting batch {args.batch_id} removes {records_of('records', summary['total'])}{archived}:"
            )
        for entity, n in summary["created"].items():
            print(f"  {entity}: {n:,} created by the batch")
        for entity, n in summary["created_since_for_its_patients"].items():
            print(f"  {entity}: {n:,} created since for the batch's patients (they go with their patients)")
        for note in (plan.already_deleted_note, plan.matched_note, plan.found_by_later_note):
            if note:
                print(note)

    if args.yes and not args.dry_run:
        # The plan delete_batch makes and then follows is the one shown: planned once, as
        # for a Cliniko destination a plan reads the account. A blocked plan is shown, then refused.
        progress = _DeletionLine() if sys.stderr.isatty() else None
        try:
            delete_batch(ledger, store, args.batch_id, show=show, progress=progress)
        finally:
            if progress:
                progress.finish()
        print(f"Batch {args.batch_id} is deleted.")
        return 0
    plan = deletion_plan(ledger, store, args.batch_id)
    show(plan)
    if plan.blocker:  # refused, dry run or not: exit 1 with the reason, as for a batch too old
        raise BatchNotDeletable(plan.blocker)
    if args.dry_run:
        return 0
    raise ConfigError("Deleting a batch cannot be undone: add --yes to confirm (try --dry-run first).")


def cmd_preflight(args: argparse.Namespace) -> int:
    from migrator.destinations.cliniko import preflight

    with _client(False) as client:
        _, dest = _cliniko_destination(args.workspace, client, check=False)
        result = preflight(client, dest)
    if args.json:
        print(json.dumps(result.as_dict()))
    else:
        print(f"Destination {dest.account_name or dest.account_id} holds {result.holds()}.")
        for warning in result.warnings:
            print(f"warning: {warning}")
        for refusal in result.refusals:
            print(f"refused: {refusal}")
        if result.ok:
            print("Pre-flight passed: the transfer may run.")
    return 0 if result.ok else 2


def cmd_go_live(args: argparse.Namespace) -> int:
    from migrator.destinations.cliniko import go_live

    ledger, dest = _batch_store(
        args.workspace,
        args.batch_id,
        cliniko_only="going live turns reminders back on in Cliniko, and the local store sends none.",
        admin_for="going live",
    )
    if not args.yes:
        raise ConfigError(
            "Going live turns each transferred patient's reminders and confirmations back on: add --yes to confirm."
        )
    result = go_live(ledger, dest, args.batch_id)
    print(
        f"Batch {args.batch_id}: reminder and confirmation preferences restored for {result.restored:,} patients"
        + (f" ({result.already:,} already were)" if result.already else "")
        + (f"; {len(result.gone):,} patients are no longer in the destination" if result.gone else "")
        + "."
    )
    return 0


def cmd_opening_balances(args: argparse.Namespace) -> int:
    from migrator.opening_balance import opening_balances

    with _client(False) as client:
        ledger, dest = _batch_store(
            args.workspace,
            args.batch_id,
            client,
            cliniko_only=f"the store keeps the invoices themselves, with what is outstanding "
            f"(reconcile {args.batch_id} compares the balances with the source).",
        )
        frame = opening_balances(ledger, args.batch_id, source=client, destination=dest)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "wb") as out:  # a refusal names the path (Polars' own does not)
            frame.write_csv(out)
    if args.json:
        print(json.dumps([{**r, "outstanding": str(r["outstanding"])} for r in frame.to_dicts()]))
        return 0
    total = frame["outstanding"].sum() if frame.height else 0
    print(
        f"{frame.height:,} patients have an opening balance, {total} in all"
        + (f"; written to {args.out}." if args.out else ".")
    )
    return 0


def cmd_setup_store(args: argparse.Namespace) -> int:
    from migrator.setup import copy_clinic_setup
    from migrator.workflow import open_local_store, unmade_if_refused

    # A refused key or Ctrl+C before anything is set up: the new workspace's files go again.
    with unmade_if_refused(args.workspace, _setup_target(args)), _client(True) as client:
        ledger, store = open_local_store(args.to, args.workspace)
        with closing(ledger), closing(store):
            added = copy_clinic_setup(store, client)
    if not added:
        print(
            f"Nothing to set up: {store.describe()} already has its businesses, practitioners and appointment types."
        )
        return 0
    print("Set up " + ", ".join(f"{n} {entity}" for entity, n in added.items()) + f" in {store.describe()}.")
    return 0


VERBOSE = "log each retry and wait to stderr"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m migrator",
        description="Copy a clinic's data out of Cliniko. Keys are read from MIGRATOR_SOURCE_KEY / "
        "MIGRATOR_DEST_KEY or prompted for; MIGRATOR_API_URL overrides the API's URL template.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help=VERBOSE)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    connect = commands.add_parser(
        "connect", help="verify a key: account, user, administrator and practitioner rights"
    )
    connect.add_argument("--dest", action="store_true", help="check the destination key (MIGRATOR_DEST_KEY)")
    connect.add_argument("--json", action="store_true", help="print one JSON object")
    connect.set_defaults(func=cmd_connect)

    prev = commands.add_parser(
        "preview",
        help="count what a migration would read, and what that costs",
        description="Count what a migration would read, and what that costs at the key's pace. Without options, "
        "every list of the account; with any of run's plan options (--filter, --include, --no-archived-patients, "
        "--to), what run with the same options reads, per data type, estimating (≈) what a filter only settles "
        "during the run.",
    )

    def plan_options(p: argparse.ArgumentParser, *, filter_default: str | None) -> None:
        """``--filter``, ``--include`` and ``--no-archived-patients``, as ``run`` and ``preview`` read them."""
        p.add_argument(
            "--filter",
            default=filter_default,
            help="all, business:ID[,ID...] or practitioner:ID[,ID...]"
            + (f" (default {filter_default})" if filter_default else ""),
        )
        p.add_argument("--include", metavar="LIST", help="comma-separated data types (default: all of them)")
        p.add_argument("--no-archived-patients", action="store_true", help="leave archived patients out")

    plan_options(prev, filter_default=None)
    prev.add_argument(
        "--to",
        metavar="sqlite:PATH|cliniko",
        help="the run's destination, for the data types it takes (a Cliniko account takes no invoices); "
        "nothing is opened",
    )
    prev.add_argument("--json", action="store_true", help="print one JSON object")
    prev.set_defaults(func=cmd_preview)

    def workspace(p: argparse.ArgumentParser, *, with_store: bool = False) -> None:
        p.add_argument(
            "--workspace",
            default=DEFAULT_WORKSPACE,
            metavar="DIR",
            help="where ledger.db lives (default ./workspace)"
            + (", and clinic.db unless --to says otherwise" if with_store else ""),
        )

    def to(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--to",
            metavar="sqlite:PATH|cliniko",
            help="the destination: a local clinic store (default sqlite:DIR/clinic.db in --workspace DIR) or "
            f"'cliniko', the account of "
            f"{DEST_KEY_ENV} (extra practitioners' keys for notes' authors in {NOTE_KEYS_ENV})",
        )

    mapping = commands.add_parser(
        "mapping", help="write the auto-matched mapping tables to a file for editing"
    )
    mapping.add_argument("--out", required=True, metavar="FILE", help="the JSON file to write")
    mapping.add_argument("--force", action="store_true", help="write over FILE if it exists")
    to(mapping)
    workspace(mapping, with_store=True)
    mapping.set_defaults(func=cmd_mapping)

    run = commands.add_parser("run", help="migrate (or resume an unfinished run of the same plan)")
    to(run)
    plan_options(run, filter_default="all")
    run.add_argument(
        "--mapping",
        metavar="FILE",
        help="mapping tables from 'mapping --out' (default: the mapping of the last batch with the same "
        "filter and data types, else auto-matched)",
    )
    run.add_argument(
        "--top-up",
        action="store_true",
        help="read only what changed since the plan's last completed batch (the sweep before go-live)",
    )
    run.add_argument("--json", action="store_true", help="print one JSON object")
    workspace(run, with_store=True)
    run.set_defaults(func=cmd_run)

    rec = commands.add_parser(
        "reconcile",
        help="check a batch: counts, per-patient balances and skipped records (exit 1 if they differ)",
    )
    rec.add_argument("batch_id", metavar="BATCH_ID")
    rec.add_argument(
        "--json",
        action="store_true",
        help='print {"batch_id", "reconciled": true|false, "counts": [...], "missing": [...], '
        '"balances_checked": N, "balance_diffs": [...], "moved_invoices": [...], "skipped": N, "flagged": N, "updated": N, "problems": [...]}',
    )
    rec.add_argument("--out", metavar="DIR", help="write each frame as CSV and Parquet into DIR")
    workspace(rec)
    rec.set_defaults(func=cmd_reconcile)

    batches = commands.add_parser(
        "batches", help="list every batch with its status, and why one cannot be deleted now"
    )
    batches.add_argument(
        "--json",
        action="store_true",
        help='print [{"id", "created_at", "status", "source_account", "destination", "counts", "deletable", "why"}]',
    )
    workspace(batches)
    batches.set_defaults(func=cmd_batches)

    delete = commands.add_parser(
        "delete-batch",
        help="delete what a batch created, within 48 hours",
        description="Delete what a batch created, within 48 hours of its start. Refused while other records "
        "rely on what it created: a later batch's, or (in a Cliniko account, read with its key first) ones the "
        "clinic made there by hand since.",
    )
    delete.add_argument("batch_id", metavar="ID")
    delete.add_argument(
        "--dry-run",
        action="store_true",
        help="only list what would be deleted (or say why the batch cannot be)",
    )
    delete.add_argument("--yes", action="store_true", help="confirm: deletion cannot be undone")
    workspace(delete)
    delete.set_defaults(func=cmd_delete_batch)

    pre = commands.add_parser(
        "preflight",
        help=f"check a Cliniko-to-Cliniko transfer before it runs ({SOURCE_KEY_ENV} and {DEST_KEY_ENV}); exit 2 if refused",
    )
    pre.add_argument("--json", action="store_true", help="print one JSON object")
    workspace(pre)
    pre.set_defaults(func=cmd_preflight)

    live = commands.add_parser(
        "go-live",
        help="turn a Cliniko transfer's patients' reminders and confirmations back on (their own preferences)",
    )
    live.add_argument("batch_id", metavar="BATCH_ID")
    live.add_argument("--yes", action="store_true", help="confirm: patients may be messaged from then on")
    workspace(live)
    live.set_defaults(func=cmd_go_live)

    bal = commands.add_parser(
        "opening-balances",
        help="what each transferred patient owes by the source's invoices (Cliniko cannot import financials); "
        "reads both accounts (MIGRATOR_SOURCE_KEY and MIGRATOR_DEST_KEY)",
    )
    bal.add_argument("batch_id", metavar="BATCH_ID")
    bal.add_argument("--out", metavar="FILE", help="write the report as CSV")
    bal.add_argument("--json", action="store_true", help="print JSON")
    workspace(bal)
    bal.set_defaults(func=cmd_opening_balances)

    setup = commands.add_parser(
        "setup-store",
        help="give the local store the destination account's practitioners and businesses (MIGRATOR_DEST_KEY)",
    )
    setup.add_argument(
        "--to",
        metavar="sqlite:PATH",
        help="the local clinic store (default sqlite:DIR/clinic.db in --workspace DIR)",
    )
    workspace(setup, with_store=True)
    setup.set_defaults(func=cmd_setup_store)
    for command in commands.choices.values():  # -v after the command too; left unset there, not False
        command.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    if not args.verbose:
        logging.getLogger("httpx").setLevel(logging.WARNING)
    writing = args.command in _WRITING and not getattr(args, "dry_run", False)
    recorded: object | None = None  # Ctrl+C before it is taken: said as part-way, to be safe
    try:
        with _second_interrupt_quits(writing=writing):
            recorded = _recorded_so_far(args)
            return args.func(args)
    except (ConfigError, MappingError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except MigratorError as exc:  # APIError and the rest: Cliniko refused or failed
        again = ""
        if isinstance(exc, RetriableAPIError) and args.command in _WRITING:  # Cliniko down, not a refusal
            again = (
                " What was done so far is kept and recorded: run the same command again to go on from there."
            )
        print(f"error: {exc}{again}", file=sys.stderr)
        return 1
    except sqlite3.DatabaseError as exc:  # a ledger or store not as the ledger left it: no traceback either
        refused = database_refused(exc)
        if refused is not None:  # a permission to give, not a damaged file
            print(f"error: {refused}", file=sys.stderr)
            return 2
        print(
            f"error: SQLite refused the command ({str(exc).rstrip('.')}): the ledger or the clinic store is not as "
            "the ledger left it (edited by hand, or put back from a copy?). What was committed before stays.",
            file=sys.stderr,
        )
        return 1
    except BrokenPipeError:  # what reads stdout stopped early (`| head`): what the command did stands
        with suppress(OSError, ValueError):  # stdout may be no file at all (a notebook's)
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush is quiet
        return 141  # as a shell reports a command ended by SIGPIPE
    except OSError as exc:  # a path the file system refuses: --out, --workspace, --to sqlite:PATH
        print(f"error: {path_refused(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if writing and _changed_since(args, recorded):
            print(
                "error: interrupted part-way; what was done so far is kept and recorded: run the same "
                "command again to finish it.",
                file=sys.stderr,
            )
        else:
            print("error: interrupted; nothing was changed.", file=sys.stderr)
        return 130


#: Commands that write (a store, an account, the ledger): Ctrl+C leaves them part-way, to finish.
_WRITING = frozenset({"run", "delete-batch", "go-live", "setup-store"})
#: Writing commands that write nothing before the ledger's audit trail says so (a batch made,
#: resumed or set deleting): Ctrl+C before that has changed nothing.
_AUDITED_FIRST = frozenset({"run", "delete-batch"})


def _setup_target(args: argparse.Namespace) -> str:
    """The store ``setup-store`` writes: ``--to``, or the workspace's own (as ``default_store`` names it)."""
    return args.to or f"sqlite:{Path(args.workspace) / 'clinic.db'}"


def _recorded_so_far(args: argparse.Namespace) -> object | None:
    """What tells whether the command has changed anything yet (``None``: it cannot be told).

    For a command in :data:`_AUDITED_FIRST`, the workspace ledger's last audit line. For
    ``setup-store``, the store file's size and modification time (``"absent"``): it writes
    no audit line, each commit rewrites the file, and a new one is taken back when stopped.
    """
    if args.command == "setup-store":
        _, _, path = _setup_target(args).partition(":")
        try:
            stat = os.stat(path.strip())
        except FileNotFoundError:
            return "absent"
        except OSError:
            return None
        return (stat.st_size, stat.st_mtime_ns)
    if args.command not in _AUDITED_FIRST:
        return None
    mark = audit_mark(args.workspace)
    return None if mark < 0 else mark


def _changed_since(args: argparse.Namespace, recorded: object | None) -> bool:
    """Whether the command has changed anything since :func:`_recorded_so_far` gave ``recorded``.

    For a command in :data:`_AUDITED_FIRST`, a line another process wrote in the same
    workspace meanwhile is not this command's: only a line this process wrote after
    ``recorded`` (:func:`~migrator.ledger.audited_here`) says it changed something.
    """
    if recorded is None:  # it could not be told: said as part-way, to be safe
        return True
    if _recorded_so_far(args) == recorded:
        return False
    if args.command not in _AUDITED_FIRST:
        return True
    ledger = sys.modules.get("migrator.ledger")  # not loaded yet: this process has written no line
    mine = ledger.audited_here(Path(args.workspace) / "ledger.db") if ledger is not None else 0
    return isinstance(recorded, int) and mine > recorded


#: Seconds within which a second SIGINT is the first one again: a signal sent to the whole process group
#: (as a job runner stops a command) reaches both `uv run` and this process, and uv passes its copy on.
_SAME_INTERRUPT = 0.5


@contextmanager
def _second_interrupt_quits(*, writing: bool) -> Iterator[None]:
    """Ctrl+C stops the command cleanly; Ctrl+C again while it is stopping quits at once.

    The first Ctrl+C raises ``KeyboardInterrupt`` as usual: a run records that it was
    stopped and where it got to, and the reader threads are closed. Pressed again during
    that (or while the interpreter waits for a reader's last request), Python would print
    a traceback from whichever thread it landed in; instead the process ends there with
    exit 130, as a SIGKILL would end it. What was committed stays (SQLite rolls back a
    half-written page when the database is next opened), and the same command resumes.

    A second SIGINT within half a second of the first is taken as the same one: sent to the
    process group, it reaches ``uv run`` too, which passes its copy on.

    The handler stays in place after a first Ctrl+C, until the process exits; a command
    that ends without one puts the previous handler back (tests call :func:`main` in-process).
    Outside the main thread, where handlers cannot be set, Python's own behaviour stands; so
    it does in a process started with Ctrl+C ignored (a job a script put in the background).
    """
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    ):
        yield
        return

    first_at: list[float] = []

    def again(signum: int, frame: object) -> None:
        if time.monotonic() - first_at[0] < _SAME_INTERRUPT:  # the same Ctrl+C, passed on by `uv run`
            return
        left = (
            "what was written is kept: run the same command again to finish it"
            if writing
            else "nothing was changed"
        )
        os.write(2, f"\nerror: interrupted again, so stopped at once; {left}.\n".encode())
        os._exit(130)

    def first(signum: int, frame: object) -> None:
        first_at.append(time.monotonic())
        signal.signal(signal.SIGINT, again)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, first)
    try:
        yield
    finally:
        if signal.getsignal(signal.SIGINT) is first:
            signal.signal(signal.SIGINT, previous)
