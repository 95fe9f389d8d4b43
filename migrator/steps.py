"""The short public API a notebook or a script drives, step by step, as the console does.

>>> import migrator
>>> source = migrator.connect()                              # doctest: +SKIP
>>> migrator.preview(source).counts["patients"]              # doctest: +SKIP
412
>>> migrator.scoped_preview(source, scope="business:7").frame  # doctest: +SKIP
>>> table = migrator.mapping(source, to="sqlite:clinic.db")  # doctest: +SKIP
>>> result = migrator.run(source, to="sqlite:clinic.db", mapping=table)        # doctest: +SKIP
>>> check = migrator.reconcile(result.batch_id, source=source)                 # doctest: +SKIP
>>> check.ok, check.balance_diffs                                              # doctest: +SKIP
>>> later = migrator.run(source, to="sqlite:clinic.db", mapping=table, top_up=True)  # doctest: +SKIP
>>> migrator.batches()                                                         # doctest: +SKIP
>>> migrator.delete_batch(later.batch_id, dry_run=True).total                  # doctest: +SKIP

Each function opens the workspace's ledger and the store for its own use and closes
them again; errors are :class:`~migrator.errors.MigratorError` subclasses whose message
is one sentence, never containing a key. A path the file system refuses (a workspace that
is a file, a folder it may not write) is a :class:`~migrator.errors.ConfigError` too
(:func:`~migrator.errors.paths_said`), with the ``OSError`` as its cause; so is a ledger
or store it may read but not write, with SQLite's error as the cause.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl
from pydantic import SecretStr

from migrator.batches import BatchNotDeletable, DeletionPlan, deletion_plan
from migrator.batches import delete_batch as _delete_batch
from migrator.cliniko.client import ClientConfig, ClinikoClient, Identity
from migrator.cliniko.pacing import checked_pace, pace_from_env
from migrator.destinations.local import REFERENCE_SCHEMA, LocalStore
from migrator.engine import RunResult
from migrator.errors import ConfigError, paths_said
from migrator.ledger import Ledger, StageProgress
from migrator.mapping import build_mapping, require_complete, to_rows
from migrator.plan import MappingRow, Scope, parse_include
from migrator.reconcile import InvoiceProgress, Reconciliation
from migrator.reconcile import reconcile as _reconcile
from migrator.workflow import (
    DEFAULT_WORKSPACE,
    current_destination,
    default_store,
    existing_ledger,
    make_plan,
    open_local_store,
    preview_plan,
    require_batch_source,
    run_plan,
    unmade_if_refused,
    verify_source,
)
from migrator.workspace import refuse_file

if TYPE_CHECKING:
    from migrator.scoped_preview import ScopedPreview

__all__ = [
    "ProgressBar",
    "batches",
    "connect",
    "delete_batch",
    "mapping",
    "reconcile",
    "run",
    "scoped_preview",
]

SOURCE_KEY_ENV = "MIGRATOR_SOURCE_KEY"

# Who each connected client's key belongs to, so later steps need not ask Cliniko again.
_IDENTITIES: weakref.WeakKeyDictionary[ClinikoClient, Identity] = weakref.WeakKeyDictionary()


def connect(
    key: str | SecretStr | None = None,
    *,
    url_template: str | None = None,
    requests_per_minute: float | None = None,
) -> ClinikoClient:
    """A read-only client of the source account, its key verified as an administrator's.

    Args:
        key: the API key; by default ``$MIGRATOR_SOURCE_KEY`` (keep keys out of notebooks).
        url_template: the API's URL template (``{shard}`` replaced); by default
            ``$MIGRATOR_API_URL`` or Cliniko's own.
        requests_per_minute: the key's pace; by default ``$MIGRATOR_REQUESTS_PER_MINUTE``
            or 200, Cliniko's published limit (0 turns pacing off, for the sandbox).

    Raises:
        ConfigError: no key, a malformed one, or not an administrator's; a pace that is negative or
            under 10 requests a minute (0 is unpaced).
        AuthError, APIError: Cliniko refused the key or could not be reached.
    """
    if key is not None and not isinstance(key, str | SecretStr):
        raise ConfigError(f"connect takes the API key as a string; got {type(key).__name__}.")
    secret = key if key is not None else os.environ.get(SOURCE_KEY_ENV)
    if secret is None or not (secret.get_secret_value() if isinstance(secret, SecretStr) else secret).strip():
        raise ConfigError(
            "The API key given is empty: pass the key, or leave key out to use "
            f"{SOURCE_KEY_ENV} from the environment."
            if key is not None
            else f"No source API key: pass one, or set {SOURCE_KEY_ENV} in the environment."
        )
    if requests_per_minute is None:
        requests_per_minute = pace_from_env()
    else:
        requests_per_minute = checked_pace(requests_per_minute, "requests_per_minute")
    config = ClientConfig(url_template=url_template, requests_per_minute=requests_per_minute)
    client = ClinikoClient(secret, config=config)
    try:
        _IDENTITIES[client] = verify_source(client)
    except BaseException:
        client.close()
        raise
    return client


def _identity(client: ClinikoClient) -> Identity:
    if client not in _IDENTITIES:
        _IDENTITIES[client] = verify_source(client)
    return _IDENTITIES[client]


def _scope(scope: object) -> Scope:
    """``scope=`` as a :class:`Scope`: its string parsed; anything else refused in a sentence."""
    if isinstance(scope, Scope):
        return scope
    if isinstance(scope, str):
        return Scope.parse(scope)
    raise ConfigError(
        "scope= takes 'all', 'business:ID[,ID...]' or 'practitioner:ID[,ID...]' (or a Scope); "
        f"got {type(scope).__name__}."
    )


def _batch_id(batch_id: object) -> str:
    """A batch id as given to a step: a string, as :func:`batches` lists them."""
    if not isinstance(batch_id, str):
        raise ConfigError(
            f"A batch id is a string such as 'b20261124-093000-1a2b', as migrator.batches() lists them; got "
            f"{type(batch_id).__name__}."
        )
    return batch_id


def _include(include: str | Sequence[str] | None) -> list[str] | None:
    """Data types as a string or a list, checked alike: an empty list is refused, not read as all of them."""
    if include is None:
        return None
    return parse_include(include if isinstance(include, str) else ",".join(include))


def scoped_preview(
    source: ClinikoClient,
    *,
    scope: str | Scope = "all",
    include: str | Sequence[str] | None = None,
    include_archived_patients: bool = True,
) -> ScopedPreview:
    """What :func:`run` with this scope and these data types reads, as ``preview --filter`` shows it.

    ``.frame`` has a row per data type (``entity, records, requests, exact, how``);
    ``.requests`` and ``.estimated_minutes`` are the whole read at the key's pace. Under a
    business or practitioner filter, patients and what follows them are estimated from the
    share of appointments in scope (``exact`` false, ``how`` says from what and up to how
    many); the run reports the exact figures. A few cheap requests (one count per list).

    Raises:
        ConfigError: a bad scope or data type, or a filter id the source account lacks.
        APIError: Cliniko failed beyond retries.
    """
    return preview_plan(
        source,
        _scope(scope),
        _include(include),
        local=True,
        include_archived_patients=include_archived_patients,
        identity=lambda: _identity(source),  # connect() has already asked Cliniko
    )


@paths_said
def mapping(
    source: ClinikoClient, *, to: str | None = None, workspace: str | Path = DEFAULT_WORKSPACE
) -> pl.DataFrame:
    """The auto-matched mapping table for a run into the local store ``to``: one frame, every entity.

    Columns as :data:`migrator.mapping.MAPPING_SCHEMA` (``entity``, ``source_id``,
    ``source_name``, ``action``, ``target_id`` ...). Rows whose ``action`` is
    ``"unresolved"`` need a decision (``former``, ``reassign``, ``exclude``...) before
    :func:`run`; edit the frame with Polars and pass it on.

    It only reads: with no workspace and no store there yet, it matches against an empty
    clinic, as a first run would find it, and makes neither (the run does). A workspace that
    is a file is refused, as the CLI's ``mapping`` and :func:`run` refuse it.
    """
    refuse_file(workspace)
    path = LocalStore.parse_target(to or default_store(workspace))
    if not path.exists() and not Ledger.file_in(workspace).exists():
        frames = build_mapping(source, lambda _: pl.DataFrame(schema=REFERENCE_SCHEMA), can_create=True)
    else:
        ledger, store = open_local_store(to, workspace)
        try:
            frames = build_mapping(source, store.reference, can_create=True)
        finally:
            ledger.close()
    return pl.concat(list(frames.values()), how="vertical")


def _mapping_rows(
    source: ClinikoClient, table: pl.DataFrame | Sequence[MappingRow] | str | Path | None
) -> Sequence[MappingRow] | str | Path | None:
    """``run``'s ``mapping=``, a table or rows checked to have a row for every record of the source.

    Edited in a notebook, a table easily loses rows (``table.filter(...)``); a run would
    skip those records' appointments as ``unmapped`` unasked. A file is checked by the
    plan itself (:func:`~migrator.workflow.make_plan`).
    """
    if table is None or isinstance(table, str | Path):
        return table
    rows = to_rows([table]) if isinstance(table, pl.DataFrame) else table
    # A pandas frame, a LazyFrame or a list of dicts would fail deep inside; say what is taken instead.
    if not isinstance(rows, list | tuple) or not all(isinstance(r, MappingRow) for r in rows):
        raise ConfigError(
            f"mapping= takes the Polars table migrator.mapping() gives (edited or not), its rows, or a mapping "
            f"file's path; got a {type(table).__name__}."
        )
    require_complete(source, list(rows), "the mapping table", fresh="start again from migrator.mapping()")
    return list(rows)


class _CountBar:
    """One tqdm bar, made on the first call (when the total is known); :meth:`close` ends it."""

    def __init__(self) -> None:
        self._bar: Any = None

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _listener(bar: Any, progress: object) -> Any:
    """What a step reports its progress to: its own bar (``progress=True``), the caller's callable, or nothing."""
    return bar if bar is not None else (progress if callable(progress) else None)


class ProgressBar:
    """A tqdm bar per stage, fed by a run's progress events: a widget in Jupyter when
    ipywidgets is installed, a text bar otherwise (Jupyter shows it in place too)."""

    def __init__(self) -> None:
        self._bar: Any = None
        self._stage: str | None = None

    def __call__(self, event: StageProgress) -> None:
        if event.stage != self._stage:
            self.close()
            self._bar = _tqdm()(total=event.total, desc=f"{event.stage:<24}", unit=" records", leave=True)
            self._stage = event.stage
        bar = self._bar
        bar.total = max(event.total, event.done)
        bar.set_postfix(
            created=event.created,
            linked=event.linked,
            present=event.already_present,
            skipped=event.skipped,
            refresh=False,
        )
        bar.update(event.done - bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.refresh()
            self._bar.close()
            self._bar = None
            self._stage = None


def _tqdm() -> Any:
    try:
        import ipywidgets  # noqa: F401  (tqdm's notebook bar needs it)
    except ImportError:
        from tqdm.std import tqdm as text_bar

        return text_bar
    from tqdm.auto import tqdm as auto_bar

    return auto_bar


@paths_said
def run(
    source: ClinikoClient,
    *,
    to: str | None = None,
    workspace: str | Path = DEFAULT_WORKSPACE,
    scope: str | Scope = "all",
    include: str | Sequence[str] | None = None,
    mapping: pl.DataFrame | Sequence[MappingRow] | str | Path | None = None,
    include_archived_patients: bool = True,
    top_up: bool = False,
    progress: Callable[[StageProgress], None] | bool | None = True,
) -> RunResult:
    """Migrate into the local store ``to``: a new batch, the plan's unfinished one resumed, or a top-up.

    Args:
        source: from :func:`connect`.
        to: ``sqlite:PATH`` (default ``<workspace>/clinic.db``); workspace: where the ledger lives.
        scope: ``"all"``, ``"business:ID[,ID...]"`` or ``"practitioner:ID[,ID...]"``.
        include: data types (``"patients,invoices"``, ``"core"``...); default everything.
        mapping: the mapping table (:func:`mapping`, edited), rows, or a JSON file
            (``migrator.save_mapping(path, table)`` writes one), with a row for every
            practitioner, business and appointment type of the source (checked: a
            dropped row would skip records unasked); by default the mapping
            of the workspace's last batch with the same scope and data types (so a
            re-run or top-up continues it), else auto-matched, which refuses to run
            while any row is unresolved.
        top_up: read only what changed since the plan's last completed batch.
        progress: ``True`` for a bar per stage (:class:`ProgressBar`), a callable to
            receive each :class:`~migrator.ledger.StageProgress`, or ``None``.

    Raises:
        MappingError: a mapping row is unresolved or missing. ConfigError: a bad scope,
        data type or mapping table, or a top-up of a plan with no completed batch.
        APIError: Cliniko failed beyond retries.
    """
    identity = _identity(source)
    # The arguments are checked before the workspace is opened: a refusal leaves no new ledger behind.
    parsed_scope = _scope(scope)
    included = _include(include)
    mappings = _mapping_rows(source, mapping)
    # Some refusals need the ledger or Cliniko (a filter id, a top-up of nothing): what they made goes again.
    with unmade_if_refused(workspace, to or default_store(workspace)):
        ledger, store = open_local_store(to, workspace)
        listener: Callable[[StageProgress], None] | None
        bar = ProgressBar() if progress is True else None
        listener = _listener(bar, progress)
        try:
            plan = make_plan(
                source,
                identity,
                store,
                scope=parsed_scope,
                include=included,
                mappings=mappings,
                include_archived_patients=include_archived_patients,
                ledger=ledger,
                top_up=top_up,
            )
            return run_plan(plan, source, store, ledger, top_up=top_up, progress=listener, actor="notebook")
        finally:
            if bar is not None:
                bar.close()
            ledger.close()


class InvoiceBar(_CountBar):
    """A tqdm bar over the source's invoices that :func:`reconcile` reads for the balances."""

    def __call__(self, read: int, listed: int) -> None:
        if self._bar is None:
            self._bar = _tqdm()(total=listed, desc="Source invoices (balances)", unit=" invoices", leave=True)
        self._bar.total = listed
        self._bar.update(read - self._bar.n)


@paths_said
def reconcile(
    batch_id: str,
    *,
    source: ClinikoClient,
    workspace: str | Path = DEFAULT_WORKSPACE,
    progress: InvoiceProgress | bool | None = True,
) -> Reconciliation:
    """Counts, per-patient balances and skipped records of a batch (see :mod:`migrator.reconcile`).

    ``progress``: ``True`` for a bar over the source's invoices (:class:`InvoiceBar`: most of
    the check's requests, minutes for a large clinic at Cliniko's pace), a callable to receive
    ``(invoices read, invoices listed)`` after each page, or ``None``.

    ``source`` must be a client of the account the batch read (a key of another account
    would compare the batch with the wrong clinic): one from :func:`connect` is known,
    another is asked whose it is (three or four requests).

    Raises:
        BatchNotFound: no such batch in the workspace. ConfigError: the batch did not go
        to a local store, ``source`` is another account's, or ``workspace`` is a file, not
        a folder. APIError: the source failed beyond retries.
    """
    ledger = existing_ledger(workspace, _batch_id(batch_id), option="the workspace argument")
    bar = InvoiceBar() if progress is True else None
    try:
        batch = ledger.batch(batch_id)
        if not isinstance(source, ClinikoClient):
            raise ConfigError(
                "reconcile needs source=, a client of the account the batch read (from migrator.connect(key))."
            )
        require_batch_source(
            ledger,
            batch,
            _identity(source),
            key="The source client's key",
            fix="connect that account's key to reconcile it",
        )
        store = _local_store_of(ledger, batch_id, "reconciled")
        listener = _listener(bar, progress)
        return _reconcile(ledger, batch_id, source=source, store=store, progress=listener)
    finally:
        if bar is not None:
            bar.close()
        ledger.close()


def _local_store_of(ledger: Ledger, batch_id: str, done: str) -> LocalStore:
    """The local clinic store a batch wrote into; a batch into a Cliniko account is refused with ``done``."""
    batch = ledger.batch(batch_id)
    if not batch.destination.startswith("sqlite:"):
        raise ConfigError(
            f"Batch {batch.id} went to {batch.destination}; only a batch into the local clinic store can be "
            f"{done} here (use `python -m migrator` or the console for a Cliniko account)."
        )
    workspace = ledger.path.parent  # a copied workspace's own store, not the original's
    return LocalStore(
        LocalStore.parse_target(current_destination(ledger, workspace, batch.destination)), ledger
    )


class DeletionBar(_CountBar):
    """A tqdm bar over the records :func:`delete_batch` removes, its description the data type going now."""

    def __call__(self, entity: str, removed: int, total: int) -> None:
        if self._bar is None:
            self._bar = _tqdm()(total=total, desc="Deleting", unit=" records", leave=True)
        self._bar.set_description(f"Deleting {entity:<24}", refresh=False)
        self._bar.update(removed - self._bar.n)


@paths_said
def delete_batch(
    batch_id: str,
    *,
    workspace: str | Path = DEFAULT_WORKSPACE,
    dry_run: bool = False,
    progress: Callable[[str, int, int], None] | bool | None = True,
) -> DeletionPlan:
    """Delete what a batch created in the local clinic store, within 48 hours of its start (seed 000).

    Removes the records the batch created, and those created since for its patients;
    records it linked to, and what the clinic set up itself, stay. The same rules as
    ``python -m migrator delete-batch``, logged in the ledger's audit trail as the notebook's.

    Args:
        batch_id: the batch (:func:`batches` lists them, with ``deletable`` and ``why``).
        dry_run: only say what would go: the returned plan's ``created``, ``dependents``
            (created since for its patients), ``total``, and ``blocker``, the sentence saying
            which other records rely on it (the batch is then not deletable).
        progress: ``True`` for a bar over the records removed (:class:`DeletionBar`; tens of
            seconds for a large clinic), a callable to receive ``(data type, removed, total)``
            after each chunk, or ``None``.

    Returns:
        The :class:`~migrator.batches.DeletionPlan`: what went, or with ``dry_run`` what would.

    Raises:
        ConfigError: the workspace holds no ledger or is a file, or the batch went into a
        Cliniko account. BatchNotFound: no such batch. BatchNotDeletable: older than 48
        hours, already deleted, still running, or (unless ``dry_run``) relied on by other records.
    """
    ledger = existing_ledger(workspace, _batch_id(batch_id), option="the workspace argument")
    bar = DeletionBar() if progress is True and not dry_run else None
    try:
        store = _local_store_of(ledger, batch_id, "deleted")
        if not dry_run:
            listener = _listener(bar, progress)
            # delete_batch checks what follows (the batch's age, what relies on it), and more
            return _delete_batch(ledger, store, batch_id, actor="notebook", progress=listener)
        allowed, why = ledger.batch(batch_id).deletable()
        if not allowed:
            raise BatchNotDeletable(why)
        return deletion_plan(ledger, store, batch_id)
    finally:
        if bar is not None:
            bar.close()
        ledger.close()


@paths_said
def batches(workspace: str | Path = DEFAULT_WORKSPACE) -> pl.DataFrame:
    """Every batch of the workspace, newest first, as a frame.

    Columns: ``id``, ``created_at``, ``status``, ``kind`` (``full`` or ``top-up``),
    ``source_account``, ``destination``, ``requests``, the ``created`` / ``linked`` /
    ``already_present`` / ``skipped`` totals, ``deletable`` and ``why`` (a sentence; a batch a
    later one relies on is not deletable, and says so). A workspace with no ledger yet has none.

    Raises:
        ConfigError: ``workspace`` is a file, not a folder (as :func:`run` would say).
    """
    from migrator.batches import deletable

    refuse_file(workspace)
    if not Ledger.file_in(workspace).exists():  # no ledger, no batches: and no workspace is made there
        return pl.DataFrame(schema=_BATCHES_SCHEMA)
    ledger = Ledger(workspace)
    try:
        rows = []
        top_ups = ledger.top_ups()
        for b in ledger.batches():
            allowed, why = deletable(ledger, b)
            totals = {
                a: sum(c.get(a, 0) for c in b.counts.values())
                for a in ("created", "linked", "already_present", "skipped")
            }
            rows.append(
                {
                    "id": b.id,
                    "created_at": b.created_at,
                    "status": b.status,
                    "kind": "top-up" if b.id in top_ups else "full",
                    "source_account": b.source_account,
                    "destination": b.destination,
                    "requests": ledger.batch_requests(b.id),
                    **totals,
                    "deletable": allowed,
                    "why": why,
                }
            )
    finally:
        ledger.close()
    return pl.DataFrame(rows, schema=_BATCHES_SCHEMA, orient="row")


#: The columns of :func:`batches`.
_BATCHES_SCHEMA: dict[str, Any] = {
    "id": pl.String,
    "created_at": pl.Datetime("us", "UTC"),
    "status": pl.String,
    "kind": pl.String,
    "source_account": pl.String,
    "destination": pl.String,
    "requests": pl.Int64,
    "created": pl.Int64,
    "linked": pl.Int64,
    "already_present": pl.Int64,
    "skipped": pl.Int64,
    "deletable": pl.Boolean,
    "why": pl.String,
}
