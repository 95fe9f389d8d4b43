"""Migration runs in background threads, shared by every console session of this process.

A run outlives the page that started it: leaving the page, refreshing the browser or
opening a second tab neither stops it nor starts it twice. The console keeps one
:class:`RunRegistry` per server process (``st.cache_resource``); a page follows a run by
reading the ledger, never by holding the thread.

>>> registry = RunRegistry()
>>> handle = registry.start(plan, key, workspace="workspace", client_config=config)  # doctest: +SKIP
>>> handle.batch_id                                                                   # doctest: +SKIP
'b20261121-135301-3f9a'
>>> registry.start(plan, key, workspace="workspace", client_config=config) is handle  # doctest: +SKIP
True

Rules:

- Starting a plan that is already running in this process returns its handle: no second thread.
- One run at a time goes into a destination: starting another plan into the same store
  while one runs is refused with a sentence (two engines would race on the same records).
- A plan with an unfinished batch (stopped, failed, or killed with its process) resumes
  that batch, as the CLI does; a batch running in another live process is refused
  (:func:`~migrator.workflow.unfinished_batch`).
- The source key (a ``SecretStr``) lives in the worker thread only while the run does;
  the handle never holds it, and the client holding it is closed when the run ends.
  ``on_end`` callbacks run when it ends, so a hosted session can drop its own copy then.
- A plan into a Cliniko account (``cliniko:<id>``) needs the destination's keys
  (:class:`~migrator.console.ClinikoKeys`, ``destination_keys=``); like the source key they
  live in the worker thread only, which builds its own :class:`ClinikoDestination` there.
- On a hosted instance every look-up takes the caller's ``tenant``: another tenant's runs
  are invisible (:func:`~migrator.ledger.batch_tenants`).
- When the process shuts down (the server's Ctrl+C), its runs are asked to stop after the
  page in hand and given :data:`SHUTDOWN_WAIT` seconds to do so: their batches end
  ``stopped``, to be resumed later, rather than ``failed`` on a thread pool that refuses
  work during shutdown.
"""

from __future__ import annotations

import atexit
import concurrent.futures.thread  # noqa: F401  (its exit hook is registered before ours: see _stop_runs_at_exit)
import json
import logging
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr

from migrator.cliniko.client import ClientConfig, ClinikoClient
from migrator.cliniko.keys import parse_key
from migrator.engine import Engine, RunResult, RunStopped
from migrator.errors import ConfigError, MigratorError, database_refused
from migrator.ledger import Ledger, batch_tenants
from migrator.plan import Plan
from migrator.topup import TopUp
from migrator.workflow import (
    cliniko_destination,
    current_destination,
    open_local_store,
    top_up_point,
    unfinished_batch,
)

if TYPE_CHECKING:
    from migrator.workflow import ClinikoKeys

__all__ = ["RunHandle", "RunRegistry", "plan_of"]

log = logging.getLogger(__name__)

#: Finished handles kept for the pages to report on (the ledger keeps everything else).
KEEP_FINISHED = 20


def _plan_key(plan: Plan) -> str:
    """The plan without its tool version, as the ledger compares plans."""
    data = {k: v for k, v in json.loads(plan.to_json()).items() if k != "created_with"}
    return json.dumps(data, sort_keys=True)


def plan_of(ledger: Ledger, batch_id: str) -> Plan:
    """The plan a batch was started with, as stored in the ledger.

    Raises:
        BatchNotFound: no such batch.
        ConfigError: the stored plan is not a valid plan.
    """
    return Plan.from_json(json.dumps(ledger.batch(batch_id).plan))


@dataclass(eq=False)
class RunHandle:
    """One run in a background thread: how to stop it and how it ended.

    Attributes:
        plan: what runs (no key in it).
        workspace: the workspace whose ledger records it.
        expected: records per entity the preview counted, so that progress bars have a length.
        follow_ups: into a Cliniko account, the cancellations and archives per entity the
            preview counted (:attr:`~migrator.scoped_preview.ScopedPreview.follow_ups`), for the time left.
        state: ``starting``, ``running``, ``completed``, ``stopped`` or ``failed``.
        result: the engine's result once ``completed``.
        error: one sentence when ``failed``.
        resumed: the run continues an earlier batch.
        role: who started it on a hosted instance (``clinic``, ``operator``), for the audit trail.
    """

    plan: Plan
    workspace: Path
    expected: dict[str, int] = field(default_factory=dict)
    follow_ups: dict[str, int] = field(default_factory=dict)
    actor: str = "console"
    role: str | None = None
    resume_id: str | None = None
    top_up: TopUp | None = None
    state: str = "starting"
    result: RunResult | None = None
    error: str | None = None
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    finished_at: datetime | None = None
    stop_event: threading.Event = field(default_factory=threading.Event)
    _engine: Engine | None = field(default=None, repr=False)
    _batch_id: str | None = field(default=None, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)
    _ended: threading.Event = field(default_factory=threading.Event, repr=False)
    _on_end: list[Callable[[], None]] = field(default_factory=list, repr=False)
    _on_end_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def tenants(self) -> tuple[str, ...]:
        """The accounts this run belongs to: its source, and a Cliniko destination's account."""
        return batch_tenants(self.plan.source_account, self.plan.destination)

    def on_end(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (no arguments) once the run has ended; at once if it already has."""
        with self._on_end_lock:
            if not self._ended.is_set():
                self._on_end.append(callback)
                return
        callback()

    def _finish(self) -> None:
        with self._on_end_lock:
            self._ended.set()
            callbacks, self._on_end = self._on_end, []
        for callback in callbacks:
            try:
                callback()
            except Exception:  # a listener's failure must not hide how the run ended
                log.exception("a run's on_end callback failed")

    @property
    def resumed(self) -> bool:
        return self.resume_id is not None

    @property
    def batch_id(self) -> str | None:
        """The batch the run writes, once the engine has created (or reopened) it."""
        if self._batch_id:
            return self._batch_id
        engine = self._engine
        if engine is not None and engine.batch_id:
            self._batch_id = engine.batch_id
        return self._batch_id or self.resume_id

    @property
    def running(self) -> bool:
        """Whether the worker thread is still going."""
        return not self._ended.is_set()

    def stop(self) -> None:
        """Ask the run to stop after the page it is on; the batch becomes ``stopped`` and resumable."""
        self.stop_event.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the run to end; ``True`` when it has."""
        return self._ended.wait(timeout)

    def wait_for_batch(self, timeout: float = 30.0) -> str | None:
        """Wait until the batch id is known (or the run ended first) and return it."""
        deadline = time.monotonic() + timeout
        while self.batch_id is None and self.running and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.batch_id


#: Seconds a shutting-down process waits for its runs to stop after the page in hand.
SHUTDOWN_WAIT = 15.0

#: Every run started in this process (its worker thread holds it while it runs).
_RUNS: weakref.WeakSet[RunHandle] = weakref.WeakSet()


def _stop_runs_at_exit() -> None:
    """Stop this process's runs as it shuts down, before Python's thread pools refuse new work.

    A run's threads are daemons: without this, the server's Ctrl+C let the interpreter's
    shutdown close the pools the readers use, and the run's next page failed on a
    ``RuntimeError`` that marked its batch failed. Registered with ``threading``'s exit
    hooks, which run in reverse order before threads are joined, so it runs before
    :mod:`concurrent.futures`' (imported first, above); where that private hook is missing,
    with :mod:`atexit`, later but still a stop.
    """
    handles = [handle for handle in list(_RUNS) if handle.running]
    for handle in handles:
        handle.stop()
    deadline = time.monotonic() + SHUTDOWN_WAIT
    for handle in handles:
        handle.wait(max(0.0, deadline - time.monotonic()))


_register_exit = getattr(threading, "_register_atexit", atexit.register)
_register_exit(_stop_runs_at_exit)


def require_resumable_with(plan: Plan, batch_id: str, source_account: str) -> None:
    """Refuse to resume ``batch_id`` (of ``plan``) with a key of ``source_account`` when it reads another account.

    Raises:
        ConfigError: the key belongs to another account than the one the batch reads.
    """
    if plan.source_account != source_account:
        raise ConfigError(
            f"Batch {batch_id} reads from {plan.source_account}, but the connected key belongs to "
            f"{source_account}; connect {plan.source_account}'s key to resume it."
        )


class RunRegistry:
    """The runs of this process, one thread per run (see the module docstring for the rules)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._handles: list[RunHandle] = []

    # -- looking ---------------------------------------------------------------------

    def handles(self, *, tenant: str | None = None) -> list[RunHandle]:
        """Every run this process knows of, newest first; with ``tenant``, only that tenant's."""
        with self._lock:
            found = list(reversed(self._handles))
        return found if tenant is None else [h for h in found if tenant in h.tenants]

    def get(self, batch_id: str, *, tenant: str | None = None) -> RunHandle | None:
        """The newest run of ``batch_id`` in this process (of ``tenant``'s, when given), if any."""
        return next((h for h in self.handles(tenant=tenant) if h.batch_id == batch_id), None)

    def active(self, *, tenant: str | None = None) -> list[RunHandle]:
        """The runs still going (``tenant``'s only, when given)."""
        return [h for h in self.handles(tenant=tenant) if h.running]

    # -- starting ----------------------------------------------------------------------

    def start(
        self,
        plan: Plan,
        key: SecretStr,
        *,
        workspace: str | Path,
        client_config: ClientConfig,
        expected: Mapping[str, int] | None = None,
        follow_ups: Mapping[str, int] | None = None,
        actor: str = "console",
        role: str | None = None,
        resume: str | None = None,
        top_up: bool = False,
        wait: float = 30.0,
        on_end: Callable[[], None] | None = None,
        destination_keys: ClinikoKeys | None = None,
    ) -> RunHandle:
        """Run ``plan`` in a background thread, or return the run already doing it.

        Args:
            plan: a plan whose mappings are resolved.
            key: the source account's API key; only the worker thread keeps it, while it runs.
            workspace: the workspace of the ledger and the local store.
            client_config: how the worker's client talks to Cliniko (pace, URL template).
            expected: records per entity, for the progress bars.
            follow_ups: cancellations and archives per entity a Cliniko destination is sent, for the time left.
            resume: continue this batch (stopped, failed or killed) instead of looking
                for the plan's unfinished batch.
            top_up: read only what changed since the plan's last completed batch
                (:func:`~migrator.workflow.top_up_point`); an unfinished batch of the plan
                is resumed instead, whatever it was started as.
            wait: seconds to wait for the batch id before returning.
            role: who starts it (hosted instances), written on the run's audit rows.
            on_end: called once the run has ended (also when this call joins a run
                already going): a hosted session drops its copy of the key then.
            destination_keys: the keys of a Cliniko destination (a plan into ``cliniko:<id>``);
                only the worker thread keeps them, while it runs.

        Raises:
            ConfigError: another run goes into the same destination right now (here or in
                another process), ``resume`` names a batch that cannot be resumed, or a
                top-up has no completed batch of the plan to start from.
            MappingError: a mapping row is unresolved.
        """
        plan.require_resolved()
        if plan.destination.startswith("cliniko:") and destination_keys is None:
            raise ConfigError(
                f"This plan writes into Cliniko account {plan.destination.removeprefix('cliniko:')}: connect that "
                "account's key as the destination first."
            )
        wanted = _plan_key(plan)
        with self._lock:
            for handle in self._handles:
                if not handle.running or handle.plan.destination != plan.destination:
                    continue
                if (resume is not None and handle.batch_id == resume) or (
                    resume is None and _plan_key(handle.plan) == wanted
                ):
                    if on_end is not None:
                        handle.on_end(on_end)
                    return handle  # a refresh or a second tab: follow the same run
                raise ConfigError(
                    f"Batch {handle.batch_id or '(starting)'} is running into this store right now; "
                    "follow it on the Run page, or stop it before starting another run."
                )
            resume_id = self._batch_to_resume(plan, Path(workspace), resume)
            point = None
            if top_up and resume_id is None:
                with Ledger(workspace) as ledger:
                    point = top_up_point(ledger, plan)
            handle = RunHandle(
                plan=plan,
                workspace=Path(workspace),
                expected=dict(expected or {}),
                follow_ups=dict(follow_ups or {}),
                actor=actor,
                role=role,
                resume_id=resume_id,
                top_up=point,
            )
            if on_end is not None:
                handle.on_end(on_end)
            thread = threading.Thread(
                target=_work,
                args=(handle, key, client_config, destination_keys),
                name="migration-run",
                daemon=True,
            )
            handle._thread = thread
            self._handles.append(handle)
            _RUNS.add(handle)  # stopped when the process shuts down
            self._forget_old()
            thread.start()
        handle.wait_for_batch(wait)
        return handle

    def resume(
        self,
        batch_id: str,
        key: SecretStr,
        *,
        source_account: str,
        workspace: str | Path,
        client_config: ClientConfig,
        expected: Mapping[str, int] | None = None,
        follow_ups: Mapping[str, int] | None = None,
        actor: str = "console",
        role: str | None = None,
        on_end: Callable[[], None] | None = None,
        destination_keys: ClinikoKeys | None = None,
    ) -> RunHandle:
        """Resume a stopped, failed or killed batch with the plan it was started with.

        In a copied workspace, its own ``clinic.db`` claims the batch first
        (:func:`~migrator.workflow.current_destination`), so the run goes on in the copy's
        store rather than the original's that the copied ledger still names.

        Args:
            source_account: the account the key belongs to (``Identity.account``); it
                must be the batch's source account.

        Raises:
            BatchNotFound, ConfigError: as :meth:`start`, or the key is another account's.
        """
        with Ledger(workspace) as ledger:
            current_destination(ledger, workspace, ledger.batch(batch_id).destination)
            plan = plan_of(ledger, batch_id)
        require_resumable_with(plan, batch_id, source_account)
        return self.start(
            plan,
            key,
            workspace=workspace,
            client_config=client_config,
            expected=expected,
            follow_ups=follow_ups,
            actor=actor,
            role=role,
            resume=batch_id,
            on_end=on_end,
            destination_keys=destination_keys,
        )

    def _batch_to_resume(self, plan: Plan, workspace: Path, resume: str | None) -> str | None:
        with Ledger(workspace) as ledger:
            for batch in ledger.batches():
                if (
                    batch.status == "running"
                    and batch.destination == plan.destination
                    and batch.id != resume
                    and batch.running_elsewhere()
                ):
                    raise ConfigError(
                        f"Batch {batch.id} is running into this store in another process ({batch.worker}); "
                        "wait for it to finish, or stop it there first."
                    )
            if resume is None:
                return unfinished_batch(ledger, plan)
            batch = ledger.batch(resume)
            if batch.status not in ("running", "stopped", "failed"):
                raise ConfigError(
                    f"Batch {resume} is {batch.status}; only a stopped, failed or interrupted batch can be resumed."
                )
            if batch.running_elsewhere():
                raise ConfigError(
                    f"Batch {resume} is running right now in another process ({batch.worker}); follow it there."
                )
            return resume

    def _forget_old(self) -> None:
        finished = [h for h in self._handles if not h.running]
        for handle in finished[: max(0, len(finished) - KEEP_FINISHED)]:
            self._handles.remove(handle)


@contextmanager
def _open_destination(
    handle: RunHandle, source: ClinikoClient, config: ClientConfig, keys: ClinikoKeys | None
) -> Iterator[tuple[Ledger, Any]]:
    """The worker's own ledger and destination: the local store, or the plan's Cliniko account."""
    plan = handle.plan
    if not plan.destination.startswith("cliniko:"):
        ledger, store = open_local_store(plan.destination, handle.workspace)
        try:
            yield ledger, store
        finally:
            ledger.close()
        return
    if keys is None:  # start() refuses this already
        raise ConfigError("A run into a Cliniko account needs that account's key.")
    with cliniko_destination(keys, config, handle.workspace, source=source) as (ledger, destination):
        if destination.describe() != plan.destination:
            raise ConfigError(
                f"The destination key belongs to Cliniko account {destination.account_id}, but the plan writes "
                f"into account {plan.destination.removeprefix('cliniko:')}."
            )
        yield ledger, destination


def _work(handle: RunHandle, key: SecretStr, config: ClientConfig, keys: ClinikoKeys | None = None) -> None:
    """The worker thread: open its own ledger, destination and clients, run, record how it ended."""
    handle.state = "running"
    try:
        with (
            ClinikoClient(parse_key(key, name="source API key"), config=config) as client,
            _open_destination(handle, client, config, keys) as (
                ledger,
                store,
            ),
        ):
            ledger.audit_role = handle.role
            try:
                engine = Engine(
                    handle.plan,
                    client,
                    store,
                    ledger,
                    stop=handle.stop_event,
                    actor=handle.actor,
                    top_up=handle.top_up,
                )
                handle._engine = engine
                handle.result = engine.run(handle.resume_id)
                handle._batch_id = engine.batch_id
                handle.state = "completed"
            finally:
                engine_batch = handle.batch_id
                handle._engine = None  # the engine holds the client, which holds the key
                handle._batch_id = engine_batch
    except RunStopped:
        handle.state = "stopped"
    except MigratorError as exc:
        handle.state, handle.error = "failed", str(exc)
    except Exception as exc:  # the thread must record every ending; the ledger marks the batch failed
        handle.state = "failed"
        refused = database_refused(exc) if isinstance(exc, sqlite3.Error) else None
        if refused is None:
            log.exception("migration run failed")
        handle.error = refused or (
            f"The run stopped on an unexpected {type(exc).__name__}; the batch is marked failed and can be resumed."
        )
    finally:
        handle.finished_at = datetime.now(UTC)
        handle._finish()
