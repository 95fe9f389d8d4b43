"""What a migration would read: entity counts and the cost of reading them.

Counting costs one request per list (``per_page=1``, read ``total_entries``), and
the lists are counted concurrently so the preview takes about as long as the
slowest single request. Reading a list costs one request per 100 records (at
least one), so the estimate is exact for an unfiltered run, and minutes follow
from the key's pace.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from migrator.cliniko.client import ClinikoClient
from migrator.cliniko.pagination import PER_PAGE

__all__ = ["SOURCE_LISTS", "Preview", "list_key", "preview"]

#: Every list a full migration reads, in stage order: ``(resource, route)``.
#: Archived patients and appointment types, and inactive (former) practitioners,
#: live on their own routes and come across too.
SOURCE_LISTS: tuple[tuple[str, str | None], ...] = (
    ("businesses", None),
    ("practitioners", None),
    ("practitioners", "inactive"),
    ("appointment_types", None),
    ("appointment_types", "archived"),
    ("taxes", None),
    ("billable_items", None),
    ("products", None),
    ("concession_types", None),
    ("treatment_note_templates", None),
    ("contacts", None),
    ("patients", None),
    ("patients", "archived"),
    ("medical_alerts", None),
    ("individual_appointments", None),
    ("group_appointments", None),
    ("attendees", None),
    ("unavailable_blocks", None),
    ("treatment_notes", None),
    ("patient_attachments", None),
    ("invoices", None),
    ("invoice_items", None),
)


def list_key(resource_name: str, route: str | None) -> str:
    """The name a list goes by in counts: ``patients`` or ``patients/archived``."""
    return f"{resource_name}/{route}" if route else resource_name


@dataclass(frozen=True)
class Preview:
    """Counts per list, and what reading them all would cost at the key's pace."""

    counts: dict[str, int]
    requests: int
    estimated_minutes: float
    requests_per_minute: float

    def as_dict(self) -> dict[str, object]:
        return {"counts": self.counts, "requests": self.requests, "estimated_minutes": self.estimated_minutes}


def read_requests(records: int) -> int:
    """Requests to read a list of ``records`` at 100 per page (an empty list still costs one)."""
    return max(1, math.ceil(records / PER_PAGE))


def minutes_at(requests: int, requests_per_minute: float) -> float:
    """Minutes ``requests`` take at a key's pace, rounded up to a tenth (``0.0`` unpaced)."""
    return math.ceil(requests / requests_per_minute * 10) / 10 if requests_per_minute > 0 else 0.0


def preview(client: ClinikoClient, lists: tuple[tuple[str, str | None], ...] = SOURCE_LISTS) -> Preview:
    """Count every list a migration reads, concurrently.

    Args:
        client: a client of the source account.
        lists: ``(resource, route)`` pairs; all of :data:`SOURCE_LISTS` by default.

    Returns:
        The counts keyed by :func:`list_key`, the requests a full read costs, and
        the minutes that takes at the client's pace (rounded up to a tenth).

    Raises:
        APIError: a count failed (a 401 or 403 says the key cannot read this account);
            the counts not yet sent are not sent.
    """
    totals = client.counts([(r, (), route) for r, route in lists])
    counts = {list_key(r, route): n for (r, route), n in zip(lists, totals, strict=True)}
    requests = sum(read_requests(n) for n in counts.values())
    pace = client.config.requests_per_minute
    return Preview(
        counts=counts,
        requests=requests,
        estimated_minutes=minutes_at(requests, pace),
        requests_per_minute=pace,
    )
