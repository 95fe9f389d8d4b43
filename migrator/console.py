"""What the operator console needs from the library besides the workflow: settings and read models.

The console (``app.py`` and ``views/``) is a thin Streamlit layer; everything it shows is
computed here, without Streamlit, so notebooks and tests get the same answers.

>>> settings = ConsoleSettings.from_env()                 # doctest: +SKIP
>>> with settings.open_store() as (ledger, store):        # doctest: +SKIP
...     batches_frame(ledger.batches())

Settings come from the environment (never from a URL, and never a key):

- ``MIGRATOR_WORKSPACE``: the workspace directory (``ledger.db``, the local clinic store
  ``clinic.db``); default ``./workspace``.
- ``MIGRATOR_REQUESTS_PER_MINUTE``: the pace of each key (default 200, Cliniko's limit;
  ``0`` sends unpaced, for tests against the demo clinic). The demo clinic enforces the
  same limit, so what the console estimates is what it sees.
- ``MIGRATOR_MODE``: ``local`` (the default: an open console on this computer) or
  ``hosted`` (sign-in, one tenant per clinic account; see :mod:`migrator.hosted`).
- ``MIGRATOR_API_URL`` (hosted mode only): the API's URL template, ``{shard}`` replaced;
  Cliniko's own by default (a sandbox's, for tests).
"""

from __future__ import annotations

import io
import math
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl
from pydantic import SecretStr

from migrator.cliniko.client import ClientConfig, ClinikoClient
from migrator.cliniko.keys import ApiKey, parse_key
from migrator.cliniko.pacing import DEFAULT_REQUESTS_PER_MINUTE, RATE_ENV, pace_from_env
from migrator.cliniko.pagination import PER_PAGE
from migrator.destinations.local import LocalStore
from migrator.errors import ConfigError
from migrator.ledger import ACTIONS, Batch, Ledger, StageProgress
from migrator.plan import entity_label
from migrator.preview import read_requests
from migrator.scoped_preview import plan_entities
from migrator.setup import copy_clinic_setup
from migrator.workflow import (
    DEFAULT_WORKSPACE,
    ClinikoKeys,
    cliniko_destination,
    current_destination,
    open_local_store,
)

if TYPE_CHECKING:  # the Cliniko destination loads only when one is used
    from migrator.background import RunHandle
    from migrator.destinations.cliniko import ClinikoDestination, Preflight

__all__ = [
    "API_URL_ENV",
    "DEMO_SIZE_ENV",
    "MODES",
    "MODE_ENV",
    "RATE_ENV",
    "WORKSPACE_ENV",
    "ClinikoKeys",
    "ConsoleSettings",
    "DestinationCheck",
    "batch_destination_problem",
    "batches_frame",
    "check_cliniko_destination",
    "demo_size_from_env",
    "entity_label",
    "escape_markdown",
    "export",
    "go_live_sentence",
    "masked",
    "mode_from_env",
    "progress_frame",
    "running_in_background",
    "setup_store_from",
    "time_left",
    "unfinished_sentence",
]

WORKSPACE_ENV = "MIGRATOR_WORKSPACE"
MODE_ENV = "MIGRATOR_MODE"
API_URL_ENV = "MIGRATOR_API_URL"
#: The demo clinic's size (``tiny``, ``demo``, ``large`` or a number of patients); for tests.
DEMO_SIZE_ENV = "MIGRATOR_DEMO_SIZE"
#: ``local``: the open console of one computer; ``hosted``: sign-in and one tenant per clinic.
MODES = ("local", "hosted")
_TENANT = re.compile(r"^[0-9A-Za-z_-]{1,64}$")


def mode_from_env(environ: Mapping[str, str] | None = None) -> str:
    """The console's mode, :data:`MODE_ENV`: ``local`` (unset) or ``hosted``.

    Raises:
        ConfigError: any other value (the console then refuses to start rather than open up).
    """
    env = os.environ if environ is None else environ
    mode = (env.get(MODE_ENV) or "local").strip().lower()
    if mode not in MODES:
        raise ConfigError(f"{MODE_ENV} must be 'local' or 'hosted'; got {env.get(MODE_ENV)!r}.")
    return mode


def demo_size_from_env(environ: Mapping[str, str] | None = None) -> str | int:
    """The demo clinic's size, :data:`DEMO_SIZE_ENV` (``demo`` unset; tests choose ``tiny``).

    Raises:
        ConfigError: neither a named size nor a positive number of patients.
    """
    from migrator.sandbox.data import SIZES

    env = os.environ if environ is None else environ
    raw = (env.get(DEMO_SIZE_ENV) or "demo").strip().lower()
    if raw in SIZES:
        return raw
    if raw.isdigit() and int(raw) > 0:
        return int(raw)
    raise ConfigError(
        f"{DEMO_SIZE_ENV} must be one of {', '.join(SIZES)} or a number of patients; got {raw!r}."
    )


_MARKDOWN = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$])")


def escape_markdown(text: str) -> str:
    r"""Text from a clinic's data (a practitioner's name) shown as it is in Streamlit's markdown.

    >>> escape_markdown("Dr *Jo* [locum]")
    'Dr \\*Jo\\* \\[locum\\]'
    """
    return _MARKDOWN.sub(r"\\\1", text)


def masked(key: ApiKey) -> str:
    """A key as the console may show it: never a character of the secret, only its shard and a fingerprint."""
    return f"•••• {key.shard} key (fingerprint {key.fingerprint[:6]})"


@dataclass(frozen=True)
class ConsoleSettings:
    """Where the console keeps its workspace and how fast it may talk to Cliniko.

    Attributes:
        workspace: the directory holding ``ledger.db`` and the local clinic store.
        requests_per_minute: each key's pace (``0``: unpaced).
        mode: ``local`` or ``hosted`` (:data:`MODES`).
        api_url: the API's URL template for keys typed in (hosted mode); ``None``: Cliniko's.
        tenant: the account whose clinic store this session works on (hosted mode):
            the store is then ``<workspace>/tenants/<tenant>/clinic.db``.
    """

    workspace: Path
    requests_per_minute: float = DEFAULT_REQUESTS_PER_MINUTE
    mode: str = "local"
    api_url: str | None = None
    tenant: str | None = None

    @property
    def hosted(self) -> bool:
        """Whether this is a hosted instance (``MIGRATOR_MODE=hosted``)."""
        return self.mode == "hosted"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ConsoleSettings:
        """Read :data:`WORKSPACE_ENV`, :data:`RATE_ENV`, :data:`MODE_ENV` and (hosted) :data:`API_URL_ENV`.

        Raises:
            ConfigError: the pace is not a number of requests per minute, or the mode is unknown.
        """
        env = os.environ if environ is None else environ
        workspace = Path(env.get(WORKSPACE_ENV) or DEFAULT_WORKSPACE).expanduser().resolve()
        mode = mode_from_env(env)
        api_url = (env.get(API_URL_ENV) or None) if mode == "hosted" else None
        return cls(workspace, pace_from_env(env), mode=mode, api_url=api_url)

    def for_tenant(self, tenant: str | None) -> ConsoleSettings:
        """These settings on ``tenant``'s own clinic store (hosted mode; ``None``: no tenant yet).

        Raises:
            ConfigError: the tenant is not an account id (it names a folder).
        """
        if tenant is not None and not _TENANT.match(tenant):
            raise ConfigError(f"{tenant!r} is not an account id.")
        return ConsoleSettings(self.workspace, self.requests_per_minute, self.mode, self.api_url, tenant)

    @property
    def store_target(self) -> str:
        """The local clinic store, as a plan's destination: ``sqlite:<workspace>/clinic.db``.

        On a hosted instance each tenant has its own: ``sqlite:<workspace>/tenants/<tenant>/clinic.db``.
        """
        if self.tenant is not None:
            return f"sqlite:{self.workspace / 'tenants' / self.tenant / 'clinic.db'}"
        return f"sqlite:{self.workspace / 'clinic.db'}"

    def client_config(self, url_template: str | None = None) -> ClientConfig:
        """A client configuration at this pace (``url_template`` points at the demo clinic)."""
        return ClientConfig(
            url_template=url_template or self.api_url, requests_per_minute=self.requests_per_minute
        )

    def client(
        self, key: str | SecretStr | ApiKey, url_template: str | None = None, *, name: str = "API key"
    ) -> ClinikoClient:
        """A read-only client for ``key`` (a ``SecretStr`` in the console); Cliniko's refusals call it ``name``."""
        return ClinikoClient(
            key if isinstance(key, ApiKey) else parse_key(key, name=name),
            config=self.client_config(url_template),
        )

    @contextmanager
    def open_cliniko(
        self,
        keys: ClinikoKeys,
        url_template: str | None = None,
        *,
        source_key: SecretStr | None = None,
    ) -> Iterator[tuple[Ledger, ClinikoDestination]]:
        """The ledger and the Cliniko destination of ``keys`` (:func:`~migrator.workflow.cliniko_destination`).

        ``source_key`` gives the destination a read-only source client (attachments' files).

        Raises:
            ConfigError: a note author's key is another account's or no active practitioner's.
            APIError: a key is refused by Cliniko.
        """
        source = (
            self.client(source_key, url_template, name="source API key") if source_key is not None else None
        )
        try:
            with cliniko_destination(
                keys, self.client_config(url_template), self.workspace, source=source
            ) as opened:
                yield opened
        finally:
            if source is not None:
                source.close()

    @contextmanager
    def open_destination(
        self,
        target: str | None = None,
        keys: ClinikoKeys | None = None,
        url_template: str | None = None,
        *,
        source_key: SecretStr | None = None,
    ) -> Iterator[tuple[Ledger, Any]]:
        """The ledger and a batch's destination: the local store of ``target`` or, for ``cliniko:<id>``, ``keys``' account.

        Raises:
            ConfigError: a Cliniko destination without its keys, or keys of another account (one sentence
                naming the account whose key is needed).
        """
        target = target or self.store_target
        if not target.startswith("cliniko:"):
            if target != self.store_target:  # a copied workspace's own store, not the original's
                with self.open_ledger() as ledger:
                    target = current_destination(ledger, self.workspace, target)
            with self.open_store(target) as opened:
                yield opened
            return
        if keys is None:
            raise ConfigError(
                f"This batch wrote into Cliniko account {target.removeprefix('cliniko:')}: connect a key of that "
                "account as the destination on the Connect page first."
            )
        with self.open_cliniko(keys, url_template, source_key=source_key) as (ledger, destination):
            if destination.describe() != target:
                raise ConfigError(
                    f"This batch wrote into Cliniko account {target.removeprefix('cliniko:')}, but the connected "
                    f"destination key belongs to account {destination.account_id}; connect a key of account "
                    f"{target.removeprefix('cliniko:')} on the Connect page."
                )
            yield ledger, destination

    @contextmanager
    def open_ledger(self) -> Iterator[Ledger]:
        """A ledger connection of this caller's own, closed afterwards."""
        ledger = Ledger(self.workspace)
        try:
            yield ledger
        finally:
            ledger.close()

    @contextmanager
    def open_store(self, target: str | None = None) -> Iterator[tuple[Ledger, LocalStore]]:
        """The ledger with the local clinic store attached (the workspace's, or ``target``), closed afterwards."""
        ledger, store = open_local_store(target or self.store_target, self.workspace)
        try:
            yield ledger, store
        finally:
            ledger.close()


@dataclass(frozen=True)
class DestinationCheck:
    """What Connect shows about a Cliniko destination: its account, the pre-flight, the note authors.

    Attributes:
        target: the destination as a plan names it, ``cliniko:<account id>``.
        account_name: the account's name.
        preflight: the pre-flight's refusals, warnings and counts.
        note_authors: how many extra practitioners' keys author their own notes.
    """

    target: str
    account_name: str | None
    preflight: Preflight
    note_authors: int = 0

    @property
    def ok(self) -> bool:
        return self.preflight.ok


def check_cliniko_destination(
    settings: ConsoleSettings, source_key: SecretStr, keys: ClinikoKeys, url_template: str | None = None
) -> DestinationCheck:
    """Verify a Cliniko destination's keys and run the pre-flight against the connected source.

    Raises:
        ConfigError, APIError: a key is refused, or a note author's key is not a practitioner of the
            destination's account (one sentence, never a key).
    """
    from migrator.destinations.cliniko import preflight

    with (
        settings.client(source_key, url_template, name="source API key") as source,
        settings.open_cliniko(keys, url_template) as (_, destination),
    ):
        check = preflight(source, destination)
        return DestinationCheck(
            destination.describe(), destination.account_name, check, len(destination.note_authors)
        )


def cliniko_account(batch: Any) -> str:
    """A batch's Cliniko destination as a sentence names it: ``"Cliniko account Bondi Physio (90233)"``.

    The name is the one the account had when the batch's plan was made
    (:attr:`~migrator.plan.Plan.destination_account`); a plan without one gives
    ``"Cliniko account 90233"``.
    """
    account = batch.destination.removeprefix("cliniko:")
    name = batch.plan.get("destination_account")
    return f"Cliniko account {name} ({account})" if name else f"Cliniko account {account}"


def batch_destination_problem(batch_destination: str, connected_target: str | None) -> str | None:
    """Why this session cannot open a batch's destination (one sentence), or ``None`` when it can."""
    if not batch_destination.startswith("cliniko:"):
        return None
    account = batch_destination.removeprefix("cliniko:")
    if connected_target is None:
        return (
            f"This batch wrote into Cliniko account {account}: connect a key of that account as the destination "
            "on the Connect page first."
        )
    if connected_target != batch_destination:
        return (
            f"This batch wrote into Cliniko account {account}, but the connected destination is account "
            f"{connected_target.removeprefix('cliniko:')}; connect a key of account {account} on the Connect page."
        )
    return None


def go_live_sentence(result: Any) -> str:
    """What :func:`~migrator.destinations.cliniko.go_live` did, in one sentence (a ``GoLiveResult``)."""
    return (
        f"Batch {result.batch_id} is live: reminder and confirmation preferences restored for "
        f"{result.restored:,} patients"
        + (f" ({result.already:,} already were)" if result.already else "")
        + (f"; {len(result.gone):,} patients are no longer in the destination" if result.gone else "")
        + "."
    )


def setup_store_from(settings: ConsoleSettings, client: ClinikoClient) -> dict[str, int]:
    """Give the local store an account's practitioners, businesses and appointment types to map to.

    What the CLI's ``setup-store`` does; entities the store already has are left alone.
    Returns how many records were set up per entity (zeros when it was done before).
    """
    with settings.open_store() as (_, store):
        return copy_clinic_setup(store, client)


def export(frame: pl.DataFrame, kind: str, *, spreadsheet_safe: bool = False) -> bytes:
    """A frame as a download: ``"csv"`` (UTF-8, header row) or ``"parquet"`` (types kept, money as decimals).

    ``spreadsheet_safe``: a text cell starting with ``=``, ``+``, ``-``, ``@`` or a tab gets
    a leading ``'`` in the CSV, so a spreadsheet shows it rather than running it as a
    formula: for text anyone could type (the audit trail's refused sign-ins), not for
    the clinic's own data, which analysts read back as it is.
    """
    if kind == "csv":
        if spreadsheet_safe:
            risky = r"^[=+\-@\t\r]"
            frame = frame.with_columns(
                pl.when(pl.col(c).str.contains(risky)).then("'" + pl.col(c)).otherwise(pl.col(c)).alias(c)
                for c, dtype in frame.schema.items()
                if dtype == pl.String
            )
        return frame.write_csv().encode("utf-8")
    if kind == "parquet":
        buffer = io.BytesIO()
        frame.write_parquet(buffer)
        return buffer.getvalue()
    raise ValueError(f"unknown export kind {kind!r}; use 'csv' or 'parquet'")


# --- read models --------------------------------------------------------------------


def on_disk(ledger: Ledger, destinations: Iterable[str] = ()) -> tuple[tuple[Any, ...], ...]:
    """Where the ledger and the local stores among ``destinations`` stand on disk: a page's cache key.

    For each file, its change counter, size and modification time (just its path while it
    is missing). SQLite increments the counter (bytes 24-27 of the header) with every commit
    in rollback-journal mode, which both files use, so any write since, by this process or
    another (a run, a deletion, a notebook), changes the key; reading changes nothing.
    """
    paths = {ledger.path} | {LocalStore.parse_target(d) for d in destinations if d.startswith("sqlite:")}
    stamps: list[tuple[Any, ...]] = []
    for path in sorted(paths):
        try:
            with path.open("rb") as file:
                file.seek(24)
                counter = file.read(4)
                stat = os.fstat(file.fileno())
        except FileNotFoundError:
            stamps.append((str(path),))
            continue
        stamps.append((str(path), counter, stat.st_size, stat.st_mtime_ns))
    return tuple(stamps)


def _age(batch: Batch, now: datetime) -> str:
    minutes = int((now - batch.created_at).total_seconds() // 60)
    if minutes < 1:
        return "just now"
    if minutes < 120:
        return f"{minutes} min ago"
    hours = minutes // 60
    return f"{hours} h ago" if hours < 72 else f"{hours // 24} days ago"


def batches_frame(
    batches: Sequence[Batch], now: datetime | None = None, *, blocked: Mapping[str, str] | None = None
) -> pl.DataFrame:
    """Every batch with its age, status, counts and whether (or why not) it can be deleted.

    Columns: batch, started, age, status, source, created, linked, already_present,
    skipped (records, summed over entities), deletable, why (the sentence saying so).
    ``blocked`` maps batches that other records rely on to the sentence saying so
    (:func:`migrator.batches.blocker`); they are not deletable, whatever their age.
    """
    moment = now or datetime.now(UTC)
    rows = []
    for batch in batches:
        totals = dict.fromkeys(ACTIONS, 0)
        for per_action in batch.counts.values():
            for action, n in per_action.items():
                totals[action] = totals.get(action, 0) + n
        allowed, why = batch.deletable(moment)
        if allowed and blocked and batch.id in blocked:
            allowed, why = False, blocked[batch.id]
        rows.append(
            {
                "batch": batch.id,
                "started": batch.created_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC"),
                "age": _age(batch, moment),
                "status": batch.status,
                "source": batch.source_account,
                **totals,
                "deletable": allowed,
                "why": why,
            }
        )
    schema = {
        "batch": pl.String,
        "started": pl.String,
        "age": pl.String,
        "status": pl.String,
        "source": pl.String,
        **dict.fromkeys(ACTIONS, pl.Int64),
        "deletable": pl.Boolean,
        "why": pl.String,
    }
    return pl.DataFrame(rows, schema=schema, orient="row")


def running_in_background(runs: Sequence[RunHandle]) -> str | None:
    """What the sidebar and Connect say while runs go on in this console's process; ``None`` when none does.

    A reloaded page or a new tab is a new session: not connected (keys live in the
    memory of the session that typed them), yet the runs it started go on, and the
    Run page follows and stops them. Without this line such a page looked as if
    nothing were happening.
    """
    if not runs:
        return None
    if len(runs) == 1:
        (run,) = runs
        named = f"Batch {run.batch_id}" if run.batch_id else "A run"
        return (
            f"{named} is running in the background, from {escape_markdown(run.plan.source_account)}: "
            "follow or stop it on the Run page."
        )
    ids = ", ".join(run.batch_id or "one starting" for run in runs)
    return f"{len(runs)} runs are going on in the background ({ids}): follow or stop them on the Run page."


def unfinished_sentence(batch: Batch, progress: Sequence[StageProgress], *, running: bool) -> str | None:
    """What the Review page says above a batch that stopped part-way; ``None`` for any other.

    A failed, stopped or interrupted batch (``running`` in the ledger, but no process
    runs it: pass ``running=False``) has counts only for the stages it reached, so
    "nothing was skipped" or "every record arrived" would say more than it knows.
    """
    if batch.status not in ("failed", "stopped", "running") or running:
        return None
    how = {"failed": "failed", "stopped": "was stopped"}.get(
        batch.status, "was interrupted (its process ended)"
    )
    reached = {p.stage for p in progress}
    missing = [entity_label(e).lower() for e in plan_entities(batch.plan.get("include")) if e not in reached]
    never = ""
    if missing:
        listed = missing[0] if len(missing) == 1 else f"{', '.join(missing[:-1])} and {missing[-1]}"
        never = f"; it never reached {listed}"
    return (
        f"Batch {batch.id} {how} before it finished, so the figures below cover only what it got to{never}. "
        "Resume it on the Run page to finish it."
    )


def progress_frame(
    progress: Sequence[StageProgress],
    expected: Mapping[str, int] | None = None,
    *,
    stages: Sequence[str] = (),
    finished: bool = False,
) -> pl.DataFrame:
    """A batch's stages as the Run page draws them: counts, and how far along each stage is.

    Args:
        progress: the ledger's progress rows of the batch (:meth:`Ledger.progress`).
        expected: records per entity (the preview's), which give the bars their length:
            the engine learns a stage's size only as it reads it.
        stages: every stage of the plan, in order, so stages not reached yet show too.
        finished: the batch completed: every bar is full.

    A stage is done once the ledger says it is (:attr:`StageProgress.finished`), a later
    stage has reported, or the batch ``finished``; then its bar is full whatever was
    expected. Columns: stage, label, done, expected, fraction, finished, started, and the
    four action counts.
    """
    expected = expected or {}
    reported = {p.stage: p for p in progress}
    order = [*stages, *(p.stage for p in progress if p.stage not in stages)]
    last = max((i for i, name in enumerate(order) if name in reported), default=-1)
    rows = []
    for index, name in enumerate(order):
        stage = reported.get(name)
        done = finished or (stage is not None and (stage.finished or index < last))
        count = stage.done if stage is not None else 0
        want = expected.get(name)
        if done:
            fraction = 1.0
        elif want:
            fraction = min(0.99, count / want)
        else:
            fraction = 0.0
        rows.append(
            {
                "stage": name,
                "label": entity_label(name),
                "done": count,
                "expected": count if done else want,
                "fraction": fraction,
                "finished": done,
                "started": stage is not None,
                **{action: getattr(stage, action) if stage is not None else 0 for action in ACTIONS},
            }
        )
    schema = {
        "stage": pl.String,
        "label": pl.String,
        "done": pl.Int64,
        "expected": pl.Int64,
        "fraction": pl.Float64,
        "finished": pl.Boolean,
        "started": pl.Boolean,
        **dict.fromkeys(ACTIONS, pl.Int64),
    }
    return pl.DataFrame(rows, schema=schema, orient="row")


def time_left(
    ledger: Ledger,
    batch: Batch,
    frame: pl.DataFrame,
    requests_per_minute: float,
    follow_ups: Mapping[str, int] | None = None,
) -> str | None:
    """About how long ``batch``'s stages still to go take at the key's pace, as the Run page says it.

    From its :func:`progress_frame`, with the records each stage expects (the preview's): a
    stage still costs a request per 100 records it has left to read (one if not begun);
    into a Cliniko account each record left is also a write on the destination's key, and
    each file a read (:func:`~migrator.destinations.cliniko.transfer_requests`), spent while
    the source is read, so the larger of the two counts, as on the Preview page. The
    cancellations and archives the preview counted (``follow_ups``, per entity) are sent with
    their records, so a stage's share of them is left as its share of records is. A re-run,
    which finds most records already there, counts only the share it has created so far. ``None`` when
    unpaced, for a top-up (it reads only what changed, of which the preview's sizes say
    nothing), or when a stage still to go has no expected size. What is left is read from
    the run's progress, so a slower Cliniko or a burst of 429s lengthens it as the run goes.
    """
    from migrator.topup import TopUp

    if requests_per_minute <= 0 or TopUp.recorded(ledger, batch.id) is not None:
        return None
    left: dict[str, int] = {}
    follow_ups_left = 0
    reads = 0
    for row in frame.filter(~pl.col("finished")).iter_rows(named=True):
        if row["expected"] is None:
            return None
        remaining = max(row["expected"] - row["done"], 0)
        left[row["stage"]] = remaining
        reads += math.ceil(remaining / PER_PAGE) if row["started"] else read_requests(remaining)
        if row["expected"] and (follow_ups or {}).get(row["stage"]):
            follow_ups_left += math.ceil((follow_ups or {})[row["stage"]] * remaining / row["expected"])
    writes = 0
    if batch.destination.startswith("cliniko:"):
        from migrator.destinations.cliniko import NOT_TRANSFERABLE, transfer_requests

        # A re-run finds most records already there and writes few: once a hundred records it
        # could write are handled, the share of them it created scales the writes left.
        seen = frame.filter(pl.col("started") & ~pl.col("stage").is_in(list(NOT_TRANSFERABLE)))
        handled = int(seen["done"].sum())
        share = int(seen["created"].sum()) / handled if handled >= PER_PAGE else 1.0
        writes, downloads = transfer_requests(left)
        writes = math.ceil((writes + follow_ups_left) * share)
        reads += math.ceil(downloads * share)
    minutes = math.ceil(max(reads, writes) / requests_per_minute)
    if minutes <= 1:
        return "About a minute left at the key's pace."
    return f"About {minutes:,} minutes left at the key's pace ({requests_per_minute:g} requests a minute)."
