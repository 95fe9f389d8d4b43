"""What every console page shares: settings, the session's connection, remembered choices, the run registry.

UI only: everything computed comes from ``migrator``. Keys stay in ``st.session_state`` as
``SecretStr`` (this browser session's memory), never in a URL, a log or a file.

On a hosted instance (``MIGRATOR_MODE=hosted``, :mod:`migrator.hosted`) the session holds
who is signed in (``principal``), the tenant it works on, and keys only inside
:class:`~migrator.hosted.KeyLease` objects that the run drops as it ends: the source's
(``key_lease``) and a Cliniko destination's with its note authors' (``dest_lease``); every
look-up passes :func:`tenant_scope` to the library.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import polars as pl
import streamlit as st
from pydantic import SecretStr

from migrator.background import RunRegistry
from migrator.cliniko.client import ClinikoClient, Identity
from migrator.console import (
    ClinikoKeys,
    ConsoleSettings,
    DestinationCheck,
    mode_from_env,
    running_in_background,
)
from migrator.errors import MigratorError
from migrator.hosted import KeyLease, OperatorDirectory, Principal, SignInThrottle, sign_out
from migrator.mapping import build_mapping, validate
from migrator.mapping_editor import apply_rows, read_table
from migrator.plan import (
    CORE_TYPES,
    ENTITIES,
    FINANCIAL_TYPES,
    OPTIONAL_TYPES,
    MappingRow,
    Plan,
    Scope,
    default_include,
)
from migrator.scoped_preview import ScopedPreview, scoped_preview
from migrator.workflow import last_mapping, source_account_of

T = TypeVar("T")

#: Session entries that hold keys or what was read with them: all dropped on disconnect.
CONNECTION_STATE = (
    "source_key",
    "dest_key",
    "source_identity",
    "dest_identity",
    "demo",
    "url_template",
    "mapping",
    "mapping_account",
    "mapping_fresh",
    "mapping_message",
    "previews",
    "store_setup",
    "plan_scope",
    "plan_incomplete",
    "review_cache",
    "key_lease",
    "dest_lease",
    "setup_identity",
    "connection_tenant",
    "note_keys",
    "dest_check",
    "dest_target",
    "dest_references",
)
#: Remembered widget values that name the source account's records.
CONNECTION_WIDGETS = ("scope_kind", "scope_businesses", "scope_practitioners")

PAGES = {
    "connect": "views/connect.py",
    "preview": "views/preview.py",
    "mapping": "views/mapping.py",
    "scope": "views/scope.py",
    "run": "views/run.py",
    "review": "views/review.py",
    "batches": "views/batches.py",
}


HOSTED_PAGES = {"connect": "views/connect_hosted.py"}

# Said while a callback reads Cliniko (Streamlit shows a callback's spinner at the top of the page):
# at a slow pace a key check and the pre-flight take seconds.
CHECKING_KEY = "Checking the key with Cliniko…"
CHECKING_DESTINATION = "Checking the destination's keys and running the pre-flight (it reads both accounts)…"


def page(name: str) -> str:
    """The file of a step's page (a hosted instance has its own Connect page)."""
    return (HOSTED_PAGES.get(name) if hosted() else None) or PAGES[name]


def settings() -> ConsoleSettings:
    """The console's settings from the environment; a bad setting stops the page with its sentence.

    On a hosted instance they point at the clinic store of the tenant this session works on.
    """
    try:
        base = ConsoleSettings.from_env()
        return base.for_tenant(work_tenant()) if base.hosted else base
    except MigratorError as exc:
        st.error(str(exc))
        st.stop()


def hosted() -> bool:
    """Whether this console is a hosted instance (``MIGRATOR_MODE=hosted``).

    A mode that is neither stops the page with its sentence: a typo must not open the console up.
    """
    try:
        return mode_from_env() == "hosted"
    except MigratorError as exc:
        st.error(str(exc))
        st.stop()


def principal() -> Principal | None:
    """Who is signed in to this session (hosted instances); ``None`` before sign-in and in local mode."""
    found = st.session_state.get("principal")
    return found if isinstance(found, Principal) else None


def work_tenant() -> str | None:
    """The tenant whose clinic store this session works on: a clinic's own, an operator's connected one."""
    who = principal()
    if who is not None and who.tenant is not None:
        return who.tenant
    tenant = st.session_state.get("connection_tenant")
    return str(tenant) if tenant else None


def tenant_scope() -> str | None:
    """The tenant filter every look-up of this session passes to the library (``None``: everything).

    Local mode and operators see everything; a clinic only its own. On a hosted instance
    with nobody signed in the page stops here.
    """
    if not hosted():
        return None
    who = principal()
    if who is None:
        st.info("Sign in first.")
        st.stop()
    return who.scope


def actor() -> tuple[str, str | None]:
    """How the audit trail names this session's actions: ``(actor, role)``."""
    who = principal()
    return ("console", None) if who is None else (who.actor, who.role)


def source_key() -> SecretStr | None:
    """The connected source key: the session's (local mode) or the lease's while it holds it (hosted)."""
    lease = st.session_state.get("key_lease")
    if isinstance(lease, KeyLease):
        return lease.key
    key = st.session_state.get("source_key")
    return key if isinstance(key, SecretStr) else None


@st.cache_resource
def sign_in_throttle() -> SignInThrottle:
    """Failed operator sign-ins of this server process, per name."""
    return SignInThrottle()


def operator_directory() -> OperatorDirectory:
    """The operators of this instance, from ``.streamlit/secrets.toml`` (none when it has no such file)."""
    try:
        data = st.secrets.to_dict()
    except FileNotFoundError:  # no secrets file: no operators, clinics can still sign in
        data = {}
    return OperatorDirectory.from_secrets(data)


def oidc_configured() -> bool:
    """Whether the secrets file has Streamlit's ``[auth]`` section (``st.login``)."""
    try:
        return "auth" in st.secrets
    except FileNotFoundError:
        return False


@st.cache_resource
def run_registry() -> RunRegistry:
    """The background runs of this server process, shared by every session and tab."""
    return RunRegistry()


def background_runs_sentence() -> str | None:
    """The runs going on in this process that this session may see, in one sentence (or ``None``)."""
    return running_in_background(run_registry().active(tenant=work_tenant() if hosted() else None))


def connected() -> bool:
    return st.session_state.get("source_identity") is not None and source_key() is not None


def require_source(what: str) -> None:
    """Stop the page with a pointer to Connect when no source account is connected."""
    if connected():
        return
    if hosted():
        st.info(f"Connect the clinic's account (its API key, on the Connect page) first: {what}")
    else:
        st.info(f"Connect a source account (or the demo clinic) first: {what}")
    if st.button("Go to Connect", key="goto_connect", icon=":material/key:"):
        st.switch_page(page("connect"))
    st.stop()


@contextmanager
def source_client() -> Iterator[ClinikoClient]:
    """A client of the connected source account, closed afterwards."""
    key = source_key()
    if key is None:
        raise MigratorError("Connect the source account again: its key is no longer held by this session.")
    with settings().client(key, st.session_state.get("url_template"), name="source API key") as client:
        yield client


def destination_lease() -> KeyLease | None:
    """A hosted session's lease of the Cliniko destination's keys, while it holds them."""
    lease = st.session_state.get("dest_lease")
    return lease if isinstance(lease, KeyLease) and not lease.dropped else None


def cliniko_target() -> str | None:
    """The Cliniko destination this session writes into (``cliniko:<account id>``), once its pre-flight passed.

    ``None``: runs go into the local clinic store. On a hosted instance the destination's
    keys are leased like the source's, so the target goes when its run ends.
    """
    target = st.session_state.get("dest_target")
    return str(target) if target and cliniko_keys() is not None else None


def cliniko_keys() -> ClinikoKeys | None:
    """The Cliniko destination's keys held by this session (``None`` when none is connected)."""
    if not st.session_state.get("dest_target"):
        return None
    if hosted():
        lease = destination_lease()
        key = lease.key if lease is not None else None
        return ClinikoKeys(key, lease.extra) if key is not None and lease is not None else None
    key = st.session_state.get("dest_key")
    if not isinstance(key, SecretStr):
        return None
    extra = tuple(k for k in st.session_state.get("note_keys") or () if isinstance(k, SecretStr))
    return ClinikoKeys(key, extra)


@contextmanager
def open_destination(target: str | None = None) -> Iterator[tuple[Any, Any]]:
    """The ledger and a destination: ``target`` (a batch's), else the session's (Cliniko or the local store).

    A Cliniko destination is opened with the session's destination keys, which must be that account's.
    """
    wanted = target or cliniko_target() or settings().store_target
    with settings().open_destination(
        wanted, cliniko_keys(), st.session_state.get("url_template"), source_key=source_key()
    ) as opened:
        yield opened


def destination_references() -> dict[str, pl.DataFrame]:
    """The destination side of the three mapping tables, read once per destination for this session."""
    state = st.session_state
    wanted = cliniko_target() or settings().store_target
    cached = state.get("dest_references")
    if not cached or cached[0] != wanted:
        with open_destination() as (_, store):
            cached = (wanted, {entity: store.reference(entity) for entity in ENTITIES})
        if wanted.startswith("cliniko:"):  # the local store is cheap and changes as runs create records
            state.dest_references = cached
    references: dict[str, pl.DataFrame] = cached[1]
    return references


def session_memo(slot: str, key: object, read: Callable[[], T]) -> T:
    """``read()``, kept in this session's ``slot`` and read again only when asked with another ``key``.

    Pages key what they read from the workspace on :func:`~migrator.console.on_disk`, so a
    large clinic's seconds of reading are not spent again on every click, only once the
    ledger or a store has changed.
    """
    held = st.session_state.get(slot)
    if held is None or held[0] != key:
        held = st.session_state[slot] = (key, read())
    value: T = held[1]
    return value


def remembered(widget: Callable[..., Any], *, key: str, default: Any, **kwargs: Any) -> Any:
    """A widget whose value survives visits to other pages (Streamlit forgets widgets not drawn)."""
    kept: dict[str, Any] = st.session_state.setdefault("_kept", {})
    if key not in st.session_state:
        st.session_state[key] = kept.get(key, default)
    value = widget(key=key, **kwargs)
    kept[key] = value
    return value


def table(frame: pl.DataFrame, **kwargs: Any) -> None:
    """``st.dataframe`` without an index, its whole-number columns grouped in thousands, empty cells blank.

    A large clinic's counts read as 284,289 (in the browser's own style), as the metrics beside
    them do, rather than 284289; ids are strings, so they are left as they are. ``column_config``
    entries given are kept over these. A cell with no value shows nothing rather than
    Streamlit's "None" (``placeholder`` given otherwise is kept): each table's sentence says
    why a value is missing.
    """
    kwargs.setdefault("placeholder", "")
    config: dict[str, Any] = {
        name: st.column_config.NumberColumn(name, format="localized")
        for name, dtype in frame.schema.items()
        if dtype.is_integer()
    }
    config.update(kwargs.pop("column_config", None) or {})
    st.dataframe(frame, hide_index=True, column_config=config, **kwargs)


def next_step(label: str, step: str, *, key: str) -> None:
    """The button to the next step of the flow."""
    if st.button(label, key=key, type="primary", icon=":material/arrow_forward:"):
        st.switch_page(page(step))


def plan_choices() -> tuple[Scope, list[str], bool]:
    """The scope, data types and archived-patients choice made on the Scope page (or the defaults)."""
    state = st.session_state
    local = cliniko_target() is None
    include = list(state.get("plan_include") or default_include(local=local))
    if not local:  # Cliniko cannot import financials
        include = [t for t in include if t not in FINANCIAL_TYPES]
    return (state.get("plan_scope") or Scope(), include, bool(state.get("plan_archived", True)))


def mapping_rows() -> tuple[list[MappingRow], list[str]]:
    """The session's mapping tables as rows, with a sentence for each row not valid yet.

    A row the destination cannot honour (a record it does not have, a create it cannot
    do) is not valid yet either: the run would refuse it (:func:`migrator.mapping.validate`).
    """
    tables: dict[str, pl.DataFrame] = st.session_state.get("mapping") or {}
    rows: list[MappingRow] = []
    problems: list[str] = []
    for entity in ENTITIES:
        if entity in tables:
            got, bad = read_table(tables[entity])
            rows += got
            problems += bad
    if rows:
        try:
            references = destination_references()
            problems += validate(rows, references.__getitem__, can_create=cliniko_target() is None)
        except MigratorError as exc:
            problems.append(str(exc))
    return rows, problems


def rows_to_decide(count: int) -> str:
    """``1 row still needs`` / ``3 rows still need``: the start of the sentence saying so."""
    return f"{count} row still needs" if count == 1 else f"{count} rows still need"


def drop_connection() -> None:
    """Forget the keys and everything read with them (the run registry keeps running batches)."""
    for name in ("key_lease", "dest_lease"):
        lease = st.session_state.get(name)
        if isinstance(lease, KeyLease):
            lease.drop()
    for name in CONNECTION_STATE:
        st.session_state.pop(name, None)
    kept = st.session_state.get("_kept", {})
    for name in CONNECTION_WIDGETS:
        kept.pop(name, None)
        st.session_state.pop(name, None)


def current_preview(*, recount: bool = False) -> ScopedPreview:
    """The preview of the session's scope and data types, counted once and kept for this session.

    Into a Cliniko account it also counts the cancellations and archives the transfer sends.
    """
    scope, include, archived = plan_choices()
    previews: dict[tuple[str, tuple[str, ...], bool, bool], ScopedPreview] = st.session_state.setdefault(
        "previews", {}
    )
    transfer = cliniko_target() is not None
    wanted = (str(scope), tuple(include), archived, transfer)
    if recount or wanted not in previews:
        with st.spinner("Counting what the run will read (one request per list)…"), source_client() as client:
            previews[wanted] = scoped_preview(
                client, scope, include, include_archived_patients=archived, count_follow_ups=transfer
            )
    return previews[wanted]


def scope_sentence() -> str:
    """The session's choices in one line, e.g. "All data · 17 data types · archived patients included"."""
    scope, include, archived = plan_choices()
    if scope.kind == "all":
        what = "All data"
    else:
        names = source_names("businesses" if scope.kind == "business" else "practitioners")
        what = f"Only {scope.kind} " + ", ".join(names.get(i, i) for i in scope.ids)
    return f"{what} · {len(include)} data types · archived patients {'included' if archived else 'left out'}"


def source_names(entity: str) -> dict[str, str]:
    """Source ids to names of one mapped entity, from the session's mapping tables."""
    tables: dict[str, pl.DataFrame] = st.session_state.get("mapping") or {}
    if entity not in tables:
        return {}
    frame = tables[entity]
    return dict(zip(frame["source_id"].to_list(), frame["source_name"].to_list(), strict=True))


def ensure_mapping(*, rebuild: bool = False) -> dict[str, pl.DataFrame]:
    """The session's mapping tables, auto-matched against the destination on first use.

    The destination is the local store, or the connected Cliniko account (which cannot
    create practitioners or businesses). Rebuilt when the source account or the destination
    changes; edits live in the session until then.
    """
    state = st.session_state
    account = (state.source_identity.account or state.source_identity.user, cliniko_target())
    if rebuild or state.get("mapping") is None or state.get("mapping_account") != account:
        with (
            st.spinner("Matching practitioners, businesses and appointment types by name…"),
            source_client() as client,
        ):
            references = destination_references()
            state.mapping = build_mapping(client, references.__getitem__, can_create=account[1] is None)
        state.pop("mapping_message", None)
        if state.get("mapping_fresh") != account:
            # A clinic back for its top-up finds its decisions again: matching afresh leaves its former
            # practitioners undecided, and a changed mapping is a new plan with nothing to top up.
            with settings().open_ledger() as ledger:
                # A renamed account goes by the name its batches have (source_account_of).
                source = source_account_of(state.source_identity, ledger)
                found = last_mapping(
                    ledger, source, account[1] or settings().store_target, tenant=tenant_scope()
                )
            if found is not None:
                state.mapping, applied, _ = apply_rows(state.mapping, found[1])
                _choose_scope_of(Plan.model_validate(found[0].plan))
                state.mapping_message = (
                    f"Took {applied} decisions and the scope from batch {found[0].id}, so running it again or "
                    "topping it up continues that batch's plan. 'Match again from the source' starts afresh."
                )
        for entity in ENTITIES:  # the grids' pending edits were made against the old tables
            state.pop(f"mapping_{entity}", None)
        state.mapping_account = account
    tables: dict[str, pl.DataFrame] = state.mapping
    return tables


def _choose_scope_of(plan: Plan) -> None:
    """Preset the Scope page (its filter, data types and archived-patients box) to a plan's choices."""
    state = st.session_state
    kept: dict[str, Any] = state.setdefault("_kept", {})
    kept["scope_kind"] = plan.scope.kind
    if plan.scope.kind != "all":
        kept[f"scope_{'businesses' if plan.scope.kind == 'business' else 'practitioners'}"] = list(
            plan.scope.ids
        )
    for data_type in (*CORE_TYPES, *OPTIONAL_TYPES, *FINANCIAL_TYPES):
        kept[f"include_{data_type}"] = data_type in plan.include
    kept["include_archived"] = plan.include_archived_patients
    for key in kept:
        if key.startswith(("scope_", "include_")):
            state.pop(key, None)  # drawn next from what is kept (see remembered)
    state.plan_scope, state.plan_include = plan.scope, list(plan.include)
    state.plan_archived = plan.include_archived_patients


def sign_out_now() -> None:
    """Audit the sign-out, drop the key and forget the whole session (a button callback)."""
    who = principal()
    leases = [st.session_state.get(name) for name in ("key_lease", "dest_lease")]
    if who is not None:
        with settings().open_ledger() as ledger:
            sign_out(ledger, who, *(lease for lease in leases if isinstance(lease, KeyLease)))
    for name in list(st.session_state):
        del st.session_state[name]
    if who is not None and who.method == "oidc":
        st.session_state.oidc_logout = True  # st.logout() cannot run inside a callback


def forget_typed_keys() -> None:
    """Have the next run start with a rerun (see app.py): a key was just taken out of a widget."""
    st.session_state.forget_typed_keys = True


def take_typed_key(widget: str) -> SecretStr | None:
    """What was typed into a key box, which is emptied now, whatever happens next.

    For a callback: the box's value goes from the session, and :func:`forget_typed_keys`
    has Streamlit's own copy of it replaced too. ``None`` when the box was empty.
    """
    typed = str(st.session_state.get(widget) or "").strip()
    st.session_state[widget] = ""
    forget_typed_keys()
    return SecretStr(typed) if typed else None


def use_typed_key(
    box: str, *, error: str, missing: str, step: Callable[[Principal, SecretStr], None]
) -> None:
    """A hosted callback's one step with the key typed in ``box`` (emptied whatever happens).

    ``step`` gets who is signed in and the key; the sentence of a refusal, or ``missing``
    when the box was empty, goes to ``st.session_state[error]`` for the page to show.
    """
    typed = take_typed_key(box)
    signed_in = principal()
    if typed is None or signed_in is None:
        st.session_state[error] = missing
        return
    try:
        step(signed_in, typed)
    except MigratorError as exc:
        st.session_state[error] = str(exc)


# --- shown by both Connect pages ---------------------------------------------------------


def show_identity(identity: Identity, *, needs_practitioner: bool) -> None:
    """Whose key it is, with a warning for rights a migration lacks (a destination also needs a practitioner)."""
    st.success(
        f"Connected to **{identity.account or 'the account'}** on {identity.shard} as **{identity.user}**."
    )
    cols = st.columns(3)
    cols[0].metric("Administrator", "yes" if identity.is_admin else "no")
    cols[1].metric("Active practitioner", "yes" if identity.is_practitioner else "no")
    cols[2].metric("Shard", identity.shard)
    if not identity.is_admin:
        st.warning(
            "This key's user is not an administrator: Cliniko gives such keys too few rights for a migration."
        )
    if needs_practitioner and not identity.is_practitioner:
        st.warning(
            "A destination key must belong to an administrator who is also an active practitioner: "
            "Cliniko makes that practitioner the author of every note the transfer writes."
        )


def show_check(check: DestinationCheck) -> None:
    """The pre-flight: refusals as errors, warnings, and what the destination holds."""
    for refusal in check.preflight.refusals:
        st.error(refusal)
    for warning in check.preflight.warnings:
        st.warning(warning)
    st.caption(f"The destination account holds {check.preflight.holds()}.")
    if check.ok:
        st.success(
            f"Pre-flight passed: runs go into **{check.account_name or check.target}** through Cliniko's API."
        )
        st.info(
            "No patient is messaged: patients are created with reminders and confirmation emails off, until "
            "you press **Go live** on the Run page after the transfer. Invoices and payments stay in the source; "
            "the Review page lists each patient's opening balance instead."
        )


def note_author_keys(held: int, *, add: Callable[[], None], forget: Callable[[], None], kept: str) -> None:
    """The box for destination practitioners' keys (notes keep their author), with how many are ``held``."""
    st.text_input(
        "Another destination practitioner's API key (optional, for notes' authorship)",
        type="password",
        key="note_key_input",
        help="Notes written by this practitioner at the source are then written with their own key, so "
        "Cliniko shows them as the author. Add one key at a time; each is checked.",
    )
    st.button("Add this practitioner's key", key="add_note_key", on_click=add)
    if error := st.session_state.pop("note_key_error", None):
        st.error(error)
    if held:
        whose = "practitioner's key" if held == 1 else "practitioners' keys"
        st.caption(f"{held} {whose} held for notes' authorship, {kept}.")
        st.button("Forget these keys", key="forget_note_keys", on_click=forget)
