"""The steps every front end takes, in one place: the CLI, the console and notebooks call these.

>>> client = ClinikoClient(key)                                        # doctest: +SKIP
>>> identity = verify_source(client)                                   # an administrator's key
>>> ledger, store = open_local_store("sqlite:workspace/clinic.db", "workspace")
>>> plan = make_plan(client, identity, store, scope=Scope.parse("all"))
>>> result = run_plan(plan, client, store, ledger)                      # resumes an unfinished one
>>> later = run_plan(plan, client, store, ledger, top_up=True)         # only what changed since

Each raises a :class:`~migrator.errors.MigratorError` whose message is one sentence for
the operator; none of them ever puts a key in a message.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr, ValidationError

from migrator.cliniko.client import ClientConfig, ClinikoClient, Identity
from migrator.cliniko.keys import ApiKey, parse_key
from migrator.destinations import Destination
from migrator.destinations.local import LocalStore
from migrator.errors import ConfigError, NotFoundError
from migrator.ledger import Batch, Ledger, StageProgress, ledger_records
from migrator.mapping import build_mapping, load_mapping, require_complete, to_rows
from migrator.plan import MappingRow, Plan, Scope, default_include, validation_sentence
from migrator.scoped_preview import ScopedPreview, scoped_preview
from migrator.topup import TOP_UP_OVERLAP, TopUp
from migrator.workspace import DEFAULT_WORKSPACE, read_only, refuse_file

if TYPE_CHECKING:  # the engine loads only when a run starts
    from migrator.destinations.cliniko import ClinikoDestination
    from migrator.engine import RunResult

__all__ = [
    "DEFAULT_STORE",
    "DEFAULT_WORKSPACE",
    "ClinikoKeys",
    "auto_mapping",
    "check_scope",
    "claim_copied_batches",
    "cliniko_destination",
    "current_destination",
    "default_store",
    "earlier_mapping",
    "last_completed_batch",
    "last_mapping",
    "make_plan",
    "open_cliniko_destination",
    "open_local_store",
    "plan_batches",
    "plan_include",
    "preview_plan",
    "require_batch_source",
    "run_plan",
    "same_plan",
    "top_up_point",
    "unfinished_batch",
    "unmade_if_refused",
    "verify_source",
]

#: The local clinic store of the default workspace (:func:`default_store` of another one).
DEFAULT_STORE = "sqlite:workspace/clinic.db"


def default_store(workspace: str | Path = DEFAULT_WORKSPACE) -> str:
    """A workspace's own local clinic store, as a destination: ``sqlite:<workspace>/clinic.db``.

    >>> default_store("elsewhere")
    'sqlite:elsewhere/clinic.db'
    """
    return f"sqlite:{Path(workspace) / 'clinic.db'}"


def verify_source(client: ClinikoClient) -> Identity:
    """Who the source key belongs to; refused unless an administrator (seed 001: others lack the rights)."""
    identity = client.identity()
    if not identity.is_admin:
        raise ConfigError(
            f"The source key belongs to {identity.user}, who is not an administrator of "
            f"{identity.account or 'the account'}; Cliniko only gives an administrator's key the rights a migration needs."
        )
    return identity


def existing_ledger(workspace: str | Path, batch_id: str, *, option: str = "--workspace") -> Ledger:
    """The ledger of a workspace that has one; a folder without ``ledger.db`` is refused, not created.

    Commands about an existing batch (reconcile, delete) must not leave an empty workspace
    behind a mistyped path. ``option`` is how the caller names the workspace in the sentence.

    Raises:
        FileExistsError: ``workspace`` is a file, as a run or a mapping there says (not "no ledger").
        ConfigError: ``workspace`` holds no ledger.
    """
    refuse_file(workspace)
    if not Ledger.file_in(workspace).exists():
        raise ConfigError(
            f"There is no batch {batch_id}: {workspace} holds no ledger (ledger.db); check {option}."
        )
    return Ledger(workspace)


def current_destination(ledger: Ledger, workspace: str | Path, destination: str) -> str:
    """``destination`` as a batch recorded it, or the workspace's own store once that has claimed it.

    A workspace copied or moved (``ledger.db`` and ``clinic.db`` together) still records
    its batches as going to the store where it was. A run in the copy re-points them when
    it opens the copy's store (audited ``store_moved``); deleting or reconciling a batch
    opens the batch's recorded store, which would be the original's: a deletion in a copy
    made to try things on would remove the original's records. So the workspace's own
    store, when there is one and it is not ``destination``, is opened first to claim the
    batches whose records it holds, and the batch's store is then whatever they record.
    A batch that wrote nothing yet (stopped at once) leaves no record to claim it by: when
    its store is the default store of another folder with a ledger of its own (the
    original of a copy), it is re-pointed at this workspace's store too, audited the same
    way, so a resume in the copy does not write into the original's. So are the batches
    into a store outside the workspace that the original records batches into (which the
    copy may not use), when none of them wrote anything and no batch is recorded into the
    workspace's own store: that store is then the outside one copied in (the refusal's
    remedy), not the copy of the workspace's own, whose batches the ledger would name.
    ``ledger`` must have no store attached.
    """
    if not destination.startswith("sqlite:"):
        return destination
    own = LocalStore.parse_target(default_store(workspace))
    if not own.exists() or LocalStore.parse_target(destination).resolve() == own.resolve():
        return destination
    try:
        store = LocalStore(own, ledger)
    except ConfigError:  # another workspace's store lies there: the batch's record stands
        return destination
    store.close()
    if not any(batch.destination == destination for batch in ledger.batches()):
        return store.describe()
    recorded = LocalStore.parse_target(destination)
    mine = [b.id for b in ledger.batches() if b.destination == destination]
    if recorded.name == own.name and ledger_records(
        Ledger.file_in(recorded.parent), batch_ids=mine
    ):  # the original's
        ledger.store_moved(destination, store.describe(), copy=True)
        return store.describe()
    if (
        ledger.original_writing_to(destination) is not None
        and not any(ledger.counts(b) for b in mine)
        and not any(batch.destination == store.describe() for batch in ledger.batches())
    ):
        # A store outside the workspace that the original uses, which the copy may not (see
        # LocalStore.shared_with_original), nothing of the copy's in it, and the copy's own
        # store no other batch's: that store was copied in from it, as the refusal says to.
        ledger.store_moved(destination, store.describe(), copy=True)
        return store.describe()
    return destination


def claim_copied_batches(ledger: Ledger, workspace: str | Path) -> None:
    """Let the workspace's own store claim the batches its ledger records into other local stores.

    In a copy made of a workspace, the batches still name the original's store, and one
    stopped before it wrote anything has no record to be claimed by: without this, running
    the same plan in the copy would start a new batch instead of resuming it. Each other
    local destination goes through :func:`current_destination`, which re-points only what
    is this workspace's. ``ledger`` must have no store attached.

    A ledger this process may not write (a copy kept read-only to be looked at) is left as
    it records itself: what would write to it is refused before it records anything.
    """
    if not ledger.may_write():
        return
    own = f"sqlite:{LocalStore.parse_target(default_store(workspace)).resolve()}"
    others = {b.destination for b in ledger.batches() if b.destination.startswith("sqlite:")} - {own}
    for destination in sorted(others):
        current_destination(ledger, workspace, destination)


@contextmanager
def unmade_if_refused(
    workspace: str | Path, store: str | None = None, *, reading_only: bool = False
) -> Iterator[None]:
    """Take back the workspace files a refused run made: a refusal should leave nothing behind.

    Some refusals need the ledger or Cliniko to be said (a filter id the source lacks, a
    top-up with nothing to top up, a mapping row unresolved, a store of another workspace),
    so they come after the workspace was opened, which makes ``ledger.db`` (and the local
    store ``store``, ``sqlite:PATH``, if given). When the block ends in one of our refusals
    (a :class:`~migrator.errors.MigratorError`, or SQLite refusing a file), a ledger this made
    that records no batch and no audit line goes again; so does the store if this made it
    and no batch of the ledger went into it (beside a ledger made here too, or an older one),
    and the folders this made for them, up to the first that was there, as far as they are
    empty. So it is when the block ends in Ctrl+C (``KeyboardInterrupt``) before a batch was
    recorded. The block must have closed the ledger by then.

    ``reading_only``: the block only reads (``mapping`` writes its tables elsewhere), so what
    it made goes however it ends: a mistyped ``--workspace`` leaves no new workspace behind.
    """
    from migrator.errors import MigratorError

    folder = Path(workspace)
    ledger_file = Ledger.file_in(folder)
    store_file = LocalStore.parse_target(store) if store is not None else None
    made = [f for f in (ledger_file, store_file) if f is not None and not f.exists()]
    new_folders = [_made_folders(f.parent) for f in made]

    def take_back() -> None:
        ledger_made = ledger_file in made
        if ledger_made and _holds_anything(ledger_file):
            return
        for file, folders in zip(made, new_folders, strict=True):
            if (
                file == store_file
                and not ledger_made
                and ledger_records(ledger_file, destination=f"sqlite:{file.resolve()}")
            ):
                continue  # a batch went into it: it holds what the ledger says it does
            for path in (file, *(file.with_name(file.name + end) for end in ("-wal", "-shm", "-journal"))):
                path.unlink(missing_ok=True)
            for made_folder in folders:  # deepest first
                with suppress(OSError):  # not empty: something else is in there now
                    made_folder.rmdir()

    try:
        yield
    except (MigratorError, KeyboardInterrupt, sqlite3.Error):  # refused, Ctrl+C, a file SQLite may not write:
        take_back()  # take_back keeps what records a batch
        raise
    if reading_only:
        take_back()


def _made_folders(folder: Path) -> list[Path]:
    """``folder`` and its parents that do not exist yet, deepest first: what making it would make."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def _holds_anything(ledger_file: Path) -> bool:
    """Whether the ledger file records any batch or audit line (read-only); one that cannot be read counts as one that does."""
    if not ledger_file.exists():
        return False
    try:
        with read_only(ledger_file) as conn:
            return any(
                conn.execute(f"SELECT EXISTS (SELECT 1 FROM {name})").fetchone()[0]
                for name in ("batches", "audit")
            )
    except sqlite3.Error:
        return True  # cannot tell: keep it


def open_local_store(
    target: str | None = None, workspace: str | Path = DEFAULT_WORKSPACE
) -> tuple[Ledger, LocalStore]:
    """The workspace's ledger and the local clinic store ``sqlite:PATH`` attached to it.

    ``target`` defaults to the workspace's own store (:func:`default_store`). A target that is
    not ``sqlite:PATH`` is refused before the workspace is touched. Opening the workspace's
    own store first lets it claim a copied workspace's batches (:func:`claim_copied_batches`).

    Raises:
        ConfigError: ``target`` is not ``sqlite:PATH``, or the store is not one this ledger
        may write (see :class:`LocalStore`).
    """
    path = LocalStore.parse_target(target or default_store(workspace))
    ledger = Ledger(workspace)
    try:
        if path.resolve() == LocalStore.parse_target(default_store(workspace)).resolve():
            claim_copied_batches(ledger, workspace)  # so the plan's stopped batch is found to resume
        return ledger, LocalStore(path, ledger)
    except BaseException:
        ledger.close()
        raise


@dataclass(frozen=True, repr=False)
class ClinikoKeys:
    """A Cliniko destination's keys: an administrator-practitioner's, and other practitioners' for notes.

    Held in the session's memory (and a run's thread) only; its repr names no key.
    """

    key: SecretStr
    note_keys: tuple[SecretStr, ...] = field(default=())

    def __repr__(self) -> str:
        return f"ClinikoKeys(<{1 + len(self.note_keys)} keys>)"


@contextmanager
def cliniko_destination(
    keys: ClinikoKeys,
    config: ClientConfig,
    workspace: str | Path = DEFAULT_WORKSPACE,
    *,
    source: ClinikoClient | None = None,
) -> Iterator[tuple[Ledger, ClinikoDestination]]:
    """The workspace's ledger and the Cliniko destination of ``keys``, closed afterwards (their clients too).

    Every key gets a writable client of ``config``; ``source`` (not closed here) downloads
    attachments' files.

    Raises:
        ConfigError: a note author's key is another account's or no active practitioner's.
        APIError: a key is refused by Cliniko.
    """
    with ExitStack() as opened:  # closed in reverse: the destination, the ledger, the clients
        # Cliniko's refusals name the destination's key; a note author's is named by the destination.
        named: list[ApiKey | SecretStr] = [parse_key(keys.key, name="destination API key"), *keys.note_keys]
        clients = [opened.enter_context(ClinikoClient(k, writable=True, config=config)) for k in named]
        ledger, destination = open_cliniko_destination(
            clients[0], workspace, source=source, note_keys=clients[1:]
        )
        opened.callback(ledger.close)
        opened.callback(destination.close)
        yield ledger, destination


def open_cliniko_destination(
    client: ClinikoClient,
    workspace: str | Path = DEFAULT_WORKSPACE,
    *,
    source: ClinikoClient | None = None,
    note_keys: Sequence[ClinikoClient] = (),
) -> tuple[Ledger, ClinikoDestination]:
    """The workspace's ledger and a Cliniko destination written with ``client`` (a writable client).

    ``note_keys`` are writable clients of other destination practitioners, so their notes
    keep their author; ``source`` downloads attachments' files.
    """
    from migrator.destinations.cliniko import ClinikoDestination

    ledger = Ledger(workspace)
    try:
        return ledger, ClinikoDestination.connect(client, ledger, source=source, note_keys=note_keys)
    except BaseException:
        ledger.close()  # a refused key leaves no connection open
        raise


def auto_mapping(client: ClinikoClient, store: Destination) -> list[MappingRow]:
    """The auto-matched mapping rows (by normalised name) between the source and the destination."""
    local = store.describe().startswith("sqlite:")
    return to_rows(build_mapping(client, store.reference, can_create=local))


_NOTHING_TO_TOP_UP = (
    "No batch of this plan has completed yet, so there is nothing to top up: run it in full once first "
    "(a changed mapping, filter or data types make a new plan)."
)


def make_plan(
    client: ClinikoClient,
    identity: Identity,
    store: Destination,
    *,
    scope: Scope,
    include: Sequence[str] | None = None,
    mappings: Sequence[MappingRow] | str | Path | None = None,
    include_archived_patients: bool = True,
    ledger: Ledger | None = None,
    top_up: bool = False,
) -> Plan:
    """A plan for this source and store; ``mappings`` are rows, a JSON file's path, or chosen for you.

    With no ``mappings``, a plan whose filter and data types an earlier batch in
    ``ledger`` already ran (not one since deleted) takes that batch's mapping, so a
    re-run, a resumed run or a top-up continues the same plan. Matching afresh would
    lose the decisions auto-matching cannot make (former practitioners) and, against a
    Cliniko account, map what that batch created: a new plan, with nothing to resume or
    top up. Otherwise they are auto-matched, except for a ``top_up``: with no batch of
    this filter and these data types there is nothing to top up, which is what it is told
    (rather than that the fresh mapping has rows to decide).

    A mapping file must have a row for every practitioner, business and appointment type
    of the source (read to check, one or two requests each): a missing row would skip
    records unasked. Rows handed over as a list are taken as they are; a record without
    one is skipped as ``unmapped``, as one that appears after the mapping was made is.

    A business or practitioner filter must name records of the source account: ids the
    mapping lists are known, any other is looked up (one request each), so a mistyped id
    is refused rather than run as a migration that brings nothing.

    Raises:
        ConfigError: the filter names a business or practitioner the source does not have,
            or the destination cannot carry out a mapping row or a data type (a Cliniko
            account cannot take invoices, nor create practitioners); a ``top_up`` with no
            mapping and no earlier batch of this filter and these data types.
        MappingError: a mapping row is still unresolved, or a mapping file lacks a row
            for a source record (the message lists them).
    """
    if isinstance(mappings, str | Path):
        rows = load_mapping(mappings)
        require_complete(client, rows, f"the mapping file {mappings}")
    elif mappings is not None:
        rows = list(mappings)
    destination = store.describe()
    local = destination.startswith("sqlite:")
    chosen = plan_include(include, local=local)
    fields: dict[str, Any] = {
        "source_account": source_account_of(identity, ledger),
        "source_account_id": identity.account_id,
        "source_shard": client.key.shard,
        "destination": destination,
        "destination_account": getattr(store, "account_name", None),
        "scope": scope,
        "include_archived_patients": include_archived_patients,
        "include": chosen,
    }
    if mappings is None:
        earlier = earlier_mapping(ledger, _plan(fields, [])) if ledger is not None else None
        if earlier is None and top_up:
            raise ConfigError(_NOTHING_TO_TOP_UP)
        rows = earlier if earlier is not None else auto_mapping(client, store)
    check_scope(client, scope, fields["source_account"], rows)
    plan = _plan(fields, rows)
    plan.require_resolved()
    return plan


def source_account_of(identity: Identity, ledger: Ledger | None) -> str:
    """The name batches from the key's account go by in this workspace (:attr:`Plan.source_account`).

    It is what tells this account's records from the others' (already present, linked,
    resumed), so it must not change with the account's name in Cliniko. Each plan records
    the account's id as well, and the name is that of the account's newest batch in
    ``ledger`` with the same id: a clinic renamed between its run and its top-up keeps
    the name it had. Another account that goes by the same name here (a batch with another
    id) makes this one ``"NAME (account ID)"``, so two clinics never share one. Without an
    id from Cliniko, or a ledger, it is the account's name (or, lacking one, the user's).
    """
    name = identity.account or identity.user
    if ledger is None or not identity.account_id:
        return name
    taken = False
    for batch in ledger.batches():  # newest first
        recorded = batch.plan.get("source_account_id")
        if recorded == identity.account_id:
            return batch.source_account
        taken = taken or (batch.source_account == name and recorded is not None)
    return f"{name} (account {identity.account_id})" if taken else name


def require_batch_source(ledger: Ledger, batch: Batch, identity: Identity, *, key: str, fix: str) -> None:
    """Refuse to compare ``batch`` with an account other than the one it read (``identity``, the key's).

    ``key`` is what the sentence calls the key ("The source key"), ``fix`` what to do instead.

    Raises:
        ConfigError: the key belongs to another account than the batch's source.
    """
    if source_account_of(identity, ledger) != batch.source_account:
        raise ConfigError(
            f"{key} belongs to {identity.account or identity.user}, but batch {batch.id} was read from "
            f"{batch.source_account}; {fix}."
        )


def _plan(fields: dict[str, Any], rows: Sequence[MappingRow]) -> Plan:
    """The plan, or one sentence saying what in it this destination cannot carry out."""
    try:
        return Plan(**fields, mappings=list(rows))
    except ValidationError as exc:
        raise ConfigError(f"This plan cannot run: {validation_sentence(exc)}.") from None


def preview_plan(
    client: ClinikoClient,
    scope: Scope,
    include: Sequence[str] | None,
    *,
    local: bool,
    include_archived_patients: bool = True,
    identity: Callable[[], Identity] | None = None,
) -> ScopedPreview:
    """What ``run`` with this scope and these data types reads: the CLI's ``preview --filter``, the library's too.

    ``include`` gains what the destination carries with it (:func:`plan_include`), and a
    filter id the account lacks is refused first (:func:`check_scope`), the account named
    by ``identity`` (by default the key's, asked of Cliniko; only under a filter). Into a
    Cliniko account (``local`` false) the cancellations and archives a transfer sends are
    counted too (``count_follow_ups``), one or two requests more.
    """
    if scope.kind != "all":
        who = (identity or client.identity)()
        check_scope(client, scope, who.account or who.user)
    return scoped_preview(
        client,
        scope,
        plan_include(include, local=local),
        include_archived_patients=include_archived_patients,
        count_follow_ups=not local,
    )


def plan_include(include: Sequence[str] | None, *, local: bool) -> list[str]:
    """The data types a plan carries: ``include``, or all the destination can take when it is empty.

    A Cliniko account (``local=False``) also gets the note templates whenever notes go, as
    Cliniko needs a note's template; templates of the same name are linked, not duplicated.

    >>> plan_include(["treatment_notes"], local=False)
    ['treatment_notes', 'treatment_note_templates']
    """
    chosen = list(include) if include else default_include(local=local)
    if not local and "treatment_notes" in chosen and "treatment_note_templates" not in chosen:
        chosen.append("treatment_note_templates")
    return chosen


def check_scope(client: ClinikoClient, scope: Scope, account: str, rows: Sequence[MappingRow] = ()) -> None:
    """Refuse a filter naming a business or practitioner that ``account`` does not have.

    Ids among the mapping's ``rows`` are known to exist; each other id costs one request.

    Raises:
        ConfigError: an id is not the account's, in a sentence listing every such id.
    """
    if scope.kind == "all":
        return
    entity = f"{scope.kind}es" if scope.kind == "business" else f"{scope.kind}s"
    known = {row.source_id for row in rows if row.entity == entity}
    missing = []
    for source_id in scope.ids:
        if source_id in known:
            continue
        try:
            client.get(f"{entity}/{source_id}")
        except NotFoundError:
            missing.append(source_id)
    if missing:
        which = f"{scope.kind} with the id" if len(missing) == 1 else f"{entity} with the ids"
        bring = (
            "so the filter would bring nothing"
            if len(missing) == len(scope.ids)
            else f"so {'that id' if len(missing) == 1 else 'those ids'} would bring nothing (mistyped?)"
        )
        raise ConfigError(
            f"{account} has no {which} {', '.join(missing)}, {bring}; the mapping lists its {entity} with their ids."
        )


def earlier_mapping(ledger: Ledger, plan: Plan) -> list[MappingRow] | None:
    """The mapping of the newest batch (not deleted) that ran ``plan`` but for its mapping, if any."""
    wanted = _comparable(json.loads(plan.to_json()), mappings=False)
    for batch in _live_batches(ledger, plan.source_account, plan.destination):
        if _comparable(batch.plan, mappings=False) == wanted:
            return Plan.model_validate(batch.plan).mappings
    return None


def last_mapping(
    ledger: Ledger, source_account: str, destination: str, *, tenant: str | None = None
) -> tuple[Batch, list[MappingRow]] | None:
    """The newest batch (not deleted) from this source account into this destination, and its mapping.

    The console starts its mapping tables from it, whatever that batch's filter, so a
    clinic coming back for the top-up finds the decisions it made, not a fresh matching.
    """
    batch = next(_live_batches(ledger, source_account, destination, tenant=tenant), None)
    return None if batch is None else (batch, Plan.model_validate(batch.plan).mappings)


def _live_batches(
    ledger: Ledger, source_account: str, destination: str, *, tenant: str | None = None
) -> Iterator[Batch]:
    for batch in ledger.batches(tenant=tenant):
        if batch.status in ("deleting", "deleted"):
            continue
        if batch.source_account == source_account and batch.destination == destination:
            yield batch


def _comparable(plan_json: dict[str, Any], *, mappings: bool = True) -> dict[str, Any]:
    """What makes a plan another plan: its JSON without the tool's version, each mapping row cut to its decision.

    Names and notes describe a row (a practitioner renamed at the source, a note matched
    afresh); they do not change what a run does, so they do not make another plan.
    """
    # The account's id binds its name (source_account_of); plans written before it was recorded lack it.
    out = {k: v for k, v in plan_json.items() if k not in ("created_with", "mappings", "source_account_id")}
    if mappings:
        out["mappings"] = sorted(
            (r["entity"], str(r["source_id"]), r["action"], r.get("target_id") or "")
            for r in plan_json.get("mappings") or ()
        )
    return out


def unfinished_batch(ledger: Ledger, plan: Plan) -> str | None:
    """The latest batch of the same plan that did not finish (killed, stopped or failed): resume it.

    A top-up whose batch (the one it topped up) has been deleted since is not resumed:
    it would read only what changed since a batch whose records are gone. It is left as it
    stands (deletable on its own), and the plan starts afresh.

    Raises:
        ConfigError: that batch is running right now in another live process, so a second
            run would only race it.
    """
    for batch in ledger.batches():
        if batch.status not in ("running", "stopped", "failed"):
            continue
        if same_plan(batch, plan) and not _base_deleted(ledger, batch):
            if batch.running_elsewhere():
                raise ConfigError(
                    f"Batch {batch.id} of this plan is running right now in another process ({batch.worker}); "
                    "follow it there, or stop it before starting it again."
                )
            return batch.id
    return None


def _base_deleted(ledger: Ledger, batch: Batch) -> bool:
    """Whether ``batch`` is a top-up of a batch since deleted (or being deleted)."""
    top_up = TopUp.recorded(ledger, batch.id)
    return top_up is not None and ledger.batch(top_up.of).status in ("deleted", "deleting")


def same_plan(batch: Batch, plan: Plan) -> bool:
    """Whether a batch ran this plan: same source, destination, scope, data types and mappings."""
    if batch.destination != plan.destination or batch.source_account != plan.source_account:
        return False
    return _comparable(batch.plan) == _comparable(json.loads(plan.to_json()))


def plan_batches(ledger: Ledger, plan: Plan, *, statuses: Sequence[str] = ("completed",)) -> list[Batch]:
    """The batches of this plan in these statuses, newest first."""
    return [b for b in ledger.batches() if b.status in statuses and same_plan(b, plan)]


def last_completed_batch(ledger: Ledger, plan: Plan) -> Batch | None:
    """The newest completed batch of this plan: what a top-up starts from."""
    found = plan_batches(ledger, plan)
    return found[0] if found else None


def top_up_point(ledger: Ledger, plan: Plan, *, overlap: timedelta = TOP_UP_OVERLAP) -> TopUp:
    """Where a top-up of this plan starts: its newest completed batch's start, less ``overlap``.

    Raises:
        ConfigError: no batch of this plan has completed (a changed mapping, scope or
            data types make a new plan, which needs a full run first), or a batch the
            newest top-up built on has been deleted since (it would miss what that brought).
    """
    done = plan_batches(ledger, plan)
    if not done:
        raise ConfigError(_NOTHING_TO_TOP_UP)
    tops = ledger.top_ups()
    full = next((b for b in done if b.id not in tops), None)
    built_on = TopUp.recorded(ledger, done[0].id)  # if the newest is a top-up, what it built on must stand
    gone = [
        b for b in (built_on.chain if built_on else ()) if ledger.batch(b).status in ("deleting", "deleted")
    ]
    if gone or full is None:
        what = f"Batch {gone[0]}" if gone else "The full run"
        raise ConfigError(
            f"{what}, which top-up {done[0].id} builds on, has been deleted, so a top-up would miss what it "
            "brought; run this plan in full first (not as a top-up)."
        )
    return TopUp(
        of=done[0].id,
        since=done[0].created_at - overlap,
        chain=tuple(b.id for b in done),
        baseline_requests=ledger.batch_requests(full.id),
    )


def run_plan(
    plan: Plan,
    client: ClinikoClient,
    store: Destination,
    ledger: Ledger,
    *,
    top_up: bool = False,
    progress: Callable[[StageProgress], None] | None = None,
    stop: threading.Event | None = None,
    actor: str = "cli",
) -> RunResult:
    """Run a plan: resume its unfinished batch if it has one, else a new batch (a top-up if asked).

    Raises:
        ConfigError: a top-up was asked for a plan with no completed batch, or the plan's
            unfinished batch is running in another process.
        MappingError, RunStopped, APIError: as :meth:`migrator.engine.Engine.run`.
    """
    from migrator.engine import Engine

    resume = unfinished_batch(ledger, plan)
    point = top_up_point(ledger, plan) if top_up and resume is None else None
    engine = Engine(plan, client, store, ledger, progress=progress, stop=stop, actor=actor, top_up=point)
    return engine.run(resume)
