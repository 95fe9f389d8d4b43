"""A Cliniko-compatible API sandbox: synthetic clinics served over real HTTP.

``Sandbox`` runs it in a thread of this process, ``start_subprocess`` as
``python -m migrator.sandbox`` in another; ``build_accounts`` (from ``data``)
generates the clinics. See ``server.py`` for the behaviour and its choices.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from migrator.sandbox.accounts import ROLES, AccountSeed, KeySeed
from migrator.sandbox.faults import FAULT_KINDS
from migrator.sandbox.runner import Sandbox, start_subprocess

if TYPE_CHECKING:
    from migrator.sandbox.data import build_accounts

__all__ = ["FAULT_KINDS", "ROLES", "AccountSeed", "KeySeed", "Sandbox", "build_accounts", "start_subprocess"]


def __getattr__(name: str) -> Any:
    # The generator is imported on first use: it is large, and written separately.
    if name == "build_accounts":
        from migrator.sandbox.data import build_accounts

        return build_accounts
    raise AttributeError(f"module 'migrator.sandbox' has no attribute {name!r}")
