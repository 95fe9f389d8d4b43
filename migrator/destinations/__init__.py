"""Where migrated records go: the interface the engine writes through, and its implementations.

:class:`LocalStore` (``sqlite:PATH``) is the embedded clinic store; a Cliniko account
written through the API (:class:`~migrator.destinations.cliniko.ClinikoDestination`,
``cliniko:ACCOUNT_ID``) implements the same :class:`Destination` protocol. A destination
whose writes cannot join the ledger's transaction says so with ``transactional = False``.
Both also rewrite records an earlier batch brought when the source changed them
(``stored_rows``, ``stored_form`` and ``update``); the engine leaves such records as they are
in a destination without those three.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import date, datetime
from typing import Any, Protocol, runtime_checkable

import polars as pl

from migrator.destinations.local import DELETE_ORDER, INSERT_ORDER, LocalStore, row_from_record

__all__ = ["DELETE_ORDER", "INSERT_ORDER", "Destination", "LocalStore", "row_from_record"]


@runtime_checkable
class Destination(Protocol):
    """What the engine needs of a destination. Ids are strings on both sides.

    Entities are Cliniko resource names (``"patients"``). Rows given to :meth:`insert`
    are destination-form dicts: ``source_id``, field values with foreign keys already
    translated to destination ids, and ``data`` (the original record).
    """

    def describe(self) -> str:
        """The destination as recorded in a batch (``sqlite:/abs/clinic.db``); never a key."""
        ...

    def reference(self, entity: str) -> pl.DataFrame:
        """Practitioners, businesses or appointment types: ``id``, ``name``, ``active``, ``source_id``."""
        ...

    def insert(
        self, entity: str, rows: list[dict[str, Any]], *, batch_id: str, source_account: str
    ) -> Sequence[str | Exception]:
        """Create records; return their new ids in order (or, per record, why the destination refused it)."""
        ...

    def find_patients(
        self,
        first_name: str | None,
        last_name: str | None,
        date_of_birth: date | str | None,
        *,
        exclude_source_account: str,
    ) -> list[str]:
        """Existing patients this one is the same person as (names and date of birth)."""
        ...

    def find_individual_appointment(
        self,
        starts_at: datetime | str | None,
        practitioner_id: str | None,
        patient_id: str | None,
        exclude_source_account: str,
    ) -> list[str]:
        """Existing appointments this one already is (same time, practitioner and patient)."""
        ...

    def has_foreign(self, entity: str, *, source_account: str) -> bool:
        """Whether ``entity`` holds any record that did not come from ``source_account``."""
        ...

    def delete(self, entity: str, ids: Iterable[str]) -> int:
        """Delete records by destination id; return how many went."""
        ...

    def created_by(self, batch_id: str, entity: str) -> list[str]:
        """Ids of the records of ``entity`` a batch created."""
        ...

    def created_and_matched(self, batch_id: str, entity: str) -> tuple[list[str], list[str]]:
        """:meth:`created_by` in two parts: the ids recorded, and those found only by matching details."""
        ...

    def count(self, entity: str, batch_id: str | None = None) -> int:
        """How many records of ``entity`` there are (created by ``batch_id``, if given)."""
        ...
