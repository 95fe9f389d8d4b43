"""What a migration moves: source, destination, scope filter, data types and mapping rows.

A :class:`Plan` is the whole decision a person makes in the console (or writes for the
CLI), as plain JSON: it can be saved, reviewed, and run again for a top-up. It never
holds an API key: keys live in memory only (DESIGN.md §3), so no field may carry one
and unknown fields are refused rather than silently kept.

>>> plan = Plan(
...     source_account="Harbourside Physio",
...     source_shard="au2",
...     destination="sqlite:clinic.db",
...     scope=Scope.parse("business:514810972972521916"),
...     include=parse_include("treatment_notes"),
... )
>>> plan.include
['patients', 'treatment_notes']
>>> str(plan.scope)
'business:514810972972521916'

The scope filter (seed 001) picks one of: all data, some businesses, or some
practitioners; it narrows the *core* types only. Optional types (products, billable
items...) are account-wide and come across whole.

Data types are closed under their dependencies (:data:`DEPENDS_ON`): a treatment note
cannot exist without its patient, so choosing treatment notes brings the patients too;
group appointments and their attendees always travel together, as do invoices and
their items. Practitioners, businesses and appointment types are not data types to
tick: they are always read, because every appointment points at them, and what happens
to each is decided row by row in the mapping tables (:class:`MappingRow`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from importlib import metadata
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from migrator.cliniko.models import ClinikoId
from migrator.errors import ConfigError, MappingError

__all__ = [
    "CORE_TYPES",
    "DATA_TYPES",
    "DEFAULT_INCLUDE",
    "DEPENDS_ON",
    "ENTITIES",
    "FINANCIAL_TYPES",
    "OPTIONAL_TYPES",
    "TYPE_DESCRIPTIONS",
    "Action",
    "Entity",
    "MappingRow",
    "Plan",
    "Scope",
    "allowed_actions",
    "close_include",
    "default_include",
    "entity_label",
    "parse_include",
    "records_of",
    "validation_sentence",
]

# --- scope -----------------------------------------------------------------------

ScopeKind = Literal["all", "business", "practitioner"]
_SCOPE_KINDS: tuple[str, ...] = get_args(ScopeKind)
_SCOPE_FORMS = "use 'all', 'business:ID[,ID...]' or 'practitioner:ID[,ID...]'"


class Scope(BaseModel):
    """The one filter of a migration: all data, some businesses, or some practitioners.

    Attributes:
        kind: ``"all"``, ``"business"`` or ``"practitioner"``.
        ids: the source ids of the businesses or practitioners (decimal strings, in the
            order given, duplicates dropped); empty for ``"all"``.

    >>> Scope.parse("practitioner:7, 9")
    Scope(kind='practitioner', ids=['7', '9'])
    >>> str(Scope.parse("all"))
    'all'
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: ScopeKind = "all"
    ids: list[ClinikoId] = Field(default_factory=list)

    @field_validator("ids", mode="after")
    @classmethod
    def _no_repeats(cls, ids: list[str]) -> list[str]:
        return list(dict.fromkeys(ids))

    @model_validator(mode="after")
    def _ids_fit_kind(self) -> Scope:
        if self.kind == "all" and self.ids:
            raise ValueError("the 'all' scope takes no ids")
        if self.kind != "all" and not self.ids:
            raise ValueError(f"a {self.kind} scope needs at least one {self.kind} id")
        return self

    @classmethod
    def parse(cls, text: str) -> Scope:
        """Read ``"all"``, ``"business:ID[,ID...]"`` or ``"practitioner:ID[,ID...]"``.

        The kind is case-insensitive and spaces around ids are ignored.

        Raises:
            ConfigError: anything else, in one sentence saying what was wrong.
        """
        raw = text.strip()
        if not raw:
            raise ConfigError(f"The scope is empty; {_SCOPE_FORMS}.")
        kind, colon, rest = raw.partition(":")
        kind = kind.strip().lower()
        if kind not in _SCOPE_KINDS:
            raise ConfigError(f"Unknown scope kind {kind!r}; {_SCOPE_FORMS}.")
        if kind == "all":
            if colon:
                raise ConfigError(f"The 'all' scope takes no ids; write just 'all' (got {raw!r}).")
            return cls()
        if not rest.strip():
            raise ConfigError(
                f"The {kind} scope names no ids; give at least one {kind} id, as in '{kind}:123' or '{kind}:123,456'."
            )
        ids = [part.strip() for part in rest.split(",")]
        if "" in ids:
            raise ConfigError(
                f"The {kind} scope has an empty id in {rest.strip()!r}; separate ids with single commas."
            )
        bad = [i for i in ids if not (i.isascii() and i.isdigit())]
        if bad:
            raise ConfigError(
                f"Scope ids must be Cliniko ids (decimal digits); {', '.join(map(repr, bad))} "
                f"{'is' if len(bad) == 1 else 'are'} not."
            )
        return cls(kind=kind, ids=ids)  # type: ignore[arg-type]  # kind is checked above

    def __str__(self) -> str:
        return "all" if self.kind == "all" else f"{self.kind}:{','.join(self.ids)}"


# --- data types ------------------------------------------------------------------

#: Filterable by the scope (seed 001's starred and core list). Attendees come with group appointments.
CORE_TYPES: tuple[str, ...] = (
    "patients",
    "medical_alerts",
    "individual_appointments",
    "group_appointments",
    "unavailable_blocks",
    "treatment_notes",
    "patient_attachments",
)
#: Account-wide reference data, copied whole whatever the scope (seed 001's optional list, plus taxes).
OPTIONAL_TYPES: tuple[str, ...] = (
    "appointment_types",
    "taxes",
    "billable_items",
    "products",
    "concession_types",
    "treatment_note_templates",
    "contacts",
)
#: Money: only the local store can take these (Cliniko's API cannot create financial records).
FINANCIAL_TYPES: tuple[str, ...] = ("invoices", "invoice_items")

#: Every data type a plan can include, in stage order (DESIGN.md §4). ``attendees`` is
#: not a tick-box of its own: it always travels with ``group_appointments``.
DATA_TYPES: tuple[str, ...] = (
    *OPTIONAL_TYPES,
    "patients",
    "medical_alerts",
    "individual_appointments",
    "group_appointments",
    "attendees",
    "unavailable_blocks",
    "treatment_notes",
    "patient_attachments",
    *FINANCIAL_TYPES,
)

#: What a type brings with it when included. Only hard dependencies: a record that
#: cannot exist without its parent. Soft links (a patient's referring doctor, an
#: item's tax) are kept when both ends are included and left empty otherwise.
DEPENDS_ON: dict[str, tuple[str, ...]] = {
    "medical_alerts": ("patients",),
    "individual_appointments": ("patients",),
    "group_appointments": ("attendees", "patients"),
    "attendees": ("group_appointments", "patients"),
    "treatment_notes": ("patients",),
    "patient_attachments": ("patients",),
    "invoices": ("invoice_items", "patients"),
    "invoice_items": ("invoices",),
}

#: One plain sentence per data type, for the console's tick-boxes.
TYPE_DESCRIPTIONS: dict[str, str] = {
    "patients": "Patient records with their contact details and custom fields, archived patients included unless you turn that off; under a business or practitioner filter, only the patients seen or billed there (and those a chosen practitioner wrote notes about).",
    "medical_alerts": "The medical alerts (allergies, conditions) recorded on each patient that comes across.",
    "individual_appointments": "One-to-one appointments, past and future, with their attendance status (arrived, did not arrive, cancelled); they never trigger reminders in the destination.",
    "group_appointments": "Group classes with their attendees, each attendee keeping their own attendance status.",
    "attendees": "The patients booked into each group class; they always come with the group appointments.",
    "unavailable_blocks": "Times practitioners blocked out of the diary, such as leave, lunch or admin time.",
    "treatment_notes": "Treatment notes of the patients that come across; notes are not tied to a business, so under a business filter these are all notes of the patients seen or billed at that business, and under a practitioner filter every note the practitioner wrote.",
    "patient_attachments": "Files attached to patients (referrals, scans, consent forms); like notes, under a business filter these are all files of the patients seen there.",
    "appointment_types": "Every appointment type, archived ones included; the mapping table says which ones match an existing type in the destination and which are created.",
    "taxes": "The tax rates used by billable items and products.",
    "billable_items": "The services and fees the clinic bills for, with their prices.",
    "products": "Products the clinic sells, with prices and stock levels.",
    "concession_types": "Discount categories such as pensioner or student.",
    "treatment_note_templates": "The templates treatment notes are written from.",
    "contacts": "Referring doctors and other contacts; they are copied whole whatever the filter.",
    "invoices": "Invoices with their items and status, so that each patient's balance can be reconciled; only the local store can take them.",
    "invoice_items": "The lines of each invoice; they always come with the invoices.",
}

#: One record of a data type, as a sentence names it, where dropping the plural's "s" is not enough.
_SINGULAR: dict[str, str] = {
    "individual_appointments": "appointment",
    "patient_attachments": "attachment",
    "businesses": "business",
    "taxes": "tax",
}


#: Data types whose label is not just their name spelt out (what the console and sentences call them).
_LABELS = {
    "individual_appointments": "Appointments",
    "group_appointments": "Group appointments",
    "unavailable_blocks": "Unavailable blocks",
    "treatment_notes": "Treatment notes",
    "treatment_note_templates": "Treatment note templates",
    "patient_attachments": "Patient files",
    "medical_alerts": "Medical alerts",
    "appointment_types": "Appointment types",
    "billable_items": "Billable items",
    "concession_types": "Concession types",
    "invoice_items": "Invoice items",
}


def entity_label(entity: str) -> str:
    """A data type as a person reads it: ``treatment_notes`` -> ``Treatment notes``."""
    return _LABELS.get(entity, entity.replace("_", " ").capitalize())


def records_of(entity: str, count: int | None = None) -> str:
    """A data type's records as a sentence names them: one record without ``count``, else ``count`` of them.

    >>> records_of("unavailable_blocks"), records_of("taxes"), records_of("patients", 1), records_of("patients", 2)
    ('unavailable block', 'tax', '1 patient', '2 patients')
    """
    if count is not None and count != 1:
        return f"{count:,} {entity.replace('_', ' ')}"
    one = _SINGULAR.get(entity) or entity.removesuffix("s").replace("_", " ")
    return one if count is None else f"1 {one}"


#: Everything, for the local store.
DEFAULT_INCLUDE: tuple[str, ...] = DATA_TYPES

_GROUPS: dict[str, tuple[str, ...]] = {
    "core": CORE_TYPES,
    "optional": OPTIONAL_TYPES,
    "financial": FINANCIAL_TYPES,
    "all": DATA_TYPES,
}


def default_include(*, local: bool = True) -> list[str]:
    """Every data type the destination can take: all of them for the local store, no financials for Cliniko."""
    return [t for t in DATA_TYPES if local or t not in FINANCIAL_TYPES]


def close_include(names: Iterable[str]) -> list[str]:
    """The data types with everything they depend on, in stage order.

    Raises:
        ConfigError: a name is not a data type (the sentence names every unknown one).

    >>> close_include(["treatment_notes", "group_appointments"])
    ['patients', 'group_appointments', 'attendees', 'treatment_notes']
    """
    wanted = list(names)
    unknown = [n for n in dict.fromkeys(wanted) if n not in DATA_TYPES]
    if unknown:
        raise ConfigError(
            f"Unknown data type{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
            f"choose from {', '.join(DATA_TYPES)} (or core, optional, financial, all)."
        )
    closed: set[str] = set()
    todo = list(wanted)
    while todo:
        name = todo.pop()
        if name not in closed:
            closed.add(name)
            todo.extend(DEPENDS_ON.get(name, ()))
    return [t for t in DATA_TYPES if t in closed]


def parse_include(text: str, *, local: bool = True) -> list[str]:
    """Read a comma-separated list of data types and close it under its dependencies.

    Names are case-insensitive; the group names ``core``, ``optional``, ``financial``
    and ``all`` stand for their lists (:data:`CORE_TYPES`...).

    Args:
        text: e.g. ``"patients,individual_appointments,treatment_notes"``.
        local: the destination is the local store; ``False`` (a Cliniko account)
            refuses financial types, which Cliniko's API cannot create, and ``all``
            then means all that Cliniko can take.

    Raises:
        ConfigError: the list is empty, names an unknown type, or asks Cliniko for invoices.

    >>> parse_include("individual_appointments")
    ['patients', 'individual_appointments']
    """
    names: list[str] = []
    for part in text.split(","):
        name = part.strip().lower()
        if not name:
            continue
        if name in _GROUPS:
            names.extend(t for t in _GROUPS[name] if local or name != "all" or t not in FINANCIAL_TYPES)
        else:
            names.append(name)
    if not names:
        raise ConfigError(f"Choose at least one data type, from: {', '.join(DATA_TYPES)}.")
    closed = close_include(names)
    if not local:
        _refuse_financials(closed)
    return closed


def _refuse_financials(include: Iterable[str]) -> None:
    money = [t for t in include if t in FINANCIAL_TYPES]
    if money:
        raise ConfigError(
            f"A Cliniko destination cannot take {' or '.join(money)}: Cliniko's API cannot create "
            "financial records; choose the local store, or leave them out."
        )


# --- mapping rows ----------------------------------------------------------------

Entity = Literal["practitioners", "businesses", "appointment_types"]
Action = Literal["map", "create", "former", "reassign", "exclude", "unresolved"]
#: The entities with mapping tables, in stage order.
ENTITIES: tuple[Entity, ...] = ("businesses", "practitioners", "appointment_types")

_TARGETLESS: frozenset[str] = frozenset({"create", "exclude", "unresolved"})


def allowed_actions(entity: str, *, can_create: bool) -> tuple[Action, ...]:
    """The actions a mapping row of ``entity`` may take, for the console's choice lists.

    - ``map``: the same record exists in the destination (``target_id``).
    - ``create``: create it in the destination. The local store can create all three;
      Cliniko's API can create appointment types but not practitioners or businesses
      (``can_create=False``), which the clinic sets up itself (seed 001).
    - ``former`` (practitioners): a practitioner who left; their appointments go to one
      generic "Former practitioner" (``target_id`` if the destination has one, else the
      engine creates it once, which only the local store can do).
    - ``reassign`` (practitioners): give their appointments to another practitioner
      (``target_id``).
    - ``exclude`` (practitioners, businesses): skip their appointments, each recorded with
      the reason ``practitioner_excluded`` or ``business_excluded``.
    - ``unresolved``: nothing decided yet; a plan with such rows cannot run.
    """
    if entity == "practitioners":
        actions: tuple[Action, ...] = ("map", "former", "reassign", "exclude")
    elif entity == "businesses":
        actions = ("map", "exclude")
    elif entity == "appointment_types":
        return ("map", "create", "unresolved")
    else:
        raise ConfigError(f"Unknown mapping entity {entity!r}; use one of {', '.join(ENTITIES)}.")
    return (*actions, "create", "unresolved") if can_create else (*actions, "unresolved")


class MappingRow(BaseModel):
    """One source record of a mapping table and what becomes of it in the destination.

    ``map`` and ``reassign`` need ``target_id``; ``former`` may have one. For
    ``create``, ``exclude`` and ``unresolved`` a target means nothing and is cleared.
    Whether the destination can ``create`` is checked against the plan's destination
    (:meth:`Plan` and ``mapping.validate``), not here.
    """

    model_config = ConfigDict(extra="forbid")

    entity: Entity
    source_id: ClinikoId
    source_name: str
    source_active: bool = True
    action: Action
    target_id: str | None = None
    target_name: str | None = None
    note: str = ""

    @field_validator("target_id", "target_name", mode="before")
    @classmethod
    def _blank_is_none(cls, value: Any) -> Any:
        # An edited table cell left empty arrives as "" (or NaN from some frames).
        if isinstance(value, str) and not value.strip():
            return None
        if isinstance(value, float) and value != value:
            return None
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @model_validator(mode="after")
    def _action_fits(self) -> MappingRow:
        if self.action not in allowed_actions(self.entity, can_create=True):
            only = (
                "practitioners" if self.action in ("former", "reassign") else "practitioners and businesses"
            )
            raise ValueError(f"{self.label()}: the action '{self.action}' is only for {only}")
        if self.action in ("map", "reassign") and self.target_id is None:
            raise ValueError(f"{self.label()}: the action '{self.action}' needs a target_id")
        if self.action in _TARGETLESS:
            self.target_id = None
            self.target_name = None
        return self

    def label(self) -> str:
        """``practitioners 'Anh Trần' (source id 7)``: how messages name the row."""
        return f"{self.entity} {self.source_name!r} (source id {self.source_id})"


def _check_rows(rows: Iterable[MappingRow], *, can_create: bool | None) -> None:
    """Refuse duplicate rows and, when the destination is known, creates it cannot do."""
    seen: set[tuple[str, str]] = set()
    for row in rows:
        key = (row.entity, row.source_id)
        if key in seen:
            raise ValueError(f"{row.entity} source id {row.source_id} has more than one mapping row")
        seen.add(key)
        if can_create is None:
            continue
        if row.action not in allowed_actions(row.entity, can_create=can_create):
            raise ValueError(
                f"{row.label()}: a Cliniko destination cannot create {row.entity} (Cliniko's API cannot); "
                "set it up in the destination account and map to it, or choose another action"
            )
        if row.action == "former" and row.target_id is None and not can_create:
            raise ValueError(
                f"{row.label()}: a Cliniko destination cannot create the generic 'Former practitioner', so "
                "'former' needs its id as target_id (add one to the destination account if it has none)"
            )


# --- the plan --------------------------------------------------------------------

_SHARD = re.compile(r"^[a-z]{2}[0-9]{1,2}$")


def _tool_version() -> str:
    try:
        return f"cliniko-migrator {metadata.version('cliniko-migrator')}"
    except metadata.PackageNotFoundError:
        return "cliniko-migrator"


class Plan(BaseModel):
    """Everything a run needs except the API keys. Plain JSON; unknown fields are refused.

    Attributes:
        source_account: the name the source account's batches go by: its name as the key's
            ``/settings`` reported it for the account's first batch in the workspace, kept through
            a rename (:func:`migrator.workflow.source_account_of`); on a hosted instance its id.
        source_account_id: the source account's id, when the key's settings give it: what
            binds a renamed account to the name its batches go by (:func:`migrator.workflow.source_account_of`).
        source_shard: the source key's shard (``au1``, ``uk1``...).
        destination: ``"sqlite:PATH"`` (the local store) or ``"cliniko:ACCOUNT_ID"`` (a Cliniko
            account, as :meth:`ClinikoDestination.describe` names it; plain ``"cliniko"`` before
            the account is known).
        destination_account: for a Cliniko destination, the account name its key must
            belong to (seed 001 insists on being sure of the account); checked before a run.
        scope: the one filter (:class:`Scope`).
        include: data types, closed under :data:`DEPENDS_ON`, in stage order; when left
            out, everything the destination can take (:func:`default_include`).
        include_archived_patients: bring archived patients too (``/patients/archived``).
        mappings: practitioner, business and appointment-type rows.
        created_with: the tool version that wrote the plan.
    """

    model_config = ConfigDict(extra="forbid")

    source_account: str = Field(min_length=1)
    source_account_id: str | None = None
    source_shard: str
    destination: str
    destination_account: str | None = None
    scope: Scope = Field(default_factory=Scope)
    include: list[str] = Field(default_factory=list)
    include_archived_patients: bool = True
    mappings: list[MappingRow] = Field(default_factory=list)
    created_with: str = Field(default_factory=_tool_version)

    @model_validator(mode="before")
    @classmethod
    def _default_include(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("include") is None:
            local = str(data.get("destination", "")).startswith("sqlite:")
            data = {**data, "include": default_include(local=local)}
        return data

    @field_validator("source_shard")
    @classmethod
    def _shard(cls, value: str) -> str:
        if not _SHARD.match(value):
            raise ValueError(f"the source shard must look like 'au1' or 'uk2', got {value!r}")
        return value

    @field_validator("destination")
    @classmethod
    def _destination(cls, value: str) -> str:
        if value == "cliniko" or (value.startswith("cliniko:") and value[len("cliniko:") :].strip()):
            return value
        if value.startswith("sqlite:") and value[len("sqlite:") :].strip():
            return value
        raise ValueError(f"the destination must be 'sqlite:PATH' or 'cliniko[:ACCOUNT_ID]', got {value!r}")

    @model_validator(mode="after")
    def _consistent(self) -> Plan:
        try:
            self.include = close_include(self.include)
            if not self.is_local:
                _refuse_financials(self.include)
        except ConfigError as exc:
            raise ValueError(str(exc).rstrip(".")) from None
        if not self.include:
            raise ValueError("the plan includes no data types")
        _check_rows(self.mappings, can_create=self.is_local)
        return self

    # -- destination ---------------------------------------------------------------

    @property
    def is_local(self) -> bool:
        """The destination is the local store (which can create anything)."""
        return self.destination.startswith("sqlite:")

    @property
    def sqlite_path(self) -> str | None:
        """The local store's path, or ``None`` for a Cliniko destination."""
        return self.destination[len("sqlite:") :] if self.is_local else None

    # -- JSON ----------------------------------------------------------------------

    def to_json(self) -> str:
        """The plan as indented JSON (UTF-8 text; names stay readable, not escaped)."""
        return self.model_dump_json(indent=2)

    @classmethod
    def from_json(cls, text: str | bytes) -> Plan:
        """Read a plan written by :meth:`to_json`.

        Raises:
            ConfigError: the text is not JSON or not a valid plan, in one sentence.
        """
        try:
            return cls.model_validate_json(text)
        except ValidationError as exc:
            raise ConfigError(f"The plan is not valid: {validation_sentence(exc)}.") from None

    # -- mappings ------------------------------------------------------------------

    def mapping_for(self, entity: str) -> dict[str, MappingRow]:
        """The rows of one entity by source id."""
        if entity not in ENTITIES:
            raise ConfigError(f"Unknown mapping entity {entity!r}; use one of {', '.join(ENTITIES)}.")
        return {row.source_id: row for row in self.mappings if row.entity == entity}

    def unresolved(self) -> list[MappingRow]:
        """The rows nobody has decided yet."""
        return [row for row in self.mappings if row.action == "unresolved"]

    def require_resolved(self) -> None:
        """Refuse to go on while any mapping row is unresolved.

        Raises:
            MappingError: one sentence listing the unresolved rows by entity and name.
        """
        rows = self.unresolved()
        if not rows:
            return
        groups = [
            f"{entity} {', '.join(r.source_name for r in rows if r.entity == entity)}"
            for entity in ("practitioners", "businesses", "appointment_types")
            if any(r.entity == entity for r in rows)
        ]
        count = f"{len(rows)} mapping row is" if len(rows) == 1 else f"{len(rows)} mapping rows are"
        raise MappingError(
            f"{count} unresolved: {'; '.join(groups)}. Choose an action for each before running."
        )


def validation_sentence(exc: ValidationError, limit: int = 3) -> str:
    """pydantic's errors as one clause: where, and what was wrong; never the offending value.

    Values are left out on purpose: a misplaced key pasted into a plan must not be echoed.
    """
    parts = []
    for error in exc.errors(include_url=False, include_input=False)[:limit]:
        where = ".".join(str(p) for p in error["loc"])
        message = str(error["msg"]).removeprefix("Value error, ")
        parts.append(f"{where}: {message}" if where else message)
    more = len(exc.errors()) - limit
    if more > 0:
        parts.append(f"and {more} more problem{'s' if more > 1 else ''}")
    return "; ".join(parts)
