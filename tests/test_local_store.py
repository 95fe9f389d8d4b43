"""The local clinic store: schema, inserts, matching, balances, reference frames, dependents, deletion."""

from __future__ import annotations

import json
import shutil
import sqlite3
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from migrator.cliniko.models import parse_record
from migrator.destinations import DELETE_ORDER, INSERT_ORDER, Destination, LocalStore, row_from_record
from migrator.destinations._schema import TABLES
from migrator.destinations.local import outstanding_amount
from migrator.errors import ConfigError
from migrator.ledger import Item, Ledger
from migrator.sandbox.data import build_accounts
from migrator.workflow import open_local_store, unmade_if_refused

ENTITIES = {
    "patients",
    "practitioners",
    "businesses",
    "appointment_types",
    "individual_appointments",
    "group_appointments",
    "attendees",
    "unavailable_blocks",
    "treatment_notes",
    "treatment_note_templates",
    "patient_attachments",
    "medical_alerts",
    "contacts",
    "products",
    "billable_items",
    "concession_types",
    "taxes",
    "invoices",
    "invoice_items",
}
ACCOUNT = "40117"


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    return Ledger(tmp_path / "ws")


@pytest.fixture
def store(ledger: Ledger, tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "ws" / "clinic.db", ledger)


def _new_batch(ledger: Ledger, store: LocalStore, account: str = ACCOUNT) -> str:
    return ledger.create_batch(source_account=account, destination=store.describe(), plan={}).id


def _insert(
    store: LocalStore, batch_id: str, entity: str, *rows: dict[str, Any], account: str = ACCOUNT
) -> list[str]:
    """Insert ``rows`` as the engine does: with their created items, in one transaction."""
    with store.ledger.transaction():
        ids = store.insert(entity, list(rows), batch_id=batch_id, source_account=account)
        store.ledger.record_items(
            batch_id,
            [Item(entity, str(row["source_id"]), id_, "created") for row, id_ in zip(rows, ids, strict=True)],
        )
    return ids


def _clinic(store: LocalStore, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    return store.ledger.conn.execute(sql, params).fetchall()


# --- schema ----------------------------------------------------------------------------------


def test_every_entity_has_a_table_with_the_standard_columns_and_a_unique_source(store: LocalStore) -> None:
    tables = {r[0] for r in _clinic(store, "SELECT name FROM clinic.sqlite_master WHERE type = 'table'")}
    assert tables - {"sqlite_sequence", "migrations", "written_by"} == ENTITIES
    for entity in ENTITIES:
        columns = {r[1]: r for r in _clinic(store, f"PRAGMA clinic.table_info({entity})")}
        assert columns["id"][2] == "INTEGER" and columns["id"][5] == 1  # the primary key
        for name in ("source_id", "source_account", "batch_id", "data"):
            assert columns[name][2] == "TEXT", (entity, name)
        unique = [
            [c[2] for c in _clinic(store, f"PRAGMA clinic.index_info('{ix[1]}')")]
            for ix in _clinic(store, f"PRAGMA clinic.index_list({entity})")
            if ix[2] == 1
        ]
        assert ["source_id", "source_account"] in unique, entity
        indexed = {
            c[2]
            for ix in _clinic(store, f"PRAGMA clinic.index_list({entity})")
            for c in _clinic(store, f"PRAGMA clinic.index_info('{ix[1]}')")
        }
        assert "batch_id" in indexed, entity


def test_foreign_keys_point_at_destination_tables(store: LocalStore) -> None:
    def fks(entity: str) -> dict[str, tuple[str, str]]:
        return {r[3]: (r[2], r[6]) for r in _clinic(store, f"PRAGMA clinic.foreign_key_list({entity})")}

    assert fks("attendees") == {
        "booking_id": ("group_appointments", "NO ACTION"),
        "patient_id": ("patients", "NO ACTION"),
    }
    assert fks("treatment_notes") == {
        "patient_id": ("patients", "NO ACTION"),
        "practitioner_id": ("practitioners", "SET NULL"),
        "treatment_note_template_id": ("treatment_note_templates", "SET NULL"),
        "booking_id": ("individual_appointments", "SET NULL"),
    }
    assert fks("patients") == {
        "concession_type_id": ("concession_types", "SET NULL"),
        "referring_doctor_id": ("contacts", "SET NULL"),
    }
    assert fks("individual_appointments") == {
        "practitioner_id": ("practitioners", "SET NULL"),
        "business_id": ("businesses", "SET NULL"),
        "patient_id": ("patients", "NO ACTION"),
        "appointment_type_id": ("appointment_types", "SET NULL"),
    }
    assert fks("invoice_items") == {
        "invoice_id": ("invoices", "NO ACTION"),
        "billable_item_id": ("billable_items", "SET NULL"),
        "product_id": ("products", "SET NULL"),
    }
    assert fks("billable_items") == {"tax_id": ("taxes", "SET NULL")}
    assert fks("products") == {"tax_id": ("taxes", "SET NULL")}
    assert fks("invoices") == {
        "patient_id": ("patients", "NO ACTION"),
        "practitioner_id": ("practitioners", "SET NULL"),
        "business_id": ("businesses", "SET NULL"),
        "appointment_id": ("individual_appointments", "SET NULL"),
    }
    assert set(fks("appointment_types")) == {"billable_item_id", "product_id", "treatment_note_template_id"}
    # Inserting in INSERT_ORDER never meets a table before its parents; DELETE_ORDER is its reverse.
    for entity in ENTITIES:
        for parent, _ in fks(entity).values():
            assert INSERT_ORDER.index(parent) < INSERT_ORDER.index(entity), (entity, parent)
    assert list(DELETE_ORDER) == list(reversed(INSERT_ORDER))
    assert set(INSERT_ORDER) == ENTITIES


def test_appointments_are_flagged_imported_and_silent_and_key_columns_exist(store: LocalStore) -> None:
    for entity in ("individual_appointments", "group_appointments", "attendees", "unavailable_blocks"):
        columns = {r[1]: r for r in _clinic(store, f"PRAGMA clinic.table_info({entity})")}
        for flag in ("imported", "notifications_suppressed"):
            assert (columns[flag][2], columns[flag][3], columns[flag][4]) == ("INTEGER", 1, "1"), (
                entity,
                flag,
            )
    patients = {r[1] for r in _clinic(store, "PRAGMA clinic.table_info(patients)")}
    assert {"first_name", "last_name", "date_of_birth", "archived_at", "email"} <= patients
    practitioners = {r[1]: r for r in _clinic(store, "PRAGMA clinic.table_info(practitioners)")}
    assert practitioners["active"][3] == 1
    invoices = {r[1] for r in _clinic(store, "PRAGMA clinic.table_info(invoices)")}
    assert {"number", "issue_date", "status", "status_description", "total_amount", "outstanding"} <= invoices


def test_store_migrations_live_in_the_store_and_reopening_is_a_no_op(
    store: LocalStore, tmp_path: Path
) -> None:
    path = tmp_path / "ws" / "clinic.db"
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT migration_set, name FROM migrations").fetchall() == [
            ("clinic", "001_clinic_tables"),
            ("clinic", "002_written_by"),
        ]
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    assert _clinic(store, "PRAGMA clinic.journal_mode") == [("delete",)]
    ledger = Ledger(tmp_path / "other")
    again = LocalStore(path, ledger)
    assert again.count("patients") == 0
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM migrations").fetchone() == (2,)


def test_attach_conflicts_and_targets(ledger: Ledger, store: LocalStore, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file of its own"):
        LocalStore(ledger.path, ledger)
    with pytest.raises(ConfigError, match="already writes to the clinic store"):
        LocalStore(tmp_path / "another.db", ledger)
    assert LocalStore(store.path, ledger).describe() == f"sqlite:{(tmp_path / 'ws' / 'clinic.db').resolve()}"
    assert isinstance(store, Destination)

    assert LocalStore.parse_target("sqlite:workspace/clinic.db") == Path("workspace/clinic.db")
    assert LocalStore.parse_target(" sqlite:/abs/c.db ") == Path("/abs/c.db")
    for bad in ("sqlite:", "postgres://x", "clinic.db"):
        with pytest.raises(ConfigError, match="sqlite:PATH"):
            LocalStore.parse_target(bad)
    key = "MS0123456789abcdef0123456789abcdef-au1"  # a key pasted in the wrong box is not repeated
    with pytest.raises(ConfigError) as caught:
        LocalStore.parse_target(key)
    assert key not in str(caught.value) and "0123456789abcdef" not in str(caught.value)


def test_a_store_stays_its_ledgers_after_its_batches_records_are_deleted(
    ledger: Ledger, store: LocalStore, tmp_path: Path
) -> None:
    """Another workspace is refused a store once written, even emptied: its own ledger still knows it."""
    batch = _new_batch(ledger, store)
    store.setup_reference("practitioners", [{"first_name": "Kim", "last_name": "Ng"}])  # the clinic's own
    ids = _insert(store, batch, "patients", {"source_id": "1", "first_name": "Ann", "last_name": "Lee"})
    assert store.delete("patients", ids) == 1 and store.count("patients") == 0
    store.close()
    other = Ledger(tmp_path / "other")
    with pytest.raises(ConfigError) as refused:
        LocalStore(store.path, other)
    assert str(refused.value) == (
        f"The clinic store at {store.path} was written by batch {batch}, which the ledger at {other.path} does "
        "not know: it belongs to another workspace. Use that workspace (--workspace; workspace= in a notebook), "
        "or another store."
    )
    again = LocalStore(store.path, ledger)  # its own ledger carries on
    later = _new_batch(ledger, again)
    assert _insert(again, later, "patients", {"source_id": "1", "first_name": "Ann", "last_name": "Lee"})


def test_a_store_put_back_from_before_a_deletion_is_refused_in_one_sentence(
    ledger: Ledger, store: LocalStore, tmp_path: Path
) -> None:
    """Its records of the deleted batch would trip the next run, and the ledger would call them deleted."""
    from migrator.batches import delete_batch

    batch = _new_batch(ledger, store)
    _insert(store, batch, "patients", {"source_id": "1", "first_name": "Ann", "last_name": "Lee"})
    ledger.set_status(batch, "completed")
    store.close()
    backup = tmp_path / "backup.db"
    shutil.copy(store.path, backup)
    store = LocalStore(store.path, ledger)
    delete_batch(ledger, store, batch)
    store.close()
    assert ledger.batch(batch).status == "deleted"
    LocalStore(store.path, ledger).close()  # as it was after the deletion: its own

    shutil.copy(backup, store.path)
    with pytest.raises(ConfigError) as refused:
        LocalStore(store.path, ledger)
    assert str(refused.value) == (
        f"The clinic store at {store.path} still holds records of batch {batch}, which the ledger at "
        f"{ledger.path} says was deleted: a copy of the store from before that deletion (a backup put back?). "
        "The ledger cannot tell what in it is still wanted; use the store as it was after the deletion, or "
        "another store."
    )
    assert "clinic" not in [
        row[1] for row in ledger.conn.execute("PRAGMA database_list")
    ]  # not left attached
    assert ledger.batch(batch).destination == store.describe()


def test_a_store_copied_later_than_its_ledger_is_refused_before_a_run_trips_over_it(
    ledger: Ledger, store: LocalStore, tmp_path: Path
) -> None:
    """QA: the ledger copied while a batch had created some records, the store after it created more."""
    batch = _new_batch(ledger, store)
    _insert(store, batch, "taxes", {"source_id": "1", "name": "GST"})
    ledger.set_status(batch, "stopped")
    store.close()
    ledger.close()
    earlier = tmp_path / "earlier-ledger.db"
    shutil.copy(ledger.path, earlier)
    ledger = Ledger(ledger.workspace)
    store = LocalStore(store.path, ledger)
    _insert(store, batch, "taxes", {"source_id": "2", "name": "VAT"})
    _insert(store, batch, "patients", {"source_id": "7", "first_name": "Ann", "last_name": "Lee"})
    ledger.set_status(batch, "stopped")
    store.close()
    ledger.close()
    LocalStore(store.path, Ledger(ledger.workspace)).close()  # with its own ledger: as it should be

    shutil.copy(earlier, ledger.path)
    behind = Ledger(ledger.workspace)
    with pytest.raises(ConfigError) as refused:
        LocalStore(store.path, behind)
    assert str(refused.value).startswith(
        f"The clinic store at {store.path} holds records batch {batch} created that the ledger at {behind.path} "
        "does not record: the store was copied later than the ledger"
    )
    with behind.transaction():  # the ledger as it was after all three: the store is its own again
        behind.record_items(
            batch, [Item("taxes", "2", "2", "created"), Item("patients", "7", "1", "created")]
        )
    LocalStore(store.path, behind).close()


def test_a_store_from_before_written_by_learns_its_batches_from_its_records(
    ledger: Ledger, store: LocalStore, tmp_path: Path
) -> None:
    batch = _new_batch(ledger, store)
    _insert(store, batch, "patients", {"source_id": "1", "first_name": "Ann", "last_name": "Lee"})
    store.close()
    with sqlite3.connect(store.path) as conn:  # as migration 001 left a store
        conn.execute("DROP TABLE written_by")
        conn.execute("DELETE FROM migrations WHERE name = '002_written_by'")
    with pytest.raises(ConfigError, match=f"was written by batch {batch}, which the ledger"):
        LocalStore(store.path, Ledger(tmp_path / "other"))
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("SELECT batch_id FROM written_by").fetchall() == [(batch,)]


# --- inserts -------------------------------------------------------------------------------


def test_insert_returns_ids_in_order_and_stores_columns_and_data(ledger: Ledger, store: LocalStore) -> None:
    batch = _new_batch(ledger, store)
    hand = store.setup_reference("practitioners", [{"first_name": "Kim", "last_name": "Ng"}])
    ids = _insert(
        store,
        batch,
        "practitioners",
        {"source_id": "11", "first_name": "Ann", "last_name": "Lee", "active": True, "data": {"id": 11}},
        {"source_id": 12, "first_name": "Bo", "last_name": "Yu", "active": False, "data": {"id": 12}},
    )
    assert hand == ["1"] and ids == ["2", "3"]
    assert _clinic(
        store,
        "SELECT id, source_id, source_account, batch_id, first_name, active, data FROM clinic.practitioners",
    ) == [
        (1, None, None, None, "Kim", 1, "{}"),
        (2, "11", ACCOUNT, batch, "Ann", 1, '{"id":11}'),
        (3, "12", ACCOUNT, batch, "Bo", 0, '{"id":12}'),
    ]
    appt = _insert(
        store,
        batch,
        "appointment_types",
        {
            "source_id": "7",
            "name": "Initial",
            "duration_in_minutes": 45,
            "archived_at": "2024-05-01T09:00:00+10:00",
        },
    )
    assert _clinic(store, "SELECT duration_in_minutes, archived_at FROM clinic.appointment_types") == [
        (45, "2024-04-30T23:00:00Z")
    ]
    tax = _insert(store, batch, "taxes", {"source_id": "1", "name": "GST", "rate": Decimal("10.0")})
    _insert(store, batch, "billable_items", {"source_id": "3", "price": "110.00", "tax_id": tax[0]})
    assert _clinic(store, "SELECT price, tax_id FROM clinic.billable_items") == [("110.00", int(tax[0]))]
    assert appt == ["1"]
    assert store.dest_id("practitioners", "12") == "3"
    assert store.dest_id("practitioners", "12", source_account="other") is None
    assert store.dest_id("practitioners", "99") is None
    assert store.count("practitioners") == 3 and store.count("practitioners", batch) == 2


def test_ids_are_never_reused_after_a_delete(ledger: Ledger, store: LocalStore) -> None:
    batch = _new_batch(ledger, store)
    ids = _insert(store, batch, "contacts", *({"source_id": str(n)} for n in range(3)))
    assert store.delete("contacts", ids[1:]) == 2
    assert _insert(store, batch, "contacts", {"source_id": "9"}) == ["4"]
    # More rows than one statement takes (500): ids stay in the rows' order, and stay unused once deleted.
    many = _insert(store, batch, "contacts", *({"source_id": f"m{n}"} for n in range(1201)))
    assert many == [str(n) for n in range(5, 1206)]
    assert _clinic(store, "SELECT id, source_id FROM clinic.contacts WHERE id IN (5, 505, 1205)") == [
        (5, "m0"),
        (505, "m500"),
        (1205, "m1200"),
    ]
    assert store.delete("contacts", many[-1:]) == 1
    assert _insert(store, batch, "contacts", {"source_id": "10"}) == ["1206"]


def test_foreign_key_violations_and_missing_owners_raise_and_write_nothing(
    ledger: Ledger, store: LocalStore
) -> None:
    batch = _new_batch(ledger, store)
    with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
        _insert(store, batch, "medical_alerts", {"source_id": "1", "name": "Latex", "patient_id": "999"})
    with pytest.raises(sqlite3.IntegrityError, match="NOT NULL"):
        _insert(store, batch, "medical_alerts", {"source_id": "1", "name": "Latex"})
    (patient,) = _insert(store, batch, "patients", {"source_id": "5", "first_name": "A", "last_name": "B"})
    with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
        _insert(
            store,
            batch,
            "medical_alerts",
            {"source_id": "1", "name": "Latex", "patient_id": patient},
            {"source_id": "2", "name": "Nuts", "patient_id": "12345"},
        )
    assert store.count("medical_alerts") == 0


def test_insert_refuses_bad_rows(ledger: Ledger, store: LocalStore) -> None:
    batch = _new_batch(ledger, store)
    with pytest.raises(ValueError, match="no columns"):
        _insert(store, batch, "patients", {"source_id": "1", "favourite_colour": "teal"})
    with pytest.raises(ValueError, match="no columns"):
        _insert(store, batch, "invoices", {"source_id": "1", "outstanding": "0"})
    with pytest.raises(ValueError, match="needs its source_id"):
        _insert(store, batch, "patients", {"first_name": "A"})
    with pytest.raises(ValueError, match="have no source_id"):
        store.setup_reference("businesses", [{"source_id": "1", "business_name": "X"}])
    with pytest.raises(ValueError, match="not a float"):
        _insert(store, batch, "billable_items", {"source_id": "1", "price": 9.99})
    with pytest.raises(ValueError, match="no table"):
        _insert(store, batch, "users", {"source_id": "1"})
    with pytest.raises(ValueError, match="batch_id and source_account"):
        store.insert("patients", [{"source_id": "1"}], batch_id="", source_account=ACCOUNT)
    _insert(store, batch, "patients", {"source_id": "1"})
    with pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):
        _insert(store, batch, "patients", {"source_id": "1"})
    # Another source account may use the same ids (the sandbox's accounts do).
    assert _insert(store, batch, "patients", {"source_id": "1"}, account="other") == ["2"]
    assert store.count("patients") == 2


def test_a_table_adapts_a_row_as_its_columns_do_one_by_one() -> None:
    samples: dict[str, list[Any]] = {
        "text": ["Ann", 7, "", None],
        "int": [3, "4", None, ""],
        "fk": ["12", 5, "", None],
        "bool": [True, 0, None, ""],
        "decimal": ["1.50", Decimal("2"), "", None],
        "date": ["2024-02-29", date(2024, 1, 1), None, ""],
        "datetime": [
            "2024-01-01T00:00:00Z",
            datetime(2024, 1, 1, tzinfo=UTC),
            "2024-01-01T10:00:00+10:00",
            None,
        ],
    }
    for spec in TABLES.values():
        for n in range(4):
            row = {c.name: samples[c.kind][n] for c in spec.columns if not c.computed}
            assert spec.adapt(row) == {c.name: c.adapt(row.get(c.name)) for c in spec.columns}, spec.name
    with pytest.raises(ValueError, match=r"^price: cannot store 9.99 as decimal"):
        TABLES["billable_items"].adapt({"price": 9.99})


def test_row_from_record_takes_keys_only_from_the_translated_map() -> None:
    record = parse_record(
        "individual_appointments",
        {
            "id": 900,
            "starts_at": "2025-03-04T01:00:00Z",
            "did_not_arrive": True,
            "patient": {"links": {"self": "https://api.au2.cliniko.com/v1/patients/77"}},
            "practitioner": {"links": {"self": "https://api.au2.cliniko.com/v1/practitioners/5"}},
            "notes": "Bring scans",
        },
    ).model_dump(mode="json")
    row = row_from_record("individual_appointments", record, {"patient_id": "3"})
    assert row["source_id"] == "900"
    assert row["patient_id"] == "3" and row["practitioner_id"] is None  # never the source's 5
    assert row["did_not_arrive"] is True and row["starts_at"] == "2025-03-04T01:00:00Z"
    assert row["data"]["notes"] == "Bring scans" and row["data"]["patient_id"] == "77"
    assert "imported" not in row and "notes" not in row


# --- matching --------------------------------------------------------------------------------


def test_find_patients_matching_rules(ledger: Ledger, store: LocalStore) -> None:
    (hand,) = store.setup_reference(
        "patients", [{"first_name": "  Zoë ", "last_name": "De   Silva", "date_of_birth": "1980-02-03"}]
    )
    batch = _new_batch(ledger, store, account="other-account")
    (other,) = _insert(
        store,
        batch,
        "patients",
        {"source_id": "1", "first_name": "ANN", "last_name": "lee", "date_of_birth": date(1990, 1, 2)},
        account="other-account",
    )
    store.setup_reference("patients", [{"first_name": "Ann", "last_name": "Lee"}])  # no date of birth

    def find(
        first: str | None, last: str | None, dob: date | str | None, account: str = ACCOUNT
    ) -> list[str]:
        return store.find_patients(first, last, dob, exclude_source_account=account)

    assert find("zoë", "de silva", "1980-02-03") == [hand]
    assert find("ZOË", " DE SILVA ", date(1980, 2, 3)) == [hand]
    assert find("Zoë", "De Silva", "1980-02-04") == []  # another date of birth
    assert find("Zoë", "De Silva", None) == []  # an unknown date of birth matches nobody
    assert find("Zoe", "De Silva", "1980-02-03") == []  # exact names: an accent is not spacing
    assert find("Zoë", "DeSilva", "1980-02-03") == []
    assert find("Ann", "Lee", "1990-01-02") == [other]
    assert find("Ann", "Lee", "1990-01-02", account="other-account") == []  # never its own account's patients
    assert find("Ann", None, "1990-01-02") == []


def test_find_patients_by_email(ledger: Ledger, store: LocalStore) -> None:
    ids = store.setup_reference(
        "patients",
        [{"first_name": "A", "email": " Ann@Example.com "}, {"first_name": "B", "email": "bo@example.com"}],
    )
    assert store.find_patients_by_email("ann@example.COM", ACCOUNT) == [ids[0]]
    assert store.find_patients_by_email("  ", ACCOUNT) == []
    assert store.find_patients_by_email(None, ACCOUNT) == []


def test_find_individual_appointment(ledger: Ledger, store: LocalStore) -> None:
    (patient,) = store.setup_reference("patients", [{"first_name": "A", "last_name": "B"}])
    prac_a, prac_b = store.setup_reference("practitioners", [{"first_name": "P"}, {"first_name": "Q"}])
    (hand,) = store.setup_reference(
        "individual_appointments",
        [{"starts_at": "2025-06-01T09:30:00+10:00", "practitioner_id": prac_a, "patient_id": patient}],
    )
    batch = _new_batch(ledger, store)
    _insert(
        store,
        batch,
        "individual_appointments",
        {
            "source_id": "5",
            "starts_at": "2025-06-02T00:00:00Z",
            "practitioner_id": prac_a,
            "patient_id": patient,
        },
    )
    at = datetime(2025, 5, 31, 23, 30, tzinfo=UTC)
    assert store.find_individual_appointment(at, prac_a, patient, ACCOUNT) == [hand]
    assert store.find_individual_appointment("2025-05-31T23:30:00Z", prac_a, patient, ACCOUNT) == [hand]
    # A dumped start with an offset is the same instant in UTC, not its local time stamped "Z".
    assert store.find_individual_appointment("2025-06-01T09:30:00+10:00", prac_a, patient, ACCOUNT) == [hand]
    assert store.find_individual_appointment("2025-06-01T09:30:00Z", prac_a, patient, ACCOUNT) == []
    assert store.find_individual_appointment(at, prac_b, patient, ACCOUNT) == []
    assert store.find_individual_appointment(at, None, patient, ACCOUNT) == []
    assert store.find_individual_appointment(None, prac_a, patient, ACCOUNT) == []
    assert store.find_individual_appointment("2025-06-02T00:00:00Z", prac_a, patient, ACCOUNT) == []
    assert store.find_individual_appointment("2025-06-02T00:00:00Z", prac_a, patient, "another") != []
    assert _clinic(
        store, "SELECT imported, notifications_suppressed FROM clinic.individual_appointments"
    ) == [
        (1, 1),
        (1, 1),
    ]


# --- balances --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "total", "outstanding"),
    [
        (10, "120.00", "120.00"),  # Open: all of it
        (20, "120.00", "0.00"),  # Paid
        (30, "80.50", "0.00"),  # Closed
        (40, "-15.00", "-15.00"),  # Open (credit): the credit reduces the balance
        (50, "10.00", None),  # unknown status: not guessed
        (10, None, None),
    ],
)
def test_outstanding_follows_the_one_rule(
    ledger: Ledger, store: LocalStore, status: int, total: str | None, outstanding: str | None
) -> None:
    assert outstanding_amount(status, total) == outstanding
    batch = _new_batch(ledger, store)
    (patient,) = store.setup_reference("patients", [{"first_name": "A", "last_name": "B"}])
    _insert(
        store,
        batch,
        "invoices",
        {"source_id": "1", "number": 1042, "status": status, "total_amount": total, "patient_id": patient},
    )
    assert _clinic(store, "SELECT number, status, total_amount, outstanding FROM clinic.invoices") == [
        (1042, status, total, outstanding)
    ]


def test_deleted_invoices_never_come_across(ledger: Ledger, store: LocalStore) -> None:
    batch = _new_batch(ledger, store)
    (patient,) = store.setup_reference("patients", [{"first_name": "A", "last_name": "B"}])
    with pytest.raises(ValueError, match="deleted invoices never come across"):
        _insert(
            store,
            batch,
            "invoices",
            {
                "source_id": "1",
                "patient_id": patient,
                "data": {"id": 1, "deleted_at": "2025-01-01T00:00:00Z"},
            },
        )
    assert store.count("invoices") == 0


# --- reference frames and frames -------------------------------------------------------------


def test_reference_frames(ledger: Ledger, store: LocalStore) -> None:
    store.setup_reference(
        "practitioners",
        [
            {"first_name": "Zoe", "last_name": "Adams"},
            {"first_name": "Old", "last_name": "Timer", "active": False},
        ],
    )
    store.setup_reference("businesses", [{"business_name": "Harbourside North"}])
    batch = _new_batch(ledger, store)
    _insert(
        store,
        batch,
        "appointment_types",
        {"source_id": "1", "name": "Initial"},
        {"source_id": "2", "name": "Retired", "archived_at": "2024-01-01T00:00:00Z"},
    )
    pracs = store.reference("practitioners")
    assert pracs.schema == pl.Schema(
        {"id": pl.String, "name": pl.String, "active": pl.Boolean, "source_id": pl.String}
    )
    assert pracs.rows() == [("1", "Zoe Adams", True, None), ("2", "Old Timer", False, None)]
    assert store.reference("businesses").rows() == [("1", "Harbourside North", True, None)]
    assert store.reference("appointment_types").rows() == [
        ("1", "Initial", True, "1"),
        ("2", "Retired", False, "2"),
    ]
    with pytest.raises(ValueError, match="reference"):
        store.reference("patients")


def test_frame_types(ledger: Ledger, store: LocalStore) -> None:
    batch = _new_batch(ledger, store)
    (patient,) = _insert(
        store,
        batch,
        "patients",
        {
            "source_id": "1",
            "first_name": "A",
            "date_of_birth": "1990-01-02",
            "archived_at": "2025-01-01T10:00:00Z",
        },
    )
    _insert(
        store,
        batch,
        "invoices",
        {"source_id": "1", "status": 10, "total_amount": "5.50", "patient_id": patient},
    )
    patients = store.frame("patients")
    assert patients.columns == list(TABLES["patients"].column_names)
    assert patients["date_of_birth"].to_list() == [date(1990, 1, 2)]
    assert patients["archived_at"].to_list() == [datetime(2025, 1, 1, 10, tzinfo=UTC)]
    assert patients["id"].dtype == pl.Int64
    invoices = store.frame("invoices", ["patient_id", "outstanding"])
    assert invoices.rows() == [(int(patient), "5.50")]
    flags = store.frame("unavailable_blocks", ["imported"])
    assert flags.schema == pl.Schema({"imported": pl.Boolean}) and flags.height == 0
    with pytest.raises(ValueError, match="no columns"):
        store.frame("patients", ["nope"])


# --- dependents and deletion -------------------------------------------------------------------


def test_dependents_of_patients_include_records_created_since_by_anyone(
    ledger: Ledger, store: LocalStore
) -> None:
    first = _new_batch(ledger, store)
    ann, bo = _insert(
        store,
        first,
        "patients",
        {"source_id": "1", "first_name": "Ann"},
        {"source_id": "2", "first_name": "Bo"},
    )
    (prac,) = store.setup_reference("practitioners", [{"first_name": "P"}])
    (group,) = store.setup_reference("group_appointments", [{"practitioner_id": prac}])
    later = _new_batch(ledger, store)
    (appt,) = _insert(store, later, "individual_appointments", {"source_id": "9", "patient_id": ann})
    (invoice,) = _insert(store, later, "invoices", {"source_id": "3", "patient_id": ann, "status": 10})
    (line,) = _insert(store, later, "invoice_items", {"source_id": "4", "invoice_id": invoice})
    (note,) = _insert(
        store, later, "treatment_notes", {"source_id": "5", "patient_id": ann, "booking_id": appt}
    )
    (attendee,) = _insert(
        store, later, "attendees", {"source_id": "6", "patient_id": ann, "booking_id": group}
    )
    (alert,) = store.setup_reference("medical_alerts", [{"name": "Latex", "patient_id": ann}])
    _insert(store, later, "medical_alerts", {"source_id": "7", "name": "Nuts", "patient_id": bo})

    dependents = store.dependents_of_patients([ann])
    assert dependents == {
        "invoice_items": [line],
        "invoices": [invoice],
        "treatment_notes": [note],
        "attendees": [attendee],
        "individual_appointments": [appt],
        "medical_alerts": [alert],
    }
    assert list(dependents) == [e for e in DELETE_ORDER if e in dependents]
    assert store.dependents_of_patients([]) == {}

    # The order it gives deletes cleanly; the group appointment and Bo's records stay.
    with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
        store.delete("patients", [ann])
    with ledger.transaction():
        for entity, ids in dependents.items():
            store.delete(entity, ids)
        store.delete("patients", [ann])
    assert store.count("patients") == 1 and store.count("medical_alerts") == 1
    assert store.count("group_appointments") == 1 and store.count("invoice_items") == 0


def test_created_by_and_delete_touch_only_a_batch_s_records(ledger: Ledger, store: LocalStore) -> None:
    (hand,) = store.setup_reference("billable_items", [{"name": "Hand-made"}])
    batch = _new_batch(ledger, store)
    other = _new_batch(ledger, store)
    items = _insert(store, batch, "billable_items", {"source_id": "1"}, {"source_id": "2"})
    _insert(store, other, "billable_items", {"source_id": "3"})
    (atype,) = _insert(store, other, "appointment_types", {"source_id": "1", "billable_item_id": items[0]})
    assert store.created_by(batch, "billable_items") == items
    assert store.created_by(batch, "patients") == []
    assert store.count("billable_items", batch) == 2

    assert store.delete("billable_items", store.created_by(batch, "billable_items")) == 2
    assert [r[0] for r in _clinic(store, "SELECT id FROM clinic.billable_items ORDER BY id")] == [
        int(hand),
        4,
    ]
    # Seed 000: an appointment type keeps going, its deleted billable item cleared.
    assert _clinic(store, "SELECT id, billable_item_id FROM clinic.appointment_types") == [(int(atype), None)]


def test_seeding_from_the_sandbox_destination_sets_up_its_clinic_once(store: LocalStore) -> None:
    destination = next(a for a in build_accounts("tiny", 1) if a.name != "Harbourside Physio")
    records = list(destination.records())
    created = store.seed_from_sandbox_destination(records)
    wanted = {e for e, _ in records if e in ENTITIES}
    assert set(created) == wanted
    for entity in wanted:
        assert store.count(entity) == sum(e == entity for e, _ in records) == len(created[entity])
    assert _clinic(store, "SELECT count(*) FROM clinic.practitioners WHERE source_id IS NOT NULL") == [(0,)]
    # Links inside the destination clinic point at the new ids.
    linked = _clinic(
        store,
        "SELECT b.name FROM clinic.appointment_types t JOIN clinic.billable_items b ON b.id = t.billable_item_id",
    )
    source_links = [r["billable_item_id"] for e, r in records if e == "appointment_types"]
    assert len(linked) == sum(x is not None for x in source_links) > 0
    names = store.reference("practitioners")["name"].to_list()
    assert names == [
        f"{r['first_name']} {r['last_name']}".strip() for e, r in records if e == "practitioners"
    ]
    data = json.loads(_clinic(store, "SELECT data FROM clinic.practitioners LIMIT 1")[0][0])
    assert data["id"] == next(r["id"] for e, r in records if e == "practitioners")

    assert store.seed_from_sandbox_destination(records) == {}
    assert store.count("practitioners") == len(created["practitioners"])


def test_ctrl_c_before_a_batch_takes_back_the_workspace_made_for_it(tmp_path: Path) -> None:
    """A run stopped before it recorded anything leaves no ledger, store or folder; once a batch is, all stay."""
    workspace = tmp_path / "p" / "q"
    target = f"sqlite:{workspace / 'clinic.db'}"
    with pytest.raises(KeyboardInterrupt), unmade_if_refused(workspace, target):
        ledger, _ = open_local_store(target, workspace)
        ledger.close()
        raise KeyboardInterrupt
    assert not (tmp_path / "p").exists()

    with pytest.raises(KeyboardInterrupt), unmade_if_refused(workspace, target):
        ledger, store = open_local_store(target, workspace)
        with ledger:
            ledger.create_batch(source_account="Harbourside", destination=store.describe(), plan={})
        raise KeyboardInterrupt
    assert Ledger.file_in(workspace).is_file() and (workspace / "clinic.db").is_file()
