"""The sandbox's contract between its data generator and its HTTP server.

The generator (``data.py``) describes each Cliniko account as an :class:`AccountSeed`
whose ``records()`` streams *internal records*; the server (``server.py``) loads
them into its store and renders them as Cliniko JSON. An internal record is a
plain dict:

- ``id``: an ``int`` (always; how it is rendered, JSON string or number, is the
  server's choice per resource, see ``migrator.cliniko.resources``);
- ``created_at`` / ``updated_at``: UTC strings ``YYYY-MM-DDTHH:MM:SSZ``;
- every documented field under its Cliniko name, ``None`` where unset (the server
  renders patients' unset ``date_of_birth``/``archived_at``/``deleted_at`` as ``""``);
- each relationship as ``<rel>_id`` (an ``int`` or ``None``) instead of a link object
  (``patient_id``, ``practitioner_id``, ...; the server renders the link);
- lifecycle fields where the resource has them: ``deleted_at``, ``archived_at``,
  ``cancelled_at`` (``None`` when live); practitioners carry ``active: bool``
  (inactive ones are served by ``/practitioners/inactive`` only);
- group appointments carry ``patient_ids: list[int]``, kept equal to their
  non-deleted attendees' patients.

``records()`` yields ``(resource_name, record)`` pairs in dependency order
(a record only refers to ids already yielded), as a stream: the ``large`` clinic
has about a million records and must never be held as one list.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ROLES", "AccountSeed", "KeySeed", "make_key"]

#: The key roles every sandbox serves (issue 2), in the order they are listed.
ROLES = (
    "source",
    "destination",
    "source_non_admin",
    "destination_admin_not_practitioner",
    "destination_practitioner",  # a practitioner (not an administrator): a note author's own key
)


@dataclass(frozen=True)
class KeySeed:
    """One API key of an account: who owns it and what they may do."""

    role: str  # one of ROLES
    key: str  # the full key, shard suffix included
    user_id: int
    is_admin: bool
    is_practitioner: bool


@dataclass
class AccountSeed:
    """One Cliniko account of the sandbox.

    Attributes:
        name: the account (clinic) name, also in ``/settings``.
        account_id: the account's id in ``/settings``.
        shard: where the account lives; its keys end in ``-<shard>``.
        subdomain: the account's subdomain (``settings.account.subdomain``).
        keys: the API keys of this account.
        settings: the ``/settings`` object (without ``links``).
        records: a callable returning a fresh stream of ``(resource, record)``.
        totals: resource name -> how many records ``records()`` yields that a
            plain list (``GET /<resource>``) serves: not deleted, not archived,
            active practitioners only. Filled in by the generator so tests can
            compare a client's counts with the sandbox's own.
    """

    name: str
    account_id: int
    shard: str
    subdomain: str
    keys: list[KeySeed]
    settings: dict[str, Any]
    records: Callable[[], Iterator[tuple[str, dict[str, Any]]]]
    totals: dict[str, int] = field(default_factory=dict)


def make_key(seed: int, role: str, shard: str) -> str:
    """A deterministic, key-shaped secret for a sandbox role (never a real key)."""
    body = hashlib.sha256(f"cliniko-sandbox:{seed}:{role}".encode()).hexdigest()[:40]
    return f"MS{body}-{shard}"
