"""The migration engine: stages in dependency order, page by page, into a destination.

>>> result = Engine(plan, source_client, store, ledger).run()    # doctest: +SKIP
>>> result.entities["patients"]                                   # doctest: +SKIP
{'in_scope': 400, 'created': 398, 'linked': 2, 'already_present': 0, 'skipped': 0}

Every source record in scope ends as exactly one ledger item of the batch:

- ``created``: written to the destination by this batch;
- ``linked``: an equal record was already in the destination and did not come
  from this source account (a patient with the same first name, last name and
  date of birth; an individual appointment with the same start, practitioner and
  patient). A patient without a date of birth is never linked by name alone, and
  no destination record is ever linked to two source records;
- ``already_present``: an earlier batch of the same source and destination
  brought it;
- ``skipped``: with a reason code and a sentence (its practitioner is excluded,
  its patient is out of scope, it failed validation on a field...).

Near-matches that are not equal (the same name and date of birth matched more
than once, or a shared email alone, since families share one) are created and
flagged for review with a ``review_*`` reason code.

Each page is decided and written whole with its ledger rows and the stage's
progress (a savepoint; pages arriving fast are committed together at most every
``commit_interval`` seconds), so a run killed at any instant resumes from its last
committed page: it passes over the stages it had finished (the ledger marks each stage
finished with or after its last page), reads the others' lists again, passes over the
records already in the ledger for the batch, and ends with the same result as a clean
run. Scoped runs (business or practitioner) read their appointments once into a staging
file first, to learn which patients are in scope without reading the appointments twice.

A record an earlier batch brought is compared with its stored copy: when the source
changed it (a new address, a cancellation, an invoice paid), the destination record is
rewritten in place and the item is ``already_present`` with reason code ``updated``
(``cancelled``; ``update_refused`` and why, when the destination cannot take the change);
records the clinic set up or linked to are never rewritten, and a link the earlier batch
left empty (its record outside that batch's scope) is not filled in, so each batch can
still be deleted, the later one first. A
*top-up* (``top_up=``, see :mod:`migrator.topup`) reads only what changed since the
plan's last completed batch, and applies deletions at the source.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from migrator.cliniko.client import ClinikoClient
from migrator.cliniko.models import fast_dumper, model_for
from migrator.cliniko.pagination import Page
from migrator.cliniko.readahead import ReadAhead
from migrator.cliniko.resources import resource as registry_entry
from migrator.destinations import row_from_record
from migrator.errors import MappingError, MigratorError
from migrator.ledger import Item, Ledger, StageProgress
from migrator.mapping import validate as mapping_problems
from migrator.plan import MappingRow, Plan
from migrator.scope import Query, by_ids, changed_since, cheapest, direct_queries
from migrator.stages import MAPPED, STAGES, Stage
from migrator.stages import stage as stage_of
from migrator.topup import DELETED_AT_SOURCE, TopUp, deleted_source_id, remove_deleted, retryable

__all__ = ["ACTIONS", "Engine", "ProgressEvent", "RunResult", "RunStopped"]

log = logging.getLogger(__name__)

ACTIONS = ("created", "linked", "already_present", "skipped")
FORMER_PRACTITIONER = ("Former", "practitioner")

#: Entities the scope filter applies to directly, and the entities whose records
#: it follows through their patients.
_DIRECT = ("individual_appointments", "group_appointments", "unavailable_blocks", "invoices")
_BY_PATIENT = ("medical_alerts", "patient_attachments", "treatment_notes")
#: A validated record as its model's ``model_dump(mode="json")`` gives it: ids as strings,
#: links read into ``<rel>_id``, dates as ISO strings. Decisions read it; the store keeps it.
Dumped = dict[str, Any]

_SINGULAR = {
    "patients": "patient",
    "practitioners": "practitioner",
    "businesses": "business",
    "appointment_types": "appointment type",
    "group_appointments": "group appointment",
    "individual_appointments": "appointment",
    "invoices": "invoice",
    "contacts": "contact",
}


class _CollectorPacing:
    """While runs are under way, CPython's cyclic garbage collector passes less often.

    A run allocates millions of short-lived containers (parsed pages, models, rows) that
    reference counting frees on its own. At the default thresholds (a pass every 700
    allocations, and now and then one over the whole heap, which a migration's imports
    make large) the collector took a fifth of a run's time. With each generation's
    threshold raised to at least ``minimum`` the rare cycles are still collected, only
    later. The thresholds are the process's, so concurrent runs count themselves in and
    out and the last one out restores what the first one found. A collector switched off
    (first threshold 0) stays off.
    """

    def __init__(self, minimum: tuple[int, int, int]) -> None:
        self.minimum = minimum
        self._lock = threading.Lock()
        self._runs = 0
        self._saved: tuple[int, int, int] = gc.get_threshold()

    def __enter__(self) -> None:
        with self._lock:
            if self._runs == 0:
                self._saved = gc.get_threshold()
                if self._saved[0]:
                    first, second, third = (max(t, m) for t, m in zip(self._saved, self.minimum, strict=True))
                    gc.set_threshold(first, second, third)
            self._runs += 1

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._runs -= 1
            if self._runs == 0:
                gc.set_threshold(*self._saved)


#: A young pass every 10,000 allocations, a whole-heap one at most every 10 million.
_COLLECTOR = _CollectorPacing(minimum=(10_000, 10, 100))


class RunStopped(MigratorError):
    """The run was asked to stop; it can be resumed."""


#: What the progress callback receives after every page (the ledger's own record of it).
ProgressEvent = StageProgress


#: The counts :meth:`RunResult.__repr__` sums over entities.
_TOTALLED = ("in_scope", "created", "linked", "already_present", "skipped")


@dataclass(repr=False)
class RunResult:
    """What a run did: per entity counts, requests spent and seconds taken.

    ``updated`` counts, per entity, the records counted ``already_present`` that the batch
    rewrote in place because an earlier batch's copy no longer matched Cliniko (changed or
    cancelled there since, the copy edited, or a mapping changed): :func:`migrator.reconcile.updated`
    lists them.

    For a top-up, ``top_up`` says which batch it topped up, from when it read changes,
    and what it saved: ``requests_saved`` is the plan's last full run's requests less
    the top-up's own (all its runs, if it was resumed).
    """

    batch_id: str
    entities: dict[str, dict[str, int]]
    requests: int
    seconds: float
    resumed: bool = False
    top_up: TopUp | None = None
    batch_requests: int | None = None
    #: Requests sent with the destination's keys in this run (a Cliniko account); ``None`` for a local store.
    destination_requests: int | None = None
    updated: dict[str, int] = field(default_factory=dict)

    @property
    def requests_saved(self) -> int | None:
        """Requests the top-up saved against the plan's last full run (``None`` if not a top-up or unknown)."""
        if self.top_up is None or self.top_up.baseline_requests is None:
            return None
        return self.top_up.baseline_requests - (self.batch_requests or self.requests)

    def __repr__(self) -> str:
        """One line of totals (a notebook cell's echo), not every entity's counts: :meth:`as_dict` has those."""
        totals = {a: sum(c.get(a, 0) for c in self.entities.values()) for a in _TOTALLED}
        shown = ", ".join(f"{a}={n:,}" for a, n in totals.items())
        extra = f", updated={sum(self.updated.values()):,}" if self.updated else ""
        extra += f", top_up_of={self.top_up.of!r}" if self.top_up is not None else ""
        return (
            f"RunResult({self.batch_id!r}, entities={len(self.entities)}, {shown}{extra}, "
            f"requests={self.requests:,}, seconds={self.seconds:.1f}{', resumed' if self.resumed else ''})"
        )

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "batch_id": self.batch_id,
            "entities": self.entities,
            "requests": self.requests,
            "seconds": round(self.seconds, 2),
        }
        if self.updated:  # the four keys stay the whole object of a run that rewrote nothing
            out["updated"] = self.updated
        if self.destination_requests is not None:
            out["destination_requests"] = self.destination_requests
        if self.top_up is not None:
            out["top_up"] = {
                "of": self.top_up.of,
                "since": self.top_up.since.isoformat(),
                "requests": self.batch_requests or self.requests,
                "full_run_requests": self.top_up.baseline_requests,
                "requests_saved": self.requests_saved,
            }
        return out


@dataclass
class _Decision:
    source_id: str
    action: str
    dest_id: str | None = None
    reason_code: str | None = None
    reason: str | None = None
    row: dict[str, Any] | None = None  # to insert, for "created"
    update: dict[str, Any] | None = None  # to rewrite dest_id with, for "already_present"


@dataclass
class _Counter:
    done: int = 0
    total: int = 0
    listed: int = 0  # the records Cliniko said the stage's lists opened so far hold
    by_action: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ACTIONS, 0))


class Engine:
    """Runs one plan from a source account into a destination store.

    Args:
        plan: what to move (scope, data types, mappings); its mappings must be resolved.
        source: a read-only client of the source account.
        store: the destination (``LocalStore``), attached to ``ledger``'s connection.
        ledger: where batches, items and progress are kept.
        progress: called after every page with a :class:`ProgressEvent`.
        stop: set it (from any thread) to stop after the current page.
        actor: who is running it, for the audit trail.
        commit_interval: the most seconds of whole pages kept uncommitted (see
            :class:`~migrator.ledger.CommitGroup`); 0 commits every page on its own.
        read_ahead: how many lists beyond the current one may be read concurrently when
            the lists are known up front (see :meth:`_run_stages`); 0 reads one at a time.
        top_up: read only what changed since an earlier batch (:func:`migrator.workflow.top_up_point`);
            ignored when resuming a batch, which stays what it was started as.
    """

    def __init__(
        self,
        plan: Plan,
        source: ClinikoClient,
        store: Any,
        ledger: Ledger,
        *,
        progress: Callable[[ProgressEvent], None] | None = None,
        stop: threading.Event | None = None,
        actor: str = "cli",
        commit_interval: float = 0.5,
        read_ahead: int = 2,
        top_up: TopUp | None = None,
    ) -> None:
        self.plan = plan
        self.source = source
        self.store = store
        self.ledger = ledger
        self.progress = progress
        self.stop = stop or threading.Event()
        self.actor = actor
        self.commit_interval = commit_interval
        self.read_ahead = read_ahead
        self._group = ledger.commit_group(commit_interval)
        self.destination = store.describe()
        self.account = plan.source_account
        self._foreign: dict[str, bool] = {}
        # The destination records this run linked to, with the source record each went to: a page's
        # links reach the ledger only with the page, and two source records must never share one.
        self._claimed: dict[tuple[str, str], str] = {}
        self._counters: dict[str, _Counter] = {}
        # Stages whose every list this batch has read (an earlier run's, for a resumed batch).
        self._finished: set[str] = set()
        self._staging: sqlite3.Connection | None = None
        self._any_earlier = True
        self._earlier_batches: list[str] | None = None
        self.top_up = top_up
        # Mapped records' names, so a skip for an excluded practitioner or business names them.
        self._names: dict[tuple[str, str], str] = {
            (r.entity, r.source_id): r.source_name for r in plan.mappings
        }
        self.batch_id = ""
        self._referenced = _ReferencedItems(ledger, "")
        # A destination written through an API (Cliniko) commits its own writes; the
        # local store's rows commit with their ledger items.
        self._transactional = getattr(store, "transactional", True)
        if hasattr(store, "stop"):
            store.stop = self.stop

    # -- the run -----------------------------------------------------------------------

    def run(self, batch_id: str | None = None) -> RunResult:
        """Run the plan as a new batch, or resume ``batch_id``.

        Raises:
            MappingError: a mapping row is unresolved, or points at a destination record that
                is not there (nothing is written).
            RunStopped: :attr:`stop` was set; the batch is ``stopped`` and resumable.
            APIError: Cliniko failed beyond retries; the batch is ``failed`` and resumable.
        """
        requests_before = self.source.stats.requests
        written_before = getattr(self.store, "requests", None)  # a Cliniko account's keys
        self.plan.require_resolved()
        self._require_targets()
        self.ledger.require_writable()  # before the batch is recorded: a read-only store is no failed batch
        started = time.monotonic()
        resumed = batch_id is not None
        if batch_id is None:
            batch = self.ledger.create_batch(
                source_account=self.account,
                destination=self.destination,
                plan=json.loads(self.plan.to_json()),
                actor=self.actor,
            )
            batch_id = batch.id
            if self.top_up is not None:
                self.ledger.audit(
                    "top_up", actor=self.actor, batch_id=batch_id, detail=self.top_up.as_detail()
                )
        else:
            self.ledger.set_status(batch_id, "running", actor=self.actor, detail={"resumed": True})
            self.top_up = TopUp.recorded(self.ledger, batch_id)
        self.batch_id = batch_id
        self._referenced = _ReferencedItems(self.ledger, batch_id)
        self._load_counters(self.ledger.counts(batch_id) if resumed else {})
        self._finished = {p.stage for p in self.ledger.progress(batch_id) if p.finished} if resumed else set()
        self._any_earlier = self.top_up is not None or self.ledger.has_earlier_batch(
            self.destination, source_account=self.account, before=batch_id
        )

        def spent() -> dict[str, Any]:
            out = {"requests": self.source.stats.requests - requests_before}
            if written_before is not None:
                out["destination_requests"] = self.store.requests - written_before
            return out

        try:
            with _COLLECTOR, self._group:
                self._run_stages()
                if self.top_up is not None:
                    self._apply_deletions()
        except BaseException as exc:
            self._group.commit()  # again: a Ctrl+C may have cut its own commit short; its pages are whole
            self.ledger.save_counts(batch_id)
            detail: dict[str, Any] = {"interrupted": True} if isinstance(exc, KeyboardInterrupt) else {}
            if not isinstance(exc, RunStopped | KeyboardInterrupt):  # Ctrl+C stops it, as Stop does
                detail["error"] = str(exc) if isinstance(exc, MigratorError) else type(exc).__name__
            status = "failed" if "error" in detail else "stopped"
            self.ledger.set_status(batch_id, status, actor=self.actor, detail={**detail, **spent()})
            raise
        finally:
            if self._staging is not None:
                self._staging.close()
                self._staging = None
        counts = self.ledger.save_counts(batch_id)
        used = spent()
        self.ledger.set_status(batch_id, "completed", actor=self.actor, detail=used)
        self._drop_staging()
        return RunResult(
            batch_id=batch_id,
            entities=self._entity_counts(counts),
            requests=used["requests"],
            seconds=time.monotonic() - started,
            resumed=resumed,
            top_up=self.top_up,
            batch_requests=self.ledger.batch_requests(batch_id),
            destination_requests=used.get("destination_requests"),
            updated=self.ledger.updated_counts(batch_id),
        )

    def _require_targets(self) -> None:
        """Refuse a mapping the destination cannot honour, before a batch begins or resumes.

        A row mapped or reassigned to a record the destination does not have (a hand-edited
        file, a record deleted since) would otherwise stop the run part-way: the local store's
        foreign keys refuse the first appointment that uses it. Only the entities that rows
        point into are read.
        """
        problems = mapping_problems(
            self.plan.mappings, self.store.reference, can_create=not self.destination.startswith("cliniko:")
        )
        if problems:
            others = len(problems) - 1
            more = f" (and {others} more row{'s' if others > 1 else ''})" if others else ""
            raise MappingError(
                f"The mapping does not fit the destination: {problems[0].rstrip('.')}{more}. "
                f"Change {'those rows' if others else 'that row'} (on the Mapping page, in the mapping file or in "
                "the notebook's table), then run again."
            )

    def _stages(self) -> list[Stage]:
        included = set(self.plan.include) | set(MAPPED)
        return [s for s in STAGES if s.entity in included]

    def _entity_counts(self, counts: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
        result: dict[str, dict[str, int]] = {}
        for stage in self._stages():
            row = {action: counts.get(stage.entity, {}).get(action, 0) for action in ACTIONS}
            result[stage.entity] = {"in_scope": sum(row.values()), **row}
        return result

    def _load_counters(self, counts: dict[str, dict[str, int]]) -> None:
        """Start each stage's counters from the batch's items so far (none for a new batch)."""
        for stage in STAGES:
            counter = _Counter()
            for action, n in counts.get(stage.entity, {}).items():
                counter.by_action[action] = n
            counter.done = sum(counter.by_action.values())
            self._counters[stage.entity] = counter

    # -- stages ------------------------------------------------------------------------

    def _run_stages(self) -> None:
        """Every stage in order; runs of stages whose lists are known up front are read ahead.

        A stage's lists are known up front when the plan reads them whole (all data,
        and reference data in every scope); then the next lists' first pages are already
        on their way while this one is written (:class:`~migrator.cliniko.readahead.ReadAhead`),
        so list boundaries do not idle the budget when Cliniko answers slowly. Stages
        whose queries depend on what earlier stages found (a filter's patients, a top-up)
        are read one list at a time.

        A resumed batch passes over the stages an earlier run of it finished (the ledger's
        ``progress.finished_at``, written with or after the stage's last page): their items
        are in the ledger, which is where later stages resolve references from, so only the
        stage the run stopped in and those after it are read again. Records added at the
        source since to a finished stage are not brought by the resume; a top-up brings them,
        and what a later stage skipped for want of them.
        """
        stages = []
        for stage in self._stages():
            if stage.entity in self._finished:  # read by an earlier run of the batch: not read again
                self._report(stage.entity, final=True)
            else:
                stages.append(stage)
        start = 0
        while start < len(stages):
            end = start
            while end < len(stages) and self._static(stages[end]):
                end += 1
            if end == start:
                self._run_stage(stages[start], ((q, self._read(q)) for q in self._queries(stages[start])))
                start += 1
                continue
            run = stages[start:end]
            units = [(stage, Query(stage.entity, route)) for stage in run for route in self._routes(stage)]
            lists = ReadAhead([partial(self._read, query) for _, query in units], ahead=self.read_ahead)
            try:
                opened = iter(lists)
                for stage in run:
                    mine = [query for owner, query in units if owner is stage]
                    self._run_stage(stage, ((query, next(opened)) for query in mine))
            finally:
                lists.close()
            start = end

    def _static(self, stage: Stage) -> bool:
        return self.read_ahead > 0 and self.top_up is None and self._whole(stage.entity)

    def _run_stage(self, stage: Stage, lists: Iterator[tuple[Query, Iterator[Page]]]) -> None:
        counter = self._counters[stage.entity]
        for query, pages in lists:
            first = True
            for page in pages:
                if self.stop.is_set():
                    raise RunStopped(f"Batch {self.batch_id} was stopped; run it again to resume.")
                if first and page.total_entries is not None:
                    # What the list holds, so progress shows the stage's size, not the pages so far.
                    counter.listed += page.total_entries
                    counter.total = max(counter.total, counter.listed)
                first = False
                self._process(stage, query, page.records)
        self._finished.add(stage.entity)
        self._report(stage.entity, final=True)

    def _routes(self, stage: Stage) -> list[str | None]:
        """The list routes a stage reads: archived patients only if the plan wants them."""
        routes = [r for r in stage.routes if not (stage.entity == "patients" and r == "archived")]
        if stage.entity == "patients" and self.plan.include_archived_patients:
            routes.append("archived")
        return routes

    def _whole(self, entity: str) -> bool:
        """Whether the plan reads ``entity``'s whole lists (its scope does not narrow them)."""
        return (
            self.plan.scope.kind == "all"
            or entity in MAPPED
            or entity not in (*_DIRECT, *_BY_PATIENT, "patients", "attendees", "invoice_items")
        )

    def _queries(self, stage: Stage) -> list[Query]:
        if self.top_up is not None:
            return self._top_up_queries(stage, self.top_up)
        entity, scope = stage.entity, self.plan.scope
        routes = self._routes(stage)
        if self._whole(entity):
            return [Query(entity, route) for route in routes]
        if entity in self._staged_resources():
            return [Query(entity, "_staged")]
        if entity == "patients":
            wanted = self._scoped_patient_ids()
            total = self.source.count("patients")
            queries = cheapest("patients", "id", wanted, total)
            if self.plan.include_archived_patients:
                queries += cheapest(
                    "patients", "id", wanted, self.source.count("patients", route="archived"), "archived"
                )
            return queries
        if entity == "attendees":
            return by_ids("attendees", "booking_id", self._staged_ids("group_appointments"))
        if entity == "invoice_items":
            return by_ids("invoice_items", "invoice_id", self._batch_ids("invoices", exclude_skipped=True))
        if entity in _BY_PATIENT:
            patients = self._batch_ids("patients", exclude_skipped=True)
            return cheapest(entity, "patient_id", patients, self.source.count(entity))
        return direct_queries(entity, scope.kind, scope.ids)

    def _top_up_queries(self, stage: Stage, top_up: TopUp) -> list[Query]:
        """A top-up's queries: what changed since ``top_up.since``, and what may come across now.

        Changes are the plan's own queries narrowed by ``updated_at``. Under a business or
        practitioner filter a patient can *enter* the scope (a first appointment there):
        such patients, and their alerts, notes and files, are read whole, by id. Records
        an earlier batch skipped for want of something are read again by id.
        """
        entity, scope, since = stage.entity, self.plan.scope, top_up.since
        routes = self._routes(stage)
        retry = self._retry_queries(stage, top_up)
        if entity in self._staged_resources() and not self._whole(entity):
            return [Query(entity, "_staged")]  # the staging file holds the changes and the retries
        queries: list[Query]
        if self._whole(entity):
            queries = [changed_since(Query(entity, route), since) for route in routes]
        elif entity == "patients":
            wanted = self._scoped_patient_ids()
            known = self._earlier_ids("patients")
            entering = wanted - known
            queries = [q for route in routes for q in by_ids("patients", "id", entering, route)]
            keep = frozenset(known | wanted)
            queries += [changed_since(Query(entity, r, keep_field="id", keep=keep), since) for r in routes]
        elif entity == "attendees":
            groups = set(self._staged_ids("group_appointments"))
            keep = frozenset(self._earlier_ids("group_appointments") | groups)
            queries = by_ids("attendees", "booking_id", groups)
            queries += [
                changed_since(Query(entity, route, keep_field="booking_id", keep=keep), since)
                for route in (None, "cancelled")
            ]
            return queries + retry
        elif entity == "invoice_items":
            invoices = set(self._batch_ids("invoices", exclude_skipped=True))
            keep = frozenset(self._earlier_ids("invoices") | invoices)
            queries = by_ids("invoice_items", "invoice_id", invoices)
            queries.append(changed_since(Query(entity, keep_field="invoice_id", keep=keep), since))
        elif entity in _BY_PATIENT:
            patients = set(self._batch_ids("patients", exclude_skipped=True))
            known = self._earlier_ids("patients")
            queries = by_ids(entity, "patient_id", patients - known)
            keep = frozenset(known | patients)
            queries.append(changed_since(Query(entity, keep_field="patient_id", keep=keep), since))
        else:
            queries = [changed_since(q, since) for q in direct_queries(entity, scope.kind, scope.ids)]
        if entity == "individual_appointments":
            queries.append(changed_since(Query(entity, "cancelled"), since, "cancelled_at"))
        elif entity == "attendees":
            queries.append(changed_since(Query(entity, "cancelled"), since))
        return queries + retry

    def _retry_queries(self, stage: Stage, top_up: TopUp) -> list[Query]:
        """By id, the records the plan's newest batches skipped for want of something else."""
        if not top_up.chain:
            return []
        latest = self.ledger.latest_items(top_up.chain, stage.entity)
        ids = [
            sid for sid, item in latest.items() if item.action == "skipped" and retryable(item.reason_code)
        ]
        if not ids:
            return []
        routes = self._routes(stage) if stage.entity == "patients" else [None]
        return [q for route in routes for q in by_ids(stage.entity, "id", ids, route)]

    def _earlier_batches_ids(self) -> list[str]:
        """The other live batches that moved this source account into this destination."""
        if self._earlier_batches is None:
            self._earlier_batches = [
                b.id
                for b in self.ledger.live_batches(self.destination, source_account=self.account)
                if b.id != self.batch_id
            ]
        return self._earlier_batches

    def _earlier_ids(self, entity: str) -> set[str]:
        """Source ids of ``entity`` that earlier batches brought and that are still there (not skipped since)."""
        latest = self.ledger.latest_items(self._earlier_batches_ids(), entity)
        return {sid for sid, item in latest.items() if item.action != "skipped"}

    def _read(self, query: Query) -> Iterator[Page]:
        """Pages of raw records for a query (from the staging file for staged appointments).

        A page's ``total_entries`` is what its list holds, where that is known: not when
        the query keeps only some of the list's records.
        """
        if query.route == "_staged":
            yield from self._staged_pages(query.resource)
            return
        for page in self.source.pages(query.resource, query.filters, route=query.route):
            records, total = page.records, page.total_entries
            if query.keep is not None and query.keep_field is not None:
                records = [r for r in records if _raw_id(r, query.keep_field) in query.keep]
                total = None
            if query.route is not None:
                records = [{**r, "_route": query.route} for r in records]
            yield Page(page.number, records, total, page.next_url)

    # -- scoped runs: staging what the filter selects directly ----------------------------

    def _staging_db(self) -> sqlite3.Connection:
        if self._staging is None:
            path = self._staging_path()
            path.parent.mkdir(parents=True, exist_ok=True)
            self._staging = sqlite3.connect(path)
            self._staging.execute(
                "CREATE TABLE IF NOT EXISTS records (resource TEXT, source_id TEXT, raw TEXT, PRIMARY KEY (resource, source_id))"
            )
            self._staging.execute("CREATE TABLE IF NOT EXISTS done (resource TEXT PRIMARY KEY)")
        return self._staging

    def _staging_path(self) -> Path:
        return Path(self.ledger.workspace) / "staging" / f"{self.batch_id}.db"

    def _drop_staging(self) -> None:
        """Remove the finished batch's staging file, and the ``staging`` folder once nothing else is in it."""
        path = self._staging_path()
        path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # another batch's file still there (or no folder): it stays
            path.parent.rmdir()

    def _staged_resources(self) -> tuple[str, ...]:
        """What a scoped run reads before its patients, as those records name the patients in scope.

        The appointments in scope (individual ones always, since they name most patients),
        the invoices issued at the businesses or by the practitioners, and the notes the
        practitioners wrote: every such invoice and note comes across with its patient,
        rather than being skipped for a patient no appointment in scope names.
        """
        kind = self.plan.scope.kind
        if kind == "all":
            return ()
        wanted = ["group_appointments", "invoices", *(["treatment_notes"] if kind == "practitioner" else [])]
        return ("individual_appointments", *(r for r in wanted if r in self.plan.include))

    def _stage(self) -> None:
        """Read once into the staging file what the scope selects directly (:meth:`_staged_resources`)."""
        db = self._staging_db()
        scope = self.plan.scope
        for resource in self._staged_resources():
            if db.execute("SELECT 1 FROM done WHERE resource = ?", (resource,)).fetchone():
                continue
            queries = direct_queries(resource, scope.kind, scope.ids)
            if self.top_up is not None:
                since = self.top_up.since
                queries = [changed_since(q, since) for q in queries]
                if resource == "individual_appointments":
                    cancelled = direct_queries(resource, scope.kind, scope.ids, "cancelled")
                    queries += [changed_since(q, since, "cancelled_at") for q in cancelled]
                queries += self._retry_queries(stage_of(resource), self.top_up)
            for query in queries:
                for page in self.source.pages(query.resource, query.filters, route=query.route):
                    if self.stop.is_set():
                        raise RunStopped(f"Batch {self.batch_id} was stopped; run it again to resume.")
                    with db:
                        db.executemany(
                            "INSERT OR REPLACE INTO records VALUES (?, ?, ?)",
                            [(resource, str(r.get("id")), json.dumps(r)) for r in page.records],
                        )
            with db:
                db.execute("INSERT OR REPLACE INTO done VALUES (?)", (resource,))

    def _staged_pages(self, resource: str) -> Iterator[Page]:
        self._stage()
        db = self._staging_db()
        ((total,),) = db.execute("SELECT count(*) FROM records WHERE resource = ?", (resource,))
        cursor = db.execute("SELECT raw FROM records WHERE resource = ? ORDER BY rowid", (resource,))
        number = 0
        while rows := cursor.fetchmany(100):
            number += 1
            yield Page(number, [json.loads(raw) for (raw,) in rows], total, None)

    def _staged_ids(self, resource: str) -> list[str]:
        self._stage()
        rows = self._staging_db().execute("SELECT source_id FROM records WHERE resource = ?", (resource,))
        return [source_id for (source_id,) in rows]

    def _scoped_patient_ids(self) -> set[str]:
        """The scope's patients: those its appointments (individual, and group via ``patient_ids``),
        invoices and (under a practitioner filter) notes name."""
        self._stage()
        wanted: set[str] = set()
        for (raw,) in self._staging_db().execute("SELECT raw FROM records"):
            record = json.loads(raw)
            patient = _raw_id(record, "patient_id")
            if patient:
                wanted.add(patient)
            wanted.update(str(p) for p in record.get("patient_ids") or ())
        return wanted

    def _batch_ids(self, entity: str, *, exclude_skipped: bool) -> list[str]:
        items = self.ledger.items(self.batch_id, entity)
        return [i.source_id for i in items if not (exclude_skipped and i.action == "skipped")]

    # -- one page ----------------------------------------------------------------------

    def _process(self, stage: Stage, query: Query, raws: list[dict[str, Any]]) -> None:
        counter = self._counters[stage.entity]
        if not raws:
            return
        ids = [str(r.get("id")) for r in raws]
        done = self._recorded(stage.entity, ids)
        fresh = [r for r, source_id in zip(raws, ids, strict=True) if source_id not in done] if done else raws
        counter.total = max(counter.total, counter.done + len(fresh))
        if not fresh:
            return
        decisions = (
            self._decide_mapped(stage, fresh) if stage.entity in MAPPED else self._decide(stage, fresh)
        )
        creates = [d for d in decisions if d.action == "created" and d.row is not None]
        updates = [d for d in decisions if d.update is not None and d.dest_id]
        if (creates or updates) and not self._transactional:
            # Writes through an API cannot join the ledger's transaction: the destination
            # commits its own intents and ids, so nothing pending may be held open around it.
            self._group.commit()
            if creates:
                self._insert(stage.entity, creates)
            if updates:
                self._update(stage.entity, updates)
            creates, updates = [], []
        self._group.open()
        with self.ledger.transaction():
            if creates:
                self._insert(stage.entity, creates)
            if updates:
                self._update(stage.entity, updates)
            items = [
                Item(stage.entity, d.source_id, d.dest_id, d.action, d.reason_code, d.reason)
                for d in decisions
            ]
            self.ledger.record_items(self.batch_id, items)
            for d in decisions:
                counter.by_action[d.action] += 1
            counter.done += len(decisions)
            self._report(stage.entity)
        self._referenced.remember(stage.entity, items)
        self._group.commit_if_due()

    def _insert(self, entity: str, creates: list[_Decision]) -> None:
        """Create the records of these decisions; one the destination refuses becomes a skip.

        One created without part of its record (a patient's answers to custom fields the
        Cliniko account lacks) keeps its item, flagged ``custom_fields_left`` with what stayed.
        """
        ids = self.store.insert(
            entity, [d.row for d in creates], batch_id=self.batch_id, source_account=self.account
        )
        for decision, dest_id in zip(creates, ids, strict=True):
            if isinstance(dest_id, Exception):
                decision.action, decision.row = "skipped", None
                decision.reason_code, decision.reason = "destination_refused", str(dest_id)
                continue
            decision.dest_id = dest_id
            self._flag_left_behind(entity, decision, decision.row, "Created")

    def _update(self, entity: str, updates: list[_Decision]) -> None:
        """Rewrite records the source changed; one the destination refuses keeps its item, with why.

        One rewritten without part of it (answers to custom fields the Cliniko account still
        lacks) is flagged ``custom_fields_left``, like a create.
        """
        outcomes = self.store.update(
            entity,
            [(d.dest_id, d.update) for d in updates],
            source_account=self.account,
            batch_id=self.batch_id,
        )
        for decision, outcome in zip(updates, outcomes, strict=True):
            if isinstance(outcome, Exception):
                decision.reason_code = "update_refused"
                decision.reason = (
                    f"Changed in Cliniko since an earlier batch brought it, but not updated: {outcome}"
                )
            else:
                self._flag_left_behind(entity, decision, decision.update, "Updated")

    def _flag_left_behind(
        self, entity: str, decision: _Decision, row: dict[str, Any] | None, done: str
    ) -> None:
        """Flag ``custom_fields_left`` a record written without part of it, naming what stayed.

        A create keeps a ``review_*`` code it already has; a rewrite's ``updated`` gives way
        (its sentence still says it was updated), so the flagged list shows it either way.
        """
        left_behind = getattr(self.store, "left_behind", None)
        missing = left_behind(entity, row) if left_behind is not None and row is not None else None
        if not missing:
            return
        why = f"{done} without the answers the destination has no custom field for: {'; '.join(missing)}."
        if decision.reason_code in (None, "updated"):
            decision.reason_code = "custom_fields_left"
        decision.reason = f"{decision.reason} {why}" if decision.reason else why

    # -- a top-up's deletions -------------------------------------------------------------

    def _apply_deletions(self) -> None:
        """Read each included entity's ``/deleted`` list since the top-up's start; apply it, children first."""
        assert self.top_up is not None
        for stage in reversed(self._stages()):
            if "deleted" not in registry_entry(stage.entity).list_routes:
                continue
            for page in self.source.pages(stage.entity, self.top_up.filters(), route="deleted"):
                if self.stop.is_set():
                    raise RunStopped(f"Batch {self.batch_id} was stopped; run it again to resume.")
                ids = [i for i in (deleted_source_id(r) for r in page.records) if i is not None]
                done = self._recorded(stage.entity, ids)
                fresh = [i for i in ids if i not in done]
                if fresh:
                    self._remove_deleted(stage.entity, fresh)
            self._report(stage.entity, final=True)

    def _remove_deleted(self, entity: str, source_ids: list[str]) -> None:
        self._group.open()
        with self.ledger.transaction():
            items = remove_deleted(
                self.ledger,
                self.store,
                entity,
                source_ids,
                destination=self.destination,
                source_account=self.account,
            )
            by_entity: dict[str, list[Item]] = {}
            for item in items:
                by_entity.setdefault(item.entity, []).append(item)
            for child, group in by_entity.items():
                # A record this batch already handled (updated, then its invoice deleted) changes its item.
                before = self.ledger.items_for(self.batch_id, child, [i.source_id for i in group])
                counter = self._counters[child]
                for item in group:
                    previous = before.get(item.source_id)
                    if previous is not None:
                        counter.by_action[previous.action] -= 1
                        counter.done -= 1
                    counter.by_action[item.action] += 1
                    counter.done += 1
                self.ledger.record_items(self.batch_id, group)
                self._report(child)
        for child, group in by_entity.items():
            self._referenced.remember(child, group)
        self._group.commit_if_due()

    def _report(self, entity: str, *, final: bool = False) -> None:
        counter = self._counters[entity]
        if final:
            counter.total = counter.done
        event = self.ledger.update_progress(
            self.batch_id,
            entity,
            done=counter.done,
            total=max(counter.total, counter.done),
            created=counter.by_action["created"],
            linked=counter.by_action["linked"],
            already_present=counter.by_action["already_present"],
            skipped=counter.by_action["skipped"],
            finished=entity in self._finished,
        )
        if self.progress is not None:
            self.progress(event)

    def _recorded(self, entity: str, source_ids: list[str]) -> set[str]:
        """Which of these records this batch has already handled (a resumed run passes them over)."""
        return set(self.ledger.items_for(self.batch_id, entity, source_ids))

    def _validate(
        self, entity: str, raws: list[dict[str, Any]]
    ) -> list[tuple[dict[str, Any], Dumped | None, _Decision | None]]:
        """Each record as ``model_dump(mode="json")`` of its model gives it, or the skip its validation earns.

        The fast dumper (:func:`~migrator.cliniko.models.fast_dumper`) answers for the usual
        record at about half of pydantic's cost; pydantic validates and dumps the rest.
        """
        out: list[tuple[dict[str, Any], Dumped | None, _Decision | None]] = []
        model = model_for(entity)
        fast = fast_dumper(model)
        # parse_record's validation and model_dump(mode="json"), called straight.
        validate = model.__pydantic_validator__.validate_python
        dump = model.__pydantic_serializer__.to_python
        for raw in raws:
            # The list's route is ours, not Cliniko's; validation copies what it keeps anyway.
            data = raw if "_route" not in raw else {k: v for k, v in raw.items() if k != "_route"}
            record = fast(data) if fast is not None else None
            if record is not None:
                out.append((raw, record, None))
                continue
            try:
                out.append((raw, dump(validate(data), mode="json"), None))
            except ValidationError as exc:
                source_id = str(raw.get("id"))
                error = exc.errors()[0]
                where = ".".join(str(p) for p in error.get("loc", ())) or "the record"
                out.append(
                    (
                        raw,
                        None,
                        _Decision(
                            source_id,
                            "skipped",
                            reason_code="invalid",
                            reason=f"Failed validation on field {where}: {error.get('msg', 'invalid value')}.",
                        ),
                    )
                )
        return out

    # -- decisions: mapped entities ------------------------------------------------------

    def _decide_mapped(self, stage: Stage, raws: list[dict[str, Any]]) -> list[_Decision]:
        mapping = self.plan.mapping_for(stage.entity)
        decisions: list[_Decision] = []
        for raw, record, invalid in self._validate(stage.entity, raws):
            if invalid is not None or record is None:
                decisions.append(invalid or _Decision(str(raw.get("id")), "skipped", reason_code="invalid"))
                continue
            row = mapping.get(record["id"])
            name = _display_name(stage.entity, record)
            if row is None:
                decisions.append(
                    _Decision(
                        record["id"],
                        "skipped",
                        reason_code="unmapped",
                        reason=f"The {_SINGULAR[stage.entity]} {name} appeared after the mapping was made; map it and run again.",
                    )
                )
                continue
            decisions.append(self._apply_mapping(stage, raw, record, row, name))
        return decisions

    def _apply_mapping(
        self, stage: Stage, raw: dict[str, Any], record: Dumped, row: MappingRow, name: str
    ) -> _Decision:
        if row.action == "exclude":
            code = f"{_SINGULAR[stage.entity].replace(' ', '_')}_excluded"
            return _Decision(
                record["id"],
                "skipped",
                reason_code=code,
                reason=f"The {_SINGULAR[stage.entity]} {name} is excluded by the mapping.",
            )
        previous = self.ledger.dest_id_for(
            self.destination, stage.entity, record["id"], source_account=self.account
        )
        if previous is not None:
            target = row.target_id
            if row.action == "former" and target is None:
                target = self._existing_former_practitioner()
            if row.action == "create" or target == previous[1]:  # as the earlier batch left it
                stored = self._stored(stage.entity, [previous[1]])
                if previous[1] in stored:
                    return self._already_present(stage, raw, record, {}, previous[1], stored)
        if row.action in ("map", "reassign") and row.target_id:
            return _Decision(
                record["id"], "linked", dest_id=row.target_id, reason_code=f"mapped_{row.action}"
            )
        if row.action == "former":
            target = row.target_id or self._former_practitioner()
            return _Decision(record["id"], "linked", dest_id=target, reason_code="mapped_former")
        return _Decision(record["id"], "created", row=self._row(stage, raw, record, {}))

    def _existing_former_practitioner(self) -> str | None:
        """The destination's generic "Former practitioner", if it has one."""
        reference = self.store.reference("practitioners")
        wanted = " ".join(FORMER_PRACTITIONER).lower()
        for dest_id, name in zip(reference["id"].to_list(), reference["name"].to_list(), strict=True):
            if (name or "").strip().lower() == wanted:
                return str(dest_id)
        return None

    def _former_practitioner(self) -> str:
        """The generic "Former practitioner" of seed 001, created once in the destination."""
        existing = self._existing_former_practitioner()
        if existing is not None:
            return existing
        first, last = FORMER_PRACTITIONER
        self.store.setup_reference(
            "practitioners",
            [
                {
                    "first_name": first,
                    "last_name": last,
                    "active": False,
                    "data": {"first_name": first, "last_name": last},
                }
            ],
        )
        return self._former_practitioner()

    # -- decisions: everything else ------------------------------------------------------

    def _decide(self, stage: Stage, raws: list[dict[str, Any]]) -> list[_Decision]:
        validated = self._validate(stage.entity, raws)
        # Destination ids of everything this page refers to, one query per target entity.
        wanted: dict[str, set[str]] = {}
        for _, record, _ in validated:
            if record is None:
                continue
            for fk, target in stage.fks.items():
                value = record.get(fk)
                if value:
                    wanted.setdefault(target, set()).add(str(value))
        resolved = {target: self._referenced.get(target, ids) for target, ids in wanted.items()}
        if self._any_earlier:
            # What this batch did not read again (a top-up reads only changes) an earlier batch may have brought.
            for target, ids in wanted.items():
                missing = [i for i in ids if i not in resolved[target]]
                if missing:
                    resolved[target].update(
                        self.ledger.latest_items(self._earlier_batches_ids(), target, missing)
                    )
        earlier = self._earlier(stage.entity, [r["id"] for _, r, _ in validated if r is not None])
        stored = self._stored(stage.entity, earlier.values())

        decisions: list[_Decision] = []
        lookups = [(fk, target, resolved.get(target, {})) for fk, target in stage.fks.items()]
        for raw, record, invalid in validated:
            if record is None:
                decisions.append(invalid or _Decision(str(raw.get("id")), "skipped", reason_code="invalid"))
                continue
            fk_dest: dict[str, str | None] = {}
            skip: _Decision | None = None
            unlinked: list[tuple[str, str, str]] = []  # optional links to records this batch skipped
            for fk, target, found in lookups:
                value = record.get(fk)
                hit = found.get(str(value)) if value else None
                if hit is not None and hit.action != "skipped":
                    fk_dest[fk] = hit.dest_id
                    continue
                fk_dest[fk] = None
                if fk in stage.required:
                    skip = skip or _skip_for(
                        record["id"], fk, target, value, hit, self._names.get((target, str(value)))
                    )
                elif hit is not None:
                    unlinked.append((fk, target, str(value)))
            if skip is not None:
                decisions.append(skip)
                continue
            if earlier.get(record["id"]) in stored:
                fk_dest.update(self._earlier_links(unlinked))
                decisions.append(
                    self._already_present(stage, raw, record, fk_dest, earlier[record["id"]], stored)
                )
                continue
            # Never brought, or its destination record is gone (removed by hand): it comes across anew.
            decision = self._link_or_create(stage, raw, record, fk_dest)
            if decision.action == "linked" and decision.dest_id is not None:
                self._claimed[(stage.entity, decision.dest_id)] = record["id"]
            decisions.append(decision)
        return decisions

    def _earlier_links(self, unlinked: list[tuple[str, str, str]]) -> dict[str, str]:
        """``{fk: destination id}`` for links of a record an earlier batch brought to records this batch
        skipped (``(fk, target entity, source id)``), where an earlier batch's copy of the target is on record.

        Say a batch brought a practitioner's appointments and invoices under "Former
        practitioner", and a new plan excludes that practitioner: the new batch skips the
        appointments, but the earlier copies stay (flagged, :data:`~migrator.ledger.KEPT_FROM_EARLIER`),
        and the invoices it finds already present keep their links to them rather than be
        rewritten without, as if Cliniko had changed. The copy is the newest earlier batch's that
        brought the target: batches that skipped it since (the same exclude plan run again, or
        topped up) did not remove it, but a top-up that found it deleted at the source did. Rare
        (a page whose records link to skipped ones), so one lookup per link and batch.
        """
        links: dict[str, str] = {}
        for fk, target, source_id in unlinked:
            for batch_id in self._earlier_batches_ids():  # newest first
                item = self.ledger.item(batch_id, target, source_id)
                if item is None or (item.action == "skipped" and item.reason_code != DELETED_AT_SOURCE):
                    continue
                if item.action != "skipped" and item.dest_id is not None:
                    links[fk] = item.dest_id
                break
        return links

    def _stored(self, entity: str, dest_ids: Iterable[str]) -> dict[str, dict[str, Any] | None]:
        """The stored form of records earlier batches brought (``None``: not ours to rewrite)."""
        ids = list(dest_ids)
        if not ids:
            return {}
        if not hasattr(self.store, "stored_rows"):  # a destination that cannot compare: leave them be
            return dict.fromkeys(ids)
        stored: dict[str, dict[str, Any] | None] = self.store.stored_rows(
            entity, ids, source_account=self.account, batch_id=self.batch_id
        )
        return stored

    def _already_present(
        self,
        stage: Stage,
        raw: dict[str, Any],
        record: Dumped,
        fk_dest: dict[str, str | None],
        dest_id: str,
        stored: dict[str, dict[str, Any] | None],
    ) -> _Decision:
        """An earlier batch brought it: rewrite it in place if the source changed it since."""
        before = stored.get(dest_id)
        if before is None:
            return _Decision(record["id"], "already_present", dest_id=dest_id, reason_code="earlier_batch")
        row = self._row(stage, raw, record, fk_dest)
        # A link the earlier batch left empty (say, a note's appointment outside a business
        # scope) stays empty when a wider batch brings its record: filled in, the earlier
        # batch's record would rely on this one's, while this batch relies on the earlier
        # one's patients, and neither batch could be deleted before the other.
        late = [fk for fk in stage.fks if row.get(fk) is not None and before.get(fk) is None]
        if late:
            row.update(dict.fromkeys(late))
        after = self.store.stored_form(stage.entity, row)
        if after == before:
            return _Decision(record["id"], "already_present", dest_id=dest_id, reason_code="earlier_batch")
        if after.get("cancelled_at") and not before.get("cancelled_at"):
            code, why = (
                "cancelled",
                "Cancelled in Cliniko since an earlier batch brought it; cancelled here too.",
            )
        else:
            changed = [k for k in after if k != "data" and after[k] != before.get(k)] + _changed_in_data(
                before.get("data"), after.get("data")
            )
            what = f" ({', '.join(list(dict.fromkeys(changed))[:4])})" if changed else ""
            if "data" in before and before["data"] == after["data"]:
                # The record as Cliniko sends it is the same (its updated_at would have moved), so
                # the difference is on this side: the copy was edited, or a mapping changed since.
                code, why = (
                    "review_rewritten",
                    "Cliniko's record has not changed since an earlier batch brought it, but the destination's "
                    f"copy differs{what}: edited there, or a mapping changed since; rewritten from Cliniko.",
                )
            else:
                code, why = (
                    "updated",
                    f"Changed in Cliniko since an earlier batch brought it{what}; updated in place.",
                )
        return _Decision(
            record["id"], "already_present", dest_id=dest_id, reason_code=code, reason=why, update=row
        )

    def _earlier(self, entity: str, source_ids: list[str]) -> dict[str, str]:
        """Records an earlier (not deleted) batch into the same destination already brought."""
        if not self._any_earlier:
            return {}
        hits = self.ledger.dest_ids_for(self.destination, entity, source_ids, source_account=self.account)
        return {source_id: dest_id for source_id, (_, dest_id) in hits.items() if dest_id is not None}

    def _link_or_create(
        self, stage: Stage, raw: dict[str, Any], record: Dumped, fk_dest: dict[str, str | None]
    ) -> _Decision:
        row = self._row(stage, raw, record, fk_dest)
        if not self._has_foreign_records(stage.entity):
            return _Decision(record["id"], "created", row=row)  # nothing there to link to
        if stage.entity == "patients":
            return self._link_patient(record, row)
        if hasattr(self.store, "find_same_name") and stage.entity not in ("patients",):
            name = record.get("name")
            same = self.store.find_same_name(stage.entity, name, exclude_source_account=self.account)
            free = [m for m in same if not self._linked_elsewhere(stage.entity, m, record["id"])]
            if free:
                return _Decision(record["id"], "linked", dest_id=free[0], reason_code="same_name")
        if stage.entity == "individual_appointments":
            matches = self.store.find_individual_appointment(
                record.get("starts_at"),  # the store compares it as the same instant in UTC
                fk_dest["practitioner_id"],
                fk_dest["patient_id"],
                exclude_source_account=self.account,
            )
            free = [m for m in matches if not self._linked_elsewhere(stage.entity, m, record["id"])]
            if len(free) == 1:
                return _Decision(
                    record["id"], "linked", dest_id=free[0], reason_code="same_start_practitioner_patient"
                )
        return _Decision(record["id"], "created", row=row)

    def _has_foreign_records(self, entity: str) -> bool:
        """Whether the destination holds any record of ``entity`` that did not come from this source.

        Only such records can be linked to, so when there are none (a fresh store, the
        usual case) the per-record look-ups are skipped. Asked once per entity per run.
        """
        if entity not in self._foreign:
            self._foreign[entity] = self.store.has_foreign(entity, source_account=self.account)
        return self._foreign[entity]

    def _link_patient(self, record: Dumped, row: dict[str, Any]) -> _Decision:
        first, last = record.get("first_name"), record.get("last_name")
        born = record.get("date_of_birth")
        if born is not None and first and last:
            matches = self.store.find_patients(first, last, born, exclude_source_account=self.account)
            free = [m for m in matches if not self._linked_elsewhere("patients", m, record["id"])]
            if len(free) == 1:
                return _Decision(
                    record["id"], "linked", dest_id=free[0], reason_code="same_name_and_birth_date"
                )
            if len(free) > 1:
                return _Decision(
                    record["id"],
                    "created",
                    row=row,
                    reason_code="review_ambiguous_match",
                    reason=f"{len(free)} patients in the destination share this name and date of birth; created anew for review.",
                )
            if matches:  # twins, or one person twice at the source: the match already went to another
                return _Decision(
                    record["id"],
                    "created",
                    row=row,
                    reason_code="review_ambiguous_match",
                    reason="The destination's patient with this name and date of birth is already linked to another "
                    "source patient; created anew for review.",
                )
        email = record.get("email")
        if email and self.store.find_patients_by_email(email, exclude_source_account=self.account):
            return _Decision(
                record["id"],
                "created",
                row=row,
                reason_code="review_shared_email",
                reason="A destination patient has the same email but not the same name and date of birth (families share emails); created anew for review.",
            )
        return _Decision(record["id"], "created", row=row)

    def _linked_elsewhere(self, entity: str, dest_id: str, source_id: str) -> bool:
        """Whether another record of this source is linked to ``dest_id``: earlier in this run, or in the ledger."""
        claimed = self._claimed.get((entity, dest_id))
        if claimed is not None and claimed != source_id:
            return True
        return self.ledger.linked_elsewhere(
            self.destination, entity, dest_id, source_id=source_id, source_account=self.account
        )

    def _row(
        self, stage: Stage, raw: dict[str, Any], record: Dumped, fk_dest: dict[str, str | None]
    ) -> dict[str, Any]:
        """The store's row: its columns from the record, foreign keys as destination ids."""
        row = row_from_record(stage.entity, record, fk_dest)
        if stage.entity == "practitioners":
            row["active"] = raw.get("_route") != "inactive"
        return row


class _ReferencedItems:
    """The batch's items of entities that records refer to, as the ledger has them, for one run.

    Appointments, notes and invoices refer page after page to the same practitioners,
    businesses and patients, and invoices to the appointments just written. The run keeps
    the items it writes of such entities (:meth:`remember`, next to every write) and
    those it had to read (an earlier run of the batch wrote them), so most references are
    resolved without asking the ledger; an id not known is asked each time, as the batch
    may deal with it yet. At most ``limit`` items are kept: past that the memory starts
    afresh, so a large clinic's run stays within bounds.
    """

    #: The entities some stage refers to; only their items are kept.
    TARGETS = frozenset(target for stage in STAGES for target in stage.fks.values())

    def __init__(self, ledger: Ledger, batch_id: str, limit: int = 20_000) -> None:
        self.ledger = ledger
        self.batch_id = batch_id
        self.limit = limit
        self._items: dict[str, dict[str, Item]] = {}
        self._size = 0

    def get(self, entity: str, source_ids: Iterable[str]) -> dict[str, Item]:
        """This batch's items of ``entity`` for these source ids: ``{source_id: item}`` (a new dict)."""
        known = self._items.get(entity, {})
        found: dict[str, Item] = {}
        missing: list[str] = []
        for source_id in source_ids:
            item = known.get(source_id)
            if item is None:
                missing.append(source_id)
            else:
                found[source_id] = item
        if missing:
            fetched = self.ledger.items_for(self.batch_id, entity, missing)
            self._keep(entity, fetched)
            found.update(fetched)
        return found

    def remember(self, entity: str, items: list[Item]) -> None:
        """Keep items just written for ``entity`` (replacing what was kept of the same records)."""
        if entity in self.TARGETS:
            self._keep(entity, {item.source_id: item for item in items})

    def _keep(self, entity: str, items: dict[str, Item]) -> None:
        if self._size + len(items) > self.limit:
            self._items, self._size = {}, 0
        self._items.setdefault(entity, {}).update(items)
        self._size += len(items)


#: Fields of Cliniko's record that change with every change of it, or say nothing of the record's own.
_BOOKKEEPING = frozenset({"updated_at", "links"})


def _changed_in_data(before: object, after: object) -> list[str]:
    """Fields of Cliniko's record (a store's ``data`` text) that differ, other than :data:`_BOOKKEEPING`.

    What a change held only there (an appointment's ``notes``, say) names, as the store's own
    columns name theirs. Nothing when either side is not such text (a Cliniko destination's form).
    """
    if not (isinstance(before, str) and isinstance(after, str)) or before == after:
        return []
    try:
        old, new = json.loads(before), json.loads(after)
    except ValueError:
        return []
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return []
    return [k for k in dict.fromkeys([*new, *old]) if k not in _BOOKKEEPING and old.get(k) != new.get(k)]


def _skip_for(
    source_id: str, fk: str, target: str, value: object, hit: Item | None, name: str | None = None
) -> _Decision:
    """A record skipped for its link ``fk`` to ``value`` (of ``target``); ``name``: that record's, if mapped."""
    thing = _SINGULAR.get(target, target.rstrip("s"))
    if not value:
        return _Decision(source_id, "skipped", reason_code=f"missing_{fk}", reason=f"It has no {thing}.")
    if hit is not None:  # the referenced record was skipped
        code = (
            hit.reason_code
            if hit.reason_code in ("practitioner_excluded", "business_excluded")
            else f"{thing.replace(' ', '_')}_skipped"
        )
        return _Decision(
            source_id,
            "skipped",
            reason_code=code,
            reason=f"Its {thing} {f'{name} ({value})' if name else value} was skipped ({hit.reason_code}).",
        )
    if target == "patients":
        return _Decision(
            source_id,
            "skipped",
            reason_code="patient_out_of_scope",
            reason=f"Its patient {value} is not in this migration's scope.",
        )
    return _Decision(
        source_id,
        "skipped",
        reason_code=f"{thing.replace(' ', '_')}_not_found",
        reason=f"Its {thing} {value} was not found at the source.",
    )


def _raw_id(raw: dict[str, Any], field: str) -> str | None:
    """A foreign key's id straight from raw JSON (``patient_id`` from the ``patient`` link)."""
    if field == "id":
        return str(raw.get("id"))
    rel = field.removesuffix("_id")
    link = raw.get(rel)
    if isinstance(link, dict):
        url = (link.get("links") or {}).get("self")
        if url:
            return str(url).split("?")[0].rstrip("/").rsplit("/", 1)[-1]
    value = raw.get(field)
    return str(value) if value is not None else None


def _display_name(entity: str, record: Dumped) -> str:
    if entity == "businesses":
        return str(record.get("business_name") or record["id"])
    if entity == "practitioners":
        return (
            " ".join(p for p in (record.get("first_name", ""), record.get("last_name", "")) if p)
            or record["id"]
        )
    return str(record.get("name") or record["id"])
