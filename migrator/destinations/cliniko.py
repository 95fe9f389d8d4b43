"""Another Cliniko account as the destination, written through Cliniko's API (seed 001).

>>> dest = ClinikoDestination.connect(dest_client, ledger, source=source_client)   # doctest: +SKIP
>>> preflight(source_client, dest).raise_for_refusal()                            # doctest: +SKIP
>>> Engine(plan, source_client, dest, ledger).run()                                # doctest: +SKIP

It implements the engine's destination interface (:class:`migrator.destinations.Destination`)
with what Cliniko's API can do (``CLINIKO_API.md`` §4):

- **What it takes**: patients (with their referral source, and their custom fields
  matched to the destination's by name: :mod:`migrator.destinations.custom_fields`),
  individual and group appointments with their attendees, unavailable blocks,
  attendance (arrived, did not arrive, cancelled with its reason), treatment notes,
  patient attachments (downloaded from the source, uploaded through Cliniko's
  presigned S3 form), medical alerts; and optionally contacts, products,
  billable items, taxes, appointment types and treatment-note templates. Reference
  records (templates, taxes, items, products, concession types) with the same name as
  one already in the destination are linked to it, not duplicated. Concession types
  cannot be created through the API: one missing from the destination is skipped with
  that reason, and its patients come across without it.
- **What it never attempts** (:data:`NOT_TRANSFERABLE`): users, practitioners and
  businesses (set up by the clinic and mapped), invoices, invoice items and payments.
  Balances leave as an opening-balance report instead (:mod:`migrator.opening_balance`).
- **No patient is messaged**: patients are created with ``reminder_type: "None"`` and
  ``receives_confirmation_emails: false``; their own preferences are kept in the ledger
  (``patient_preferences``) and restored by :func:`go_live`, a separate step.
- **Notes authorship**: Cliniko makes the key's practitioner the author of every note.
  Each note gets a first section naming its original author and date; and notes whose
  practitioner maps to a destination practitioner with a key of their own
  (``note_authors``) are written with that key, so they keep their real author.
- **Crash safety**: each create is recorded in the ledger (``writes``) as *intended*,
  and committed, before its request leaves; then *created* with its destination id,
  then *completed* once its follow-ups (a cancellation, an archive) are done. On resume
  an intended write without an id is looked up in the destination (records created
  since the intent, compared on the fields that identify them) before anything is sent
  again, so a crash between request and answer never duplicates a record.
- **Pacing**: writes spend the destination key's own budget (its own client and pacer),
  concurrently with the source's reads; up to ``workers`` creates of a page are in
  flight at once, so Cliniko's latency does not idle the budget.
- **Deletion** within 48 hours (:func:`migrator.batches.delete_batch`): what the batch
  created is deleted where the API can delete it, and its patients are archived (the
  API cannot delete patients). Records the clinic created since for those patients
  stay, attached to the archived patient.

Re-runs link nothing twice and create nothing twice (the ledger says what came
across). A record an earlier batch created and the source has changed since is rewritten
(``writes.sent`` keeps what each record last received): only the fields that changed at
the source are sent, in a partial ``PUT``, so a field the clinic has corrected in the
destination meanwhile stays as they set it unless the source changed it too; a
cancellation or an archive at the source follows with its own request. What Cliniko
cannot do is reported on the record's item (``update_refused``): updating unavailable
blocks or attachments, undoing a cancellation, or rewriting a record the clinic has
deleted from the destination (it is not brought back). Records linked to, not created,
are never rewritten. A ``PUT`` is idempotent, so a run killed mid-update simply sends it
again on resume; killed after the update was recorded but before the page's items, the
resumed batch reports the record ``updated`` as a clean run would, and sends nothing
again (``writes.sent_before`` keeps what the record held before the batch's rewrite).
"""

from __future__ import annotations

import json
import logging
import threading
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import httpx
import polars as pl

from migrator.cliniko.client import ClinikoClient, Identity
from migrator.cliniko.filters import Filter
from migrator.cliniko.models import id_from_url, parse_record
from migrator.cliniko.resources import resource
from migrator.cliniko.transport import EnvironmentProxies
from migrator.destinations.custom_fields import CustomFields
from migrator.destinations.local import KeptLink
from migrator.errors import (
    APIError,
    ConfigError,
    MigratorError,
    NotFoundError,
    RetriableAPIError,
    ValidationAPIError,
)
from migrator.ledger import Ledger
from migrator.mapping import normalise_name, reference_from_client
from migrator.plan import entity_label
from migrator.preview import minutes_at
from migrator.stages import STAGES

if TYPE_CHECKING:
    from migrator.scoped_preview import ScopedPreview

__all__ = [
    "DELETE_ORDER",
    "NOT_TRANSFERABLE",
    "TRANSFERABLE",
    "ClinikoDestination",
    "Preflight",
    "TransferEstimate",
    "WriteRefused",
    "go_live",
    "links_into",
    "preflight",
    "transfer_estimate",
    "transfer_requests",
]

log = logging.getLogger(__name__)

#: What Cliniko's API cannot take, and why: shown on the preview, never attempted.
NOT_TRANSFERABLE: dict[str, str] = {
    "users": "Cliniko's API cannot create users; set them up in the destination account.",
    "practitioners": "Cliniko's API cannot create practitioners; they are mapped to the destination's own.",
    "businesses": "Cliniko's API cannot create businesses; they are mapped to the destination's own.",
    "invoices": "Cliniko cannot import financials; balances come out as an opening-balance report.",
    "invoice_items": "Cliniko cannot import financials; invoice lines stay in the source account.",
    "payments": "Cliniko's API has no payments at all; balances come out as an opening-balance report.",
}

#: Requests in the destination account per record a transfer creates, where not one: a file
#: first asks for its presigned upload form; a concession type cannot be created at all.
_WRITES_PER_CREATE: dict[str, int] = {"patient_attachments": 2, "concession_types": 0}


@dataclass(frozen=True)
class TransferEstimate:
    """What a transfer of a preview's records into a Cliniko account costs, and how long it takes.

    Attributes:
        reads: requests on the source key: the preview's list pages, and each file's download.
        writes: requests on the destination key: a create per record (a file two: its upload
            form, then its create); never users, practitioners, businesses or financials. A
            cancelled appointment or attendee, or an archived patient, costs one more, counted
            when the preview counted them (``count_follow_ups``); a record linked to an equal
            one already in the destination (same name, or same patient and start) costs none.
        minutes: the two keys' budgets are spent at once, so the larger of the two at the
            pace, rounded up to a tenth (``0.0`` unpaced). Notes written with their author's
            own key (``MIGRATOR_NOTE_KEYS``) spend that key's budget, which this leaves aside.
        exact: whether the records were counted rather than estimated (:class:`ScopedPreview`).
    """

    reads: int
    writes: int
    minutes: float
    exact: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "reads": self.reads,
            "writes": self.writes,
            "estimated_minutes": self.minutes,
            "exact": self.exact,
        }


def transfer_requests(records: Mapping[str, int]) -> tuple[int, int]:
    """Requests that creating ``records`` (``{entity: n}``) spends beyond reading their lists.

    Returns ``(writes, downloads)``: writes on the destination key, one per record, a file
    two (its upload form, then its create), none for what Cliniko cannot create
    (:data:`NOT_TRANSFERABLE`, concession types); and reads on the source key, one per
    file, downloaded before its upload. See :class:`TransferEstimate`.
    """
    writes = sum(n * _WRITES_PER_CREATE.get(e, 1) for e, n in records.items() if e not in NOT_TRANSFERABLE)
    return writes, records.get("patient_attachments", 0)


def transfer_estimate(preview: ScopedPreview) -> TransferEstimate:
    """:class:`TransferEstimate` of moving what ``preview`` counted into a Cliniko account.

    Reading a clinic costs one request per 100 records, writing it one per record: at
    Cliniko's 200 requests a minute the writes, not the reads, set a transfer's time. The
    cancellations and archives to send come on top where the preview counted them
    (:attr:`~migrator.scoped_preview.ScopedPreview.follow_ups`).
    """
    writes, downloads = transfer_requests(preview.expected())
    writes += preview.follow_up_total
    reads = preview.requests + downloads
    return TransferEstimate(
        reads, writes, minutes_at(max(reads, writes), preview.requests_per_minute), preview.exact
    )


#: Writable fields per entity, as Cliniko's docs show them (foreign keys come from the row).
_FIELDS: dict[str, tuple[str, ...]] = {
    "patients": (
        "title", "first_name", "last_name", "preferred_first_name", "email", "date_of_birth",
        "gender_identity", "sex", "pronouns", "address_1", "address_2", "address_3", "city", "state",
        "post_code", "country", "patient_phone_numbers", "emergency_contact", "occupation", "notes",
        "appointment_notes", "medicare", "medicare_reference_number", "dva_card_number",
        "invoice_default_to", "invoice_email", "invoice_extra_information", "old_reference_id",
        "referral_source", "accepted_privacy_policy", "accepted_email_marketing",
        "accepted_sms_marketing", "time_zone",
    ),
    "individual_appointments": ("starts_at", "ends_at", "notes", "patient_arrived", "did_not_arrive"),
    "group_appointments": ("starts_at", "ends_at", "max_attendees", "notes"),
    "attendees": ("arrived", "notes"),
    "unavailable_blocks": ("starts_at", "ends_at", "notes"),
    "treatment_notes": ("title", "draft", "content"),
    "treatment_note_templates": ("name", "content", "print_settings"),
    "medical_alerts": ("name",),
    "contacts": (
        "title", "first_name", "last_name", "preferred_name", "company_name", "occupation", "email",
        "phone_numbers", "address_1", "address_2", "address_3", "city", "state", "post_code",
        "country_code", "notes", "provider_number", "doctor_type", "type_code",
    ),
    "appointment_types": (
        "name", "category", "color", "description", "duration_in_minutes", "max_attendees",
        "show_in_online_bookings",
    ),
    "billable_items": ("item_code", "item_type", "name", "price"),
    "products": ("item_code", "name", "product_supplier_name", "serial_number", "notes", "cost_price",
                 "price_ex_tax", "stock_level"),
    "taxes": ("name", "rate"),
    "patient_attachments": ("description",),
}  # fmt: skip

#: Foreign keys sent with each entity (the row holds them as destination ids).
_FKS: dict[str, tuple[str, ...]] = {
    "patients": ("concession_type_id", "referring_doctor_id"),
    "individual_appointments": ("patient_id", "practitioner_id", "appointment_type_id", "business_id"),
    "group_appointments": ("practitioner_id", "appointment_type_id", "business_id"),
    "attendees": ("booking_id", "patient_id"),
    "unavailable_blocks": ("practitioner_id", "business_id"),
    "treatment_notes": ("patient_id", "treatment_note_template_id", "booking_id"),
    "medical_alerts": ("patient_id",),
    "appointment_types": ("billable_item_id", "product_id", "treatment_note_template_id"),
    "billable_items": ("tax_id",),
    "products": ("tax_id",),
    "patient_attachments": ("patient_id",),
}

#: The data types a Cliniko destination can take (seed 001's core and optional lists).
TRANSFERABLE: tuple[str, ...] = (*_FIELDS, "concession_types")

#: Fields that identify a created record when a crash hid the answer to its create.
_PROBE: dict[str, tuple[str, ...]] = {
    "patients": ("first_name", "last_name", "date_of_birth", "email"),
    "individual_appointments": ("starts_at", "patient_id", "practitioner_id"),
    "group_appointments": ("starts_at", "practitioner_id", "business_id"),
    "attendees": ("booking_id", "patient_id"),
    "unavailable_blocks": ("starts_at", "ends_at", "practitioner_id"),
    "treatment_notes": ("patient_id", "title", "booking_id"),
    "medical_alerts": ("patient_id", "name"),
    "patient_attachments": ("patient_id", "description"),
    "contacts": ("first_name", "last_name", "company_name", "email"),
}

#: Reference entities linked by name to a destination record of the same name.
_BY_NAME: dict[str, str] = {
    "treatment_note_templates": "name",
    "concession_types": "name",
    "taxes": "name",
    "billable_items": "name",
    "products": "name",
}

#: What a create's follow-up requests set, kept with what a record received (see ``stored_form``).
_STATES: dict[str, tuple[str, ...]] = {
    "individual_appointments": ("cancelled_at",),
    "attendees": ("cancelled_at",),
    "patients": ("archived_at",),
}

#: Reverse dependency order for deleting a batch.
DELETE_ORDER: tuple[str, ...] = (
    "patient_attachments", "treatment_notes", "unavailable_blocks", "attendees", "group_appointments",
    "individual_appointments", "medical_alerts", "patients", "contacts", "appointment_types",
    "treatment_note_templates", "products", "billable_items", "taxes",
)  # fmt: skip

#: How far before a recorded intent a crashed create's record is looked for (clock skew).
_PROBE_SLACK = timedelta(minutes=2)


class WriteRefused(MigratorError):
    """Cliniko refused one record (422, or a type it cannot create); the run skips it with this sentence."""


@dataclass
class _Write:
    """One create: the row, its request body, and what became of it."""

    source_id: str
    row: dict[str, Any]
    body: dict[str, Any]
    state: str = "new"  # new -> intended -> created -> completed | refused
    dest_id: str | None = None
    intended_at: str | None = None
    refused: str | None = None
    unconfirmed: bool = False


def _now() -> str:
    return datetime.now(UTC).isoformat()


class ClinikoDestination:
    """A Cliniko account the engine writes into, through its own writable client.

    Args:
        client: a *writable* client of the destination key (an administrator who is
            an active practitioner: see :func:`preflight`).
        ledger: the workspace's ledger (``writes`` and ``patient_preferences`` live there).
        account_id, account_name: the destination account, from its ``/settings``.
        source: the source's read-only client, to download attachments' files and read
            its custom-field definitions.
        note_authors: destination practitioner id -> a writable client of that
            practitioner's own key, so their notes keep their author.
        workers: creates of one page in flight at once.
        custom_fields_definition: the destination's ``patient_custom_fields_definition``
            when the caller has read its settings already (else read when first needed).
    """

    DELETE_ORDER = DELETE_ORDER
    #: Writes cannot join the ledger's transaction: the engine commits before calling insert.
    transactional = False

    def __init__(
        self,
        client: ClinikoClient,
        ledger: Ledger,
        *,
        account_id: str,
        account_name: str | None = None,
        source: ClinikoClient | None = None,
        note_authors: Mapping[str, ClinikoClient] | None = None,
        workers: int = 4,
        custom_fields_definition: Mapping[str, Any] | None = None,
    ) -> None:
        if not client.writable:
            raise ConfigError("A Cliniko destination needs a writable client of the destination key.")
        self.client = client
        self.ledger = ledger
        self.account_id = str(account_id)
        self.account_name = account_name
        self.source = source
        self.note_authors = dict(note_authors or {})
        self.workers = max(1, workers)
        self.stop: threading.Event | None = None
        #: Creates whose answer was lost and that were found in the account instead of sent again.
        self.recovered = 0
        self._index: dict[str, dict[Any, list[str]]] = {}
        self._pool: ThreadPoolExecutor | None = None
        # The presigned upload goes to storage, not the API: unpaced, but by the same proxy rules.
        self._uploads = httpx.Client(
            timeout=client.config.timeout, transport=EnvironmentProxies(httpx.Limits())
        )
        self._custom_fields: CustomFields | None = None
        self._custom_fields_definition = custom_fields_definition

    @classmethod
    def connect(
        cls,
        client: ClinikoClient,
        ledger: Ledger,
        *,
        source: ClinikoClient | None = None,
        note_keys: Iterable[ClinikoClient] = (),
        workers: int = 4,
    ) -> ClinikoDestination:
        """The destination of ``client``'s account; ``note_keys`` are extra practitioners' clients.

        Raises:
            ConfigError: a note key belongs to another account or to no active practitioner.
        """
        settings = client.get("/settings/public")  # any user may read it
        account = settings.get("account") or {}
        account_id = str(account.get("id") or "")
        if not account_id:
            raise ConfigError("The destination's /settings has no account id; is this a Cliniko key?")
        if source is not None and source.account_id() == account_id:
            raise ConfigError(_same_account(account.get("name") or account_id))
        authors: dict[str, ClinikoClient] = {}
        extras = list(note_keys)
        for n, extra in enumerate(extras, 1):
            which = "A note author's key" if len(extras) == 1 else f"Note author's key {n} of {len(extras)}"
            try:
                their_account = extra.account_id()
            except APIError as exc:  # say which of the keys Cliniko refused
                raise ConfigError(f"{which}: {exc}") from exc
            if their_account != account_id:
                raise ConfigError(f"{which} belongs to another Cliniko account than the destination key.")
            user = extra.get("/user")
            found = extra.get("/practitioners", [("q[]", f"user_id:={user.get('id')}")])
            practitioners = found.get("practitioners") or []
            if not practitioners:
                raise ConfigError(
                    f"{which} belongs to {user.get('first_name') or 'a user'}, who is not an "
                    "active practitioner of the destination, so it cannot author notes."
                )
            authors[str(practitioners[0]["id"])] = extra
        return cls(
            client,
            ledger,
            account_id=account_id,
            account_name=account.get("name"),
            source=source,
            note_authors=authors,
            workers=workers,
            custom_fields_definition=settings.get("patient_custom_fields_definition") or {},
        )

    @property
    def custom_fields(self) -> CustomFields:
        """The source's patient custom fields matched by name to the destination's (read once).

        Both definitions come from ``/settings/public``, which any user may read.
        Without a source client only the names in each patient's answer are known, so
        checkbox and radio choices (which Cliniko names by token alone) are left out.
        """
        if self._custom_fields is None:
            source = self.source.get("/settings/public") if self.source is not None else {}
            dest = self._custom_fields_definition
            if dest is None:
                dest = self.client.get("/settings/public").get("patient_custom_fields_definition")
            self._custom_fields = CustomFields(source.get("patient_custom_fields_definition"), dest)
        return self._custom_fields

    def describe(self) -> str:
        """The destination as a batch records it: ``cliniko:<account id>`` (never a key)."""
        return f"cliniko:{self.account_id}"

    @property
    def requests(self) -> int:
        """Requests sent so far with the destination's keys: the administrator's and the note authors'."""
        clients = {id(c): c for c in (self.client, *self.note_authors.values())}
        return sum(c.stats.requests for c in clients.values())

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self._uploads.close()

    # -- reads the engine asks for ------------------------------------------------------------

    def reference(self, entity: str) -> pl.DataFrame:
        """The destination side of a mapping table, read from the account."""
        return reference_from_client(self.client, entity)

    def setup_reference(self, entity: str, rows: Iterable[Mapping[str, Any]]) -> list[str]:
        raise ConfigError(
            f"Cliniko's API cannot create {entity_label(entity).lower()}; set them up in the destination account and map to them."
        )

    def count(self, entity: str, batch_id: str | None = None) -> int:
        """How many records of ``entity`` the account holds (or ``batch_id`` created)."""
        if batch_id is not None:
            return len(self.created_by(batch_id, entity))
        return sum(self.client.count(entity, route=route) for route in self._routes(entity))

    def _ours(self, entity: str, source_account: str | None = None, *, standing: bool = False) -> set[str]:
        """Destination ids of ``entity`` that batches into this account created (from one source).

        ``standing`` leaves out what deleted batches deleted (their patients stay, archived).
        """
        where, params = "", []
        if standing and "delete" in resource(entity).writes:
            where += " AND b.status != 'deleted'"
        if source_account is not None:
            where += " AND b.source_account = ?"
            params.append(source_account)
        return {dest_id for dest_id, _ in self._creates(entity, where, params)}

    def _creates(self, entity: str, where: str = "", params: Sequence[Any] = ()) -> set[tuple[str, str]]:
        """``(destination id, batch id)`` of what batches into this account created (:func:`_recorded_creates`)."""
        return _recorded_creates(self.ledger, self.describe(), entity, where, params)

    def _lost_creates(self, entity: str, source_account: str) -> set[str]:
        """Records this source's creates made though their answers were lost (a run killed mid-request).

        Found by their probes, as a resumed create finds them: not recorded yet, but not the
        clinic's own either, so never a natural-key match.
        """
        return self._found_unanswered(
            entity, " AND b.source_account = ? AND b.status NOT IN ('deleting', 'deleted')", [source_account]
        )

    def _found_unanswered(self, entity: str, where: str, params: Sequence[Any]) -> set[str]:
        """Destination ids of the records that creates whose answers were lost made, looked up by probe.

        The creates are the ``writes`` still ``intended`` with no id, of the batches ``where``
        (``b``, with its ``params``) picks; nothing is recorded.
        """
        with self.ledger.lock:
            rows = self.ledger.conn.execute(
                "SELECT w.source_id, w.intended_at, w.probe FROM writes w JOIN batches b ON b.id = w.batch_id "
                "WHERE b.destination = ? AND w.entity = ? AND w.state = 'intended' AND w.dest_id IS NULL"
                + where,
                (self.describe(), entity, *params),
            ).fetchall()
        if not rows:
            return set()
        writes = [_Write(r[0], {}, json.loads(r[2] or "{}"), intended_at=r[1]) for r in rows]
        self._look_up(entity, writes, count=False)
        return {w.dest_id for w in writes if w.dest_id is not None}

    def has_foreign(self, entity: str, *, source_account: str) -> bool:
        """Whether the account holds records of ``entity`` that no batch from this source created."""
        if entity not in _FIELDS and entity not in _BY_NAME:
            return False
        return self.foreign_count(entity, source_account=source_account) > 0

    def foreign_count(self, entity: str, *, source_account: str) -> int:
        """How many records of ``entity`` the account holds that no batch from this source created.

        Archived ones count on both sides: the source's archived patients come across
        archived, and a deleted batch's patients stay archived, while what it deleted does
        not count as ours. Reference lists linked by name (templates, taxes, items...) are
        short, so their ids are read and compared. For the rest the figure is the account's
        count less ours still in it. Records of ours the clinic has deleted by hand are read
        from the list's ``/deleted`` route (what changed since this source's first batch into
        the account: usually one request); counted as still there, each would hide one the
        clinic made itself, and at zero the engine would not look for equal records at all.
        """
        ours = self._ours(entity, source_account, standing=True)
        if entity in _BY_NAME:
            return sum(
                str(raw.get("id")) not in ours
                for route in self._routes(entity)
                for page in self.client.pages(entity, route=route)
                for raw in page.records
            )
        gone = self._deleted_by_hand(entity, ours, source_account) if ours else set()
        return max(0, self.count(entity) - len(ours - gone))

    def _deleted_by_hand(self, entity: str, ours: set[str], source_account: str) -> set[str]:
        """Which of ``ours`` the account's ``/deleted`` list holds.

        The clinic deleted them by hand (or a batch deletion was cut short).
        """
        if "deleted" not in resource(entity).list_routes:
            return set()
        with self.ledger.lock:
            (first,) = self.ledger.conn.execute(
                "SELECT min(created_at) FROM batches WHERE destination = ? AND source_account = ?",
                (self.describe(), source_account),
            ).fetchone()
        if first is None:
            return set()
        # A record of ours was made after its batch began, so whatever touched it last did too.
        since = [Filter("updated_at", ">", datetime.fromisoformat(first) - _PROBE_SLACK)]
        listed = (
            _listed_id(raw)
            for page in self.client.pages(entity, since, route="deleted")
            for raw in page.records
        )
        return ours.intersection(listed)

    def _records(self, entity: str, filters: Sequence[Filter] = (), route: str | None = None) -> list[dict]:
        out: list[dict[str, Any]] = []
        for page in self.client.pages(entity, filters, route=route):
            for raw in page.records:
                try:
                    out.append(parse_record(entity, raw).model_dump(mode="json"))
                except ValueError:
                    continue  # a record we cannot read is not one we can link to
        return out

    def _built(self, name: str, key: Callable[[dict[str, Any]], Any], foreign_of: str) -> dict:
        """An index (``name``) of the account's records not created from ``foreign_of``, built once.

        ``name`` is the entity, or the entity and what the index is by (``patients_by_email``).
        """
        if name not in self._index:
            entity = name.split("_by_")[0]
            ours = self._ours(entity, foreign_of) | self._lost_creates(entity, foreign_of)
            index: dict[Any, list[str]] = {}
            for route in self._routes(entity):
                for record in self._records(entity, route=route):
                    k = key(record) if str(record["id"]) not in ours else None
                    if k is not None:
                        index.setdefault(k, []).append(str(record["id"]))
            self._index[name] = index
        return self._index[name]

    def find_patients(
        self,
        first_name: str | None,
        last_name: str | None,
        date_of_birth: Any,
        *,
        exclude_source_account: str,
    ) -> list[str]:
        """Patients of the account with the same names (case, accents, spacing aside) and birth date."""
        if not (first_name and last_name and date_of_birth):
            return []
        index = self._built("patients", _patient_key, exclude_source_account)
        return list(index.get((normalise_name(f"{first_name} {last_name}"), str(date_of_birth)[:10]), []))

    def find_patients_by_email(self, email: str | None, exclude_source_account: str) -> list[str]:
        if not email:
            return []
        index = self._built("patients_by_email", _email_key, exclude_source_account)
        return list(index.get(email.strip().casefold(), []))

    def find_individual_appointment(
        self, starts_at: Any, practitioner_id: str | None, patient_id: str | None, exclude_source_account: str
    ) -> list[str]:
        if not (starts_at and practitioner_id and patient_id):
            return []
        index = self._built("individual_appointments", _appointment_key, exclude_source_account)
        return list(index.get((str(starts_at), str(practitioner_id), str(patient_id)), []))

    def find_same_name(self, entity: str, name: str | None, *, exclude_source_account: str) -> list[str]:
        """Reference records (templates, taxes, items, ...) with the same name, case and spacing aside."""
        if entity not in _BY_NAME or not name:
            return []
        index = self._built(entity, lambda r: normalise_name(r.get(_BY_NAME[entity])), exclude_source_account)
        return list(index.get(normalise_name(name), []))

    def created_by(self, batch_id: str, entity: str) -> list[str]:
        """Destination ids of ``entity`` this batch created: what the ledger recorded, and what it lost.

        Recorded: the batch's ``created`` items, and its writes with an id (a run killed or
        failed mid-page made those before their items). Lost: creates whose answers never
        came back, found in the account by their probes as a resumed run finds them. So a
        batch deleted without being resumed leaves nothing of itself behind.
        """
        recorded, matched = self.created_and_matched(batch_id, entity)
        return recorded + matched

    def created_and_matched(self, batch_id: str, entity: str) -> tuple[list[str], list[str]]:
        """:meth:`created_by` in two parts: what the ledger recorded, and what was found by matching.

        The second part is the records that the batch's creates whose answers were lost made,
        found by their details (a patient's names, date of birth and email; an appointment's
        start, patient and practitioner...), so a deletion can say which records it took on
        that evidence alone.
        """
        recorded = batch_creates(self.ledger, batch_id, entity)
        lost = self._found_unanswered(entity, " AND b.id = ?", [batch_id])  # no request if none was lost
        return recorded, sorted(lost - set(recorded), key=_id_order)

    def dependents_of_patients(self, patient_ids: Iterable[str]) -> dict[str, list[str]]:
        """Nothing: patients are archived, not deleted, so what hangs off them stays."""
        return {}

    def account_links_into(self, batch_id: str, created: Mapping[str, Sequence[str]]) -> list[KeptLink]:
        """Records in the account that use one deleting ``batch_id`` removes, read from the account.

        What :func:`links_into` (the module's, from the ledger) cannot see: records the
        clinic made or changed by hand since the batch began (an appointment booked with an
        appointment type the batch created, a note on one of its appointments, an invoice
        for one), and other batches' creates from before the ledger kept what each sent.
        Every list that can refer to a record going is read for what changed since the
        batch began (its own records included, so about as many requests as the batch has
        pages of such records). Each record found is put down to the batch whose items or
        writes have it, else to the clinic (``batch_id=None``). Invoice items are not
        counted: an invoice keeps what was sold on it when an item is deleted (seed 000).
        Patients are archived, not deleted, so nothing using them is counted either.
        """
        removing = {
            e: set(map(str, ids)) for e, ids in created.items() if ids and "delete" in resource(e).writes
        }
        if not removing:
            return []
        since = [Filter("updated_at", ">", self.ledger.batch(batch_id).created_at - _PROBE_SLACK)]
        using: dict[tuple[str, str], set[str]] = {}
        for stage in STAGES:
            fks = {fk: target for fk, target in stage.fks.items() if target in removing}
            if not fks or stage.entity == "invoice_items":
                continue
            own = set(map(str, created.get(stage.entity, ())))  # archived patients included: they go with it
            for route in self._routes(stage.entity):
                for page in self.client.pages(stage.entity, since, route=route):
                    for raw in page.records:
                        try:
                            record = parse_record(stage.entity, raw)
                        except ValueError:
                            log.warning("could not read %s %s to check it", stage.entity, raw.get("id"))
                            continue
                        if record.id in own:
                            continue
                        for fk, target in fks.items():
                            if getattr(record, fk, None) in removing[target]:
                                using.setdefault((stage.entity, fk), set()).add(record.id)
        links: list[KeptLink] = []
        for stage in STAGES:  # in the order the module's links_into gives them
            for fk in stage.fks:
                ids = using.get((stage.entity, fk))
                if not ids:
                    continue
                owners = self._creators(stage.entity, ids)
                by_batch = Counter(owners.get(dest_id) for dest_id in ids)  # None: the clinic's own
                links += [
                    KeptLink(stage.entity, fk, owner, count)
                    for owner, count in sorted(by_batch.items(), key=lambda kv: (kv[0] is None, kv[0] or ""))
                ]
        return links

    def _creators(self, entity: str, dest_ids: Iterable[str]) -> dict[str, str]:
        """Which standing batch into this account created each of these records."""
        where = " AND b.status != 'deleted' AND {t}.dest_id IN (SELECT value FROM json_each(?))"
        return dict(self._creates(entity, where, [json.dumps(sorted(dest_ids))]))

    def _routes(self, entity: str) -> tuple[str | None, ...]:
        """The lists that together hold every live record of ``entity`` (archived ones included)."""
        return (None, "archived") if "archived" in resource(entity).list_routes else (None,)

    def existing_ids(self, entity: str, ids: Iterable[str]) -> set[str]:
        """Which of these records the account holds: its lists read once (a request per 100 records)."""
        wanted = {str(i) for i in ids}
        if not wanted:
            return set()
        found: set[str] = set()
        for route in self._routes(entity):
            for page in self.client.pages(entity, route=route):
                found.update(str(r.get("id")) for r in page.records if str(r.get("id")) in wanted)
        return found

    # -- writes -----------------------------------------------------------------------------

    def insert(
        self, entity: str, rows: list[dict[str, Any]], *, batch_id: str, source_account: str
    ) -> list[str | WriteRefused]:
        """Create a page of records; return each one's new id, or why Cliniko refused it.

        Intents are committed before any request leaves, and ids as soon as they are
        known; the caller must not hold a ledger transaction open (the engine commits
        before calling). Raises the run's errors (a key revoked, Cliniko down beyond
        retries, a stop) after recording every id already known.
        """
        if entity not in _FIELDS:
            why = NOT_TRANSFERABLE.get(
                entity,
                f"Cliniko's API cannot create {entity_label(entity).lower()}; set them up in the destination account.",
            )
            return [WriteRefused(why) for _ in rows]
        writes = [_Write(str(r["source_id"]), r, self._body(entity, r)) for r in rows]
        log_ = _WriteLog(self.ledger, batch_id, entity)
        self._settle_recorded(entity, writes, log_)
        fresh = [w for w in writes if w.state == "new"]
        if fresh:
            log_.intend(fresh, {w.source_id: self._probe_of(entity, w) for w in fresh})
        try:
            self._send_all(entity, [w for w in writes if w.state == "intended"])
            ambiguous = [w for w in writes if w.unconfirmed]
            if ambiguous:  # the answer was lost: look before sending again
                self._look_up(entity, ambiguous)
                for w in ambiguous:
                    w.unconfirmed = False
                    if w.dest_id is None:
                        w.state = "intended"
                self._send_all(entity, [w for w in ambiguous if w.state == "intended"], retry=True)
        finally:
            log_.created([w for w in writes if w.state in ("created", "completed")], entity)
            log_.refused([w for w in writes if w.state == "refused"])
        self._follow_up_all(entity, [w for w in writes if w.state == "created"])
        log_.completed(
            [w for w in writes if w.state == "completed"], lambda w: self.stored_form(entity, w.row)
        )
        return [w.dest_id if w.dest_id is not None else WriteRefused(w.refused or "refused") for w in writes]

    def _settle_recorded(self, entity: str, writes: list[_Write], log_: _WriteLog) -> None:
        """Writes a crashed run recorded: reuse their ids, look up the ones never confirmed."""
        recorded = log_.recorded([w.source_id for w in writes])
        lost: list[_Write] = []
        for w in writes:
            state, dest_id, intended_at = recorded.get(w.source_id, (None, None, None))
            if state is None:
                continue
            w.intended_at = intended_at
            if dest_id is not None:
                w.dest_id, w.state = dest_id, ("completed" if state == "completed" else "created")
            elif state == "refused":
                w.state = "new"  # refused before: try once more, it may pass now
            else:
                w.state = "intended"
                lost.append(w)
        if lost:
            self._look_up(entity, lost)
            log_.created([w for w in lost if w.dest_id is not None], entity)

    def _probe_of(self, entity: str, w: _Write) -> dict[str, Any]:
        return {f: w.body.get(f) for f in _PROBE.get(entity, ("name",)) if w.body.get(f) is not None}

    def _look_up(self, entity: str, writes: list[_Write], *, count: bool = True) -> None:
        """Find records a lost answer created: made since the intent, equal on the probe fields.

        ``count``: add what is found to :attr:`recovered` (not when only looking).
        """
        since = min(datetime.fromisoformat(w.intended_at or _now()) for w in writes) - _PROBE_SLACK
        taken = self._ours(entity)
        created_since = [Filter("created_at", ">=", since.strftime("%Y-%m-%dT%H:%M:%SZ"))]
        candidates = [  # archived ones too: a patient may have been archived right after its create
            r
            for route in self._routes(entity)
            for r in self._records(entity, created_since, route=route)
            if str(r["id"]) not in taken
        ]
        for w in writes:
            probe = self._probe_of(entity, w)
            for record in candidates:
                if all(_same(record.get(k), v) for k, v in probe.items()):
                    w.dest_id, w.state = str(record["id"]), "created"
                    candidates.remove(record)
                    taken.add(w.dest_id)
                    if count:
                        self.recovered += 1
                        log.info("found %s %s created before an interruption", entity, w.dest_id)
                    break

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="cliniko-writes")
        return self._pool

    def _send_all(self, entity: str, writes: list[_Write], *, retry: bool = False) -> None:
        if not writes:
            return
        errors: list[BaseException] = []

        def send(w: _Write) -> None:
            if self.stop is not None and self.stop.is_set():
                return
            try:
                w.dest_id = self._create(entity, w)
                w.state = "created"
            except ValidationAPIError as exc:
                w.state, w.refused = "refused", _refusal(exc)
            except RetriableAPIError as exc:
                if exc.unconfirmed and not retry:
                    w.unconfirmed = True
                else:
                    errors.append(exc)
            except WriteRefused as exc:
                w.state, w.refused = "refused", str(exc)
            except BaseException as exc:  # recorded, then raised on the engine's thread
                errors.append(exc)
            if w.state == "created":
                try:
                    self._follow_up(entity, w)
                except BaseException as exc:  # the create stands; its follow-up is redone on resume
                    errors.append(exc)

        list(self._executor().map(send, writes))
        if errors:
            raise errors[0]
        self._raise_if_stopped()

    def _raise_if_stopped(self) -> None:
        if self.stop is not None and self.stop.is_set():
            from migrator.engine import RunStopped

            raise RunStopped("The run was stopped; run it again to resume.")

    def _client_for(self, entity: str, row: Mapping[str, Any]) -> ClinikoClient:
        if entity == "treatment_notes":
            author = self.note_authors.get(str(row.get("practitioner_id")))
            if author is not None:
                return author
        return self.client

    def _create(self, entity: str, w: _Write) -> str:
        if entity == "patient_attachments":
            return self._attach(w)
        path = resource(entity).path
        created = self._client_for(entity, w.row).post(path, w.body)
        return str(created["id"])

    def _attach(self, w: _Write) -> str:
        """Download the file from the source, upload it through the presigned form, create the record."""
        if self.source is None:
            raise WriteRefused("Attachments need the source's client to download their files.")
        data = w.row.get("data") or {}
        url = data.get("content_url") or f"/patient_attachments/{w.source_id}/content"
        content, content_type = self.source.download(url)
        patient = w.body["patient_id"]
        form = self.client.get(f"/patients/{patient}/attachment_presigned_post")
        filename = data.get("filename") or f"attachment-{w.source_id}"
        answer = self._uploads.post(
            form["url"],
            data=form.get("fields") or {},
            files={"file": (filename, content, content_type or "application/octet-stream")},
        )
        if answer.status_code >= 300:
            raise APIError(f"The file upload for attachment {w.source_id} failed ({answer.status_code}).")
        location = ET.fromstring(answer.content).findtext("Location")
        created = self.client.post(
            "/patient_attachments", {**w.body, "upload_url": location, "patient_id": patient}
        )
        return str(created["id"])

    def _follow_up_all(self, entity: str, writes: list[_Write]) -> None:
        """Follow-ups of creates recorded by an interrupted run (a fresh create does its own at once)."""
        list(self._executor().map(lambda w: self._follow_up(entity, w), writes))

    def _follow_up(self, entity: str, w: _Write) -> None:
        """What a create cannot say: a cancellation, an archived patient. Idempotent, so safe to repeat.

        Done by the worker right after the create, so the budget does not idle waiting for
        the page; a crash in between is covered, as the create is looked up (archived
        records included) and its follow-up done again on resume.
        """
        self._set_state(entity, str(w.dest_id), w.row.get("data") or {}, {})
        w.state = "completed"

    def _body(self, entity: str, row: Mapping[str, Any]) -> dict[str, Any]:
        data: Mapping[str, Any] = row.get("data") or {}
        body = {f: data[f] for f in _FIELDS.get(entity, ()) if data.get(f) not in (None, "")}
        for fk in _FKS.get(entity, ()):
            if row.get(fk) is not None:
                body[fk] = row[fk]
        if entity == "patients":
            body["reminder_type"] = "None"
            body["receives_confirmation_emails"] = False
            custom = self.custom_fields.translate(data.get("custom_fields"))
            if custom is not None:
                body["custom_fields"] = custom
        elif entity == "products" and "price_ex_tax" in body:
            body["price"] = body.pop("price_ex_tax")  # products take price, answer price_ex_tax
        elif entity == "treatment_notes":
            body["content"] = _with_provenance(data)
        return body

    def left_behind(self, entity: str, row: Mapping[str, Any]) -> list[str]:
        """What of a created or rewritten row's source record this account has no place for (custom answers)."""
        if entity != "patients":
            return []
        data: Mapping[str, Any] = row.get("data") or {}
        return self.custom_fields.left_behind(data.get("custom_fields"))

    # -- rewriting what changed at the source ---------------------------------------------------

    def stored_form(self, entity: str, row: Mapping[str, Any]) -> dict[str, Any]:
        """What a record receives from us: its request body and its cancelled or archived state.

        The engine compares it with what :meth:`stored_rows` says the record last received,
        so a record is rewritten only when something we send changed at the source.
        """
        form = self._body(entity, row)
        data: Mapping[str, Any] = row.get("data") or {}
        for key in _STATES.get(entity, ()):
            form[key] = data.get(key) or None
        return _canonical(form)

    def stored_rows(
        self, entity: str, ids: Iterable[str], *, source_account: str, batch_id: str | None = None
    ) -> dict[str, dict[str, Any] | None]:
        """What each of these records last received from a batch of ``source_account``.

        ``None`` for a record no batch of that account created here (linked to, never
        rewritten), and for one created before the ledger kept what it sent. A record
        ``batch_id`` itself rewrote gives what it held before: the batch, resumed after a
        kill between its rewrite and its items, then decides ``updated`` again, as it did
        (and :meth:`update` finds nothing left to send).
        """
        wanted = [str(i) for i in ids]
        out: dict[str, dict[str, Any] | None] = dict.fromkeys(wanted)
        if not wanted:
            return out
        with self.ledger.lock:
            rows = self.ledger.conn.execute(
                "SELECT w.dest_id, CASE WHEN w.rewritten_by = ? AND w.sent_before IS NOT NULL"
                " THEN w.sent_before ELSE w.sent END"
                " FROM writes w JOIN batches b ON b.id = w.batch_id"
                " WHERE b.destination = ? AND b.source_account = ? AND w.entity = ? AND w.state = 'completed'"
                " AND w.sent IS NOT NULL AND w.dest_id IN (SELECT value FROM json_each(?))",
                (batch_id, self.describe(), source_account, entity, json.dumps(wanted)),
            ).fetchall()
        for dest_id, sent in rows:
            out[str(dest_id)] = json.loads(sent)
        return out

    def update(
        self,
        entity: str,
        rows: Sequence[tuple[str, Mapping[str, Any]]],
        *,
        source_account: str,
        batch_id: str | None = None,
    ) -> list[WriteRefused | None]:
        """Rewrite records an earlier batch created from a fresh copy of their source.

        Only the fields that changed at the source since the record last received them are
        sent (a partial ``PUT``), so what the clinic has since changed in other fields stays;
        a cancellation or an archive at the source is applied with its own request. Returns,
        per row, ``None`` (rewritten) or why not: Cliniko refused it, it cannot update that
        type or undo a cancellation, or the record was deleted from the destination. Like
        :meth:`insert`, it must be called outside a ledger transaction, and raises the run's
        errors (a revoked key, Cliniko down beyond retries) after recording what went, with
        the rewriting ``batch_id`` and what each record held before it (see :meth:`stored_rows`).
        """
        before = self.stored_rows(entity, [dest_id for dest_id, _ in rows], source_account=source_account)
        errors: list[BaseException] = []

        def rewrite(pair: tuple[str, Mapping[str, Any]]) -> tuple[WriteRefused | None, dict[str, Any] | None]:
            dest_id, row = pair
            if self.stop is not None and self.stop.is_set():
                return None, None
            after = self.stored_form(entity, row)
            try:
                self._rewrite(entity, dest_id, row, before.get(dest_id) or {}, after)
            except WriteRefused as exc:
                return exc, None
            except ValidationAPIError as exc:
                return WriteRefused(_refusal(exc)), None
            except NotFoundError:
                return WriteRefused(
                    "It was deleted from the destination since, so it was not rewritten."
                ), None
            except BaseException as exc:  # recorded below, then raised on the engine's thread
                errors.append(exc)
                return WriteRefused(str(exc)), None
            return None, after

        outcomes = list(self._executor().map(rewrite, rows))
        sent = [(dest_id, form) for (dest_id, _), (_, form) in zip(rows, outcomes, strict=True) if form]
        if sent:
            with self.ledger.transaction():
                # Right-hand sides read the row as it was: a batch's second rewrite of a
                # record (after a resume) keeps what the record held before the first.
                self.ledger.conn.executemany(
                    "UPDATE writes SET sent = ?, rewritten_by = ?,"
                    " sent_before = CASE WHEN rewritten_by IS ? THEN sent_before ELSE sent END"
                    " WHERE entity = ? AND dest_id = ? AND state = 'completed'"
                    " AND batch_id IN (SELECT id FROM batches WHERE destination = ?)",
                    [
                        (json.dumps(form), batch_id, batch_id, entity, dest_id, self.describe())
                        for dest_id, form in sent
                    ],
                )
        if errors:
            raise errors[0]
        self._raise_if_stopped()
        return [refused for refused, _ in outcomes]

    def _rewrite(
        self,
        entity: str,
        dest_id: str,
        row: Mapping[str, Any],
        before: Mapping[str, Any],
        after: Mapping[str, Any],
    ) -> None:
        """The requests that bring one record from ``before`` to ``after`` (both :meth:`stored_form`)."""
        states = _STATES.get(entity, ())
        changes = {
            k: after.get(k) for k in {*before, *after} if k not in states and after.get(k) != before.get(k)
        }
        if entity == "products":
            changes.pop("stock_level", None)  # PUT cannot change it (CLINIKO_API.md §3.19)
        entry = resource(entity)
        path = f"{entry.path}/{dest_id}"
        if changes:
            if "update" not in entry.writes:
                raise WriteRefused(
                    f"Cliniko's API cannot update {entity.replace('_', ' ')}, so the destination keeps the "
                    "version an earlier batch brought."
                )
            _again(self._client_for(entity, row).put, path, changes)
        self._set_state(entity, dest_id, row.get("data") or {}, before)

    def _set_state(
        self, entity: str, dest_id: str, data: Mapping[str, Any], before: Mapping[str, Any]
    ) -> None:
        """Cancel, archive or unarchive a record whose state at the source (``data``) differs from ``before``.

        ``before`` is what the record last received (:meth:`stored_form`; empty for a fresh create).
        """
        states = _STATES.get(entity, ())
        path = f"{resource(entity).path}/{dest_id}"
        if "cancelled_at" in states and bool(data.get("cancelled_at")) != bool(before.get("cancelled_at")):
            if not data.get("cancelled_at"):
                raise WriteRefused(
                    "Cliniko's API cannot undo a cancellation, so it stays cancelled in the destination."
                )
            body = {
                "cancellation_reason": data.get("cancellation_reason") or 50,
                "cancellation_note": data.get("cancellation_note"),
            }
            try:
                _again(self.client.patch, f"{path}/cancel", body)
            except ValidationAPIError as exc:  # an individual appointment's attendee cannot be cancelled
                log.warning("could not cancel %s %s: %s", entity, dest_id, _refusal(exc))
        if "archived_at" in states and bool(data.get("archived_at")) != bool(before.get("archived_at")):
            _again(self.client.post, f"{path}/{'archive' if data.get('archived_at') else 'unarchive'}", {})

    def delete(self, entity: str, ids: Iterable[str]) -> int:
        """Delete records (archive patients); an id already gone counts as done."""
        entry = resource(entity)
        done = 0
        for dest_id in ids:
            try:
                if "delete" in entry.writes:
                    _again(self.client.delete, f"{entry.path}/{dest_id}")
                elif "archive" in entry.writes:
                    _again(self.client.post, f"{entry.path}/{dest_id}/archive", {})
                else:
                    log.warning("Cliniko cannot delete or archive %s; %s left in place", entity, dest_id)
                    continue
            except NotFoundError:
                pass
            done += 1
        return done


def _recorded_creates(
    ledger: Ledger, destination: str, entity: str, where: str = "", params: Sequence[Any] = ()
) -> set[tuple[str, str]]:
    """``(destination id, batch id)`` of the records of ``entity`` batches into ``destination`` created.

    From the batches' items, and from their writes: a run killed after a create's id was
    recorded but before its page's items still created that record. ``where`` (with its
    ``params``) narrows both; ``b`` is the batch and ``{t}`` the item's or write's table.
    """
    cond = "b.destination = ? AND {t}.entity = ? AND {t}.dest_id IS NOT NULL" + where
    sql = (
        "SELECT i.dest_id, i.batch_id FROM items i JOIN batches b ON b.id = i.batch_id "
        f"WHERE i.action = 'created' AND {cond.format(t='i')} "
        f"UNION SELECT w.dest_id, w.batch_id FROM writes w JOIN batches b ON b.id = w.batch_id "
        f"WHERE {cond.format(t='w')}"
    )
    with ledger.lock:
        rows = ledger.conn.execute(sql, [destination, entity, *params] * 2)
        return {(str(dest_id), str(batch_id)) for dest_id, batch_id in rows}


def _id_order(dest_id: str) -> tuple[int, str]:
    return (int(dest_id), "") if dest_id.isdigit() else (0, dest_id)


def batch_creates(ledger: Ledger, batch_id: str, entity: str) -> list[str]:
    """Destination ids of ``entity`` that ``batch_id`` is recorded to have created, oldest first (no key needed).

    Its ``created`` items and its writes with an id (:func:`_recorded_creates`). Creates
    whose answers were lost are not in the ledger; with the account's key,
    :meth:`ClinikoDestination.created_by` finds those too.
    """
    destination = ledger.batch(batch_id).destination
    found = _recorded_creates(ledger, destination, entity, " AND b.id = ?", [batch_id])
    return sorted({dest_id for dest_id, _ in found}, key=_id_order)


def unanswered_creates(ledger: Ledger, batch_id: str) -> dict[str, int]:
    """How many of ``batch_id``'s creates, by entity, had their answers lost (a run killed mid-request; no key needed).

    Their records, if Cliniko made them, have no id in the ledger: with the account's key,
    :meth:`ClinikoDestination.created_and_matched` finds them by their details.
    """
    with ledger.lock:
        rows = ledger.conn.execute(
            "SELECT entity, count(*) FROM writes WHERE batch_id = ? AND state = 'intended' AND dest_id IS NULL"
            " GROUP BY entity",
            (batch_id,),
        ).fetchall()
    return {str(entity): int(n) for entity, n in rows}


def links_into(ledger: Ledger, batch_id: str, created: Mapping[str, Sequence[str]]) -> list[KeptLink]:
    """Records other batches created in the batch's Cliniko account that use one deleting it removes.

    The counterpart of :meth:`LocalStore.links_into <migrator.destinations.local.LocalStore.links_into>`,
    read from what each create sent (the ledger's ``writes``), so it needs no key: a later
    batch's appointments using an appointment type ``batch_id`` created, its notes using a
    template, its items using a tax. ``created`` is the batch's records by entity. Patients
    are archived, not deleted, so what uses them stays whole; records the clinic made by hand
    in the account are not seen, nor creates from before the ledger kept what it sent: with
    the account's key, :meth:`ClinikoDestination.account_links_into` sees those too.
    """
    destination = ledger.batch(batch_id).destination
    removing = {
        entity: json.dumps([str(i) for i in ids])
        for entity, ids in created.items()
        if ids and "delete" in resource(entity).writes
    }
    links: list[KeptLink] = []
    for stage in STAGES:
        for fk, target in stage.fks.items():
            if target not in removing or fk not in _FKS.get(stage.entity, ()):
                continue
            with ledger.lock:
                rows = ledger.conn.execute(
                    "SELECT w.batch_id, count(*) FROM writes w JOIN batches b ON b.id = w.batch_id"
                    " WHERE b.destination = ? AND b.status != 'deleted' AND w.batch_id != ? AND w.entity = ?"
                    " AND w.state = 'completed' AND w.dest_id IS NOT NULL"
                    " AND CAST(json_extract(w.sent, ?) AS TEXT) IN (SELECT value FROM json_each(?))"
                    " GROUP BY w.batch_id ORDER BY w.batch_id",
                    (destination, batch_id, stage.entity, f"$.{fk}", removing[target]),
                ).fetchall()
            links += [KeptLink(stage.entity, fk, str(other), count) for other, count in rows]
    return links


# -- the ledger's record of writes ------------------------------------------------------------


class _WriteLog:
    """The ``writes`` and ``patient_preferences`` tables for one batch and entity."""

    def __init__(self, ledger: Ledger, batch_id: str, entity: str) -> None:
        self.ledger, self.batch_id, self.entity = ledger, batch_id, entity

    def recorded(self, source_ids: list[str]) -> dict[str, tuple[str, str | None, str]]:
        marks = ",".join("?" * len(source_ids))
        with self.ledger.lock:
            rows = self.ledger.conn.execute(
                f"SELECT source_id, state, dest_id, intended_at FROM writes WHERE batch_id = ? AND entity = ? "
                f"AND source_id IN ({marks})",
                (self.batch_id, self.entity, *source_ids),
            ).fetchall()
        return {r[0]: (r[1], r[2], r[3]) for r in rows}

    def intend(self, writes: list[_Write], probes: Mapping[str, Mapping[str, Any]]) -> None:
        at = _now()
        with self.ledger.transaction():
            self.ledger.conn.executemany(
                "INSERT OR REPLACE INTO writes (batch_id, entity, source_id, state, intended_at, probe) "
                "VALUES (?, ?, ?, 'intended', ?, ?)",
                [
                    (
                        self.batch_id,
                        self.entity,
                        w.source_id,
                        at,
                        json.dumps(probes[w.source_id], default=str),
                    )
                    for w in writes
                ],
            )
        for w in writes:
            w.state, w.intended_at = "intended", at

    def created(self, writes: list[_Write], entity: str) -> None:
        if not writes:
            return
        with self.ledger.transaction():
            self.ledger.conn.executemany(
                "UPDATE writes SET state = 'created', dest_id = ? WHERE batch_id = ? AND entity = ? "
                "AND source_id = ? AND state != 'completed'",
                [(w.dest_id, self.batch_id, self.entity, w.source_id) for w in writes],
            )
            if entity == "patients":
                self.ledger.conn.executemany(
                    "INSERT OR IGNORE INTO patient_preferences (batch_id, dest_id, source_id, reminder_type, "
                    "receives_confirmation_emails) VALUES (?, ?, ?, ?, ?)",
                    [
                        (
                            self.batch_id,
                            w.dest_id,
                            w.source_id,
                            (w.row.get("data") or {}).get("reminder_type"),
                            _flag((w.row.get("data") or {}).get("receives_confirmation_emails")),
                        )
                        for w in writes
                    ],
                )

    def refused(self, writes: list[_Write]) -> None:
        if writes:
            with self.ledger.transaction():
                self.ledger.conn.executemany(
                    "UPDATE writes SET state = 'refused' WHERE batch_id = ? AND entity = ? AND source_id = ?",
                    [(self.batch_id, self.entity, w.source_id) for w in writes],
                )

    def completed(self, writes: list[_Write], sent: Callable[[_Write], dict[str, Any]]) -> None:
        """Mark writes done, with what each record received (``sent``: its stored form)."""
        if writes:
            at = _now()
            with self.ledger.transaction():
                self.ledger.conn.executemany(
                    "UPDATE writes SET state = 'completed', completed_at = ?, sent = ? WHERE batch_id = ? "
                    "AND entity = ? AND source_id = ?",
                    [(at, json.dumps(sent(w)), self.batch_id, self.entity, w.source_id) for w in writes],
                )


def _flag(value: Any) -> int | None:
    return None if value is None else int(bool(value))


# -- go live ----------------------------------------------------------------------------------


@dataclass
class GoLiveResult:
    """What :func:`go_live` restored."""

    batch_id: str
    restored: int = 0
    already: int = 0
    gone: list[str] = field(default_factory=list)


def go_live(
    ledger: Ledger, destination: ClinikoDestination, batch_id: str, *, actor: str = "cli"
) -> GoLiveResult:
    """Restore the reminder and confirmation preferences of a batch's patients (a separate, final step).

    Until then every patient the batch created has reminders and confirmations off, so
    nothing the transfer wrote messages anyone. Resumable: patients already restored are
    passed over. Refused for a deleted batch (its patients are archived, and stay quiet).
    """
    batch = ledger.batch(batch_id)
    if batch.destination != destination.describe():
        raise ConfigError(f"Batch {batch_id} did not write into this Cliniko account.")
    if batch.status in ("deleting", "deleted"):
        raise ConfigError(
            f"Batch {batch_id} has been deleted (or is being deleted), its patients archived: going live would "
            "turn their reminders back on, so it is refused."
        )
    with ledger.lock:
        rows = ledger.conn.execute(
            "SELECT dest_id, reminder_type, receives_confirmation_emails, restored_at FROM patient_preferences "
            "WHERE batch_id = ? ORDER BY rowid",
            (batch_id,),
        ).fetchall()
    result = GoLiveResult(batch_id)
    for dest_id, reminder_type, confirmations, restored_at in rows:
        if restored_at:
            result.already += 1
            continue
        body: dict[str, Any] = {}
        if reminder_type:
            body["reminder_type"] = reminder_type
        if confirmations is not None:
            body["receives_confirmation_emails"] = bool(confirmations)
        try:
            if body:
                _again(destination.client.put, f"/patients/{dest_id}", body)
        except NotFoundError:
            result.gone.append(str(dest_id))
            continue
        with ledger.transaction():
            ledger.conn.execute(
                "UPDATE patient_preferences SET restored_at = ? WHERE batch_id = ? AND dest_id = ?",
                (_now(), batch_id, dest_id),
            )
        result.restored += 1
    ledger.audit(
        "go_live",
        actor=actor,
        batch_id=batch_id,
        detail={"restored": result.restored, "already": result.already, "gone": len(result.gone)},
    )
    return result


# -- pre-flight -------------------------------------------------------------------------------


@dataclass
class Preflight:
    """The checks before a Cliniko-to-Cliniko run: refusals stop it, warnings are shown."""

    source: Identity
    destination: Identity
    refusals: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.refusals

    def raise_for_refusal(self) -> None:
        if self.refusals:
            raise ConfigError(" ".join(self.refusals))

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "refusals": self.refusals, "warnings": self.warnings, "counts": self.counts}

    def holds(self) -> str:
        """What the destination holds, in words: ``6 practitioners, 3 businesses, 389 patients (410 archived), ...``."""
        archived = self.counts.get("archived_patients", 0)
        parts = []
        for entity, n in self.counts.items():
            if entity == "archived_patients":
                continue
            extra = f" ({archived:,} archived)" if entity == "patients" and archived else ""
            parts.append(f"{n:,} {entity.replace('_', ' ')}{extra}")
        return ", ".join(parts)


def preflight(source: ClinikoClient, destination: ClinikoDestination) -> Preflight:
    """Seed 001's checks, with the reason for each refusal.

    Refused: a destination key of the source account itself (nothing else is checked then);
    a source key whose user is not an administrator; a destination key whose user
    is not an administrator *and* an active practitioner; a destination without
    practitioners or businesses (mapping needs them). Warned: the destination already
    holds patients no earlier batch from this source brought (equal ones are linked, not
    duplicated), with the counts; the source has patient custom fields (or choices of
    them) the destination has no match for.
    """
    src = source.identity()
    dst = destination.client.identity()
    check = Preflight(src, dst)
    if source.account_id() == destination.account_id:
        check.refusals.append(_same_account(destination.account_name or destination.account_id))
        return check  # nothing else to check: the run would write into the account it reads
    if not src.is_admin:
        check.refusals.append(
            f"The source key belongs to {src.user}, who is not an administrator; Cliniko only gives an "
            "administrator's key the rights a transfer needs."
        )
    if not (dst.is_admin and dst.is_practitioner):
        missing = " and ".join(
            x
            for x, ok in (("an administrator", dst.is_admin), ("an active practitioner", dst.is_practitioner))
            if not ok
        )
        check.refusals.append(
            f"The destination key belongs to {dst.user}, who is not {missing}; a transfer needs an administrator "
            "who is also a practitioner, since treatment notes are written as the key's practitioner."
        )
    for entity in ("practitioners", "businesses", "patients", "appointment_types"):
        check.counts[entity] = destination.client.count(entity)
    # Archived patients are matched as well (and a deleted batch leaves its patients archived).
    check.counts["archived_patients"] = destination.client.count("patients", route="archived")
    for entity, what in (("practitioners", "practitioners"), ("businesses", "business locations")):
        if check.counts[entity] == 0:
            check.refusals.append(
                f"The destination account has no {what} yet; set them up first in Cliniko's settings so the "
                "mapping has something to map to."
            )
    if destination.custom_fields.unmatched:
        check.warnings.append(
            "The destination has no patient custom field matching "
            + "; ".join(destination.custom_fields.unmatched)
            + ", so patients' answers there stay in the source; add them in the destination's settings "
            "(same section, name and type) before the run, or after it and run in full again, to bring them across."
        )
    from migrator.workflow import source_account_of  # the workflow builds on this module

    # Patients earlier batches from this source brought are found already present, not matched again.
    others = (
        destination.foreign_count("patients", source_account=source_account_of(src, destination.ledger))
        if check.counts["patients"] or check.counts["archived_patients"]
        else 0
    )
    if others:
        archived = " (archived ones included)" if check.counts["archived_patients"] else ""
        check.warnings.append(
            f"The destination already holds {others:,} patient{'s' if others > 1 else ''}{archived} that no batch "
            f"from {src.account or src.user} brought: a patient with the same name and date of birth is linked "
            "instead of duplicated, and anyone else is created."
        )
    return check


# -- helpers ----------------------------------------------------------------------------------


def _same_account(name: str) -> str:
    return (
        f"The destination key belongs to the source account itself ({name}): a transfer copies into another "
        "Cliniko account and never writes into the one it reads, so give a key of the destination account."
    )


def _listed_id(raw: Mapping[str, Any]) -> str:
    """A listed record's id (``/patients/deleted`` gives only a self link); ``""`` if it has none."""
    if raw.get("id") is not None:
        return str(raw["id"])
    links = raw.get("links")
    try:
        return id_from_url(links["self"]) if isinstance(links, dict) else ""
    except (KeyError, TypeError, ValueError):
        return ""


def _patient_key(record: Mapping[str, Any]) -> tuple[str, str] | None:
    born = record.get("date_of_birth")
    if not (record.get("first_name") and record.get("last_name") and born):
        return None
    return normalise_name(f"{record['first_name']} {record['last_name']}"), str(born)[:10]


def _email_key(record: Mapping[str, Any]) -> str | None:
    email = record.get("email")
    return email.strip().casefold() if isinstance(email, str) and email.strip() else None


def _appointment_key(record: Mapping[str, Any]) -> tuple[str, str, str] | None:
    if not (record.get("starts_at") and record.get("practitioner_id") and record.get("patient_id")):
        return None
    return str(record["starts_at"]), str(record["practitioner_id"]), str(record["patient_id"])


def _again(call: Callable[..., Any], *args: Any, tries: int = 8) -> Any:
    """Send an idempotent write (a cancel, an archive, a PUT, a DELETE) again when its answer was lost.

    A DELETE whose first answer was lost answers 404 the second time: the caller counts that as done.
    """
    for attempt in range(1, tries + 1):
        try:
            return call(*args)
        except RetriableAPIError:
            if attempt == tries:
                raise
    return None


def _canonical(form: Mapping[str, Any]) -> dict[str, Any]:
    """``form`` as it reads back from the ledger's JSON, so a fresh form and a stored one compare equal."""
    loaded: dict[str, Any] = json.loads(json.dumps(form, default=str, sort_keys=True))
    return loaded


def _same(found: Any, sent: Any) -> bool:
    if found is None or sent is None:
        return found is sent
    return str(found).strip() == str(sent).strip()


def _refusal(exc: ValidationAPIError) -> str:
    return f"Cliniko refused it: {str(exc).rstrip('.')}."


def _with_provenance(data: Mapping[str, Any]) -> dict[str, Any]:
    """The note's content with a first section naming its original author and date."""
    content = data.get("content")
    if isinstance(content, str):
        try:
            content = json.loads(content)
        except ValueError:
            content = {"sections": [{"name": "Note", "questions": [{"name": "Note", "type": "paragraph",
                                                                   "answer": content}]}]}  # fmt: skip
    sections = list((content or {}).get("sections") or [])
    written = str(data.get("created_at") or "")[:16].replace("T", " ")
    who = data.get("author_name") or "an unknown practitioner"
    origin = {
        "name": "Transferred note",
        "questions": [
            {
                "name": "Originally written",
                "type": "text",
                "answer": f"By {who} on {written} UTC, in the source Cliniko account.",
            }
        ],
    }
    return {**(content or {}), "sections": [origin, *sections]}
