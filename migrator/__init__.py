"""Copy a clinic's data out of Cliniko: the library behind the console and the CLI.

>>> import migrator
>>> source = migrator.connect()                      # doctest: +SKIP
>>> migrator.preview(source).counts["patients"]      # doctest: +SKIP
412
>>> migrator.scoped_preview(source, scope="business:7").frame                      # doctest: +SKIP
>>> table = migrator.mapping(source, to="sqlite:clinic.db")                        # doctest: +SKIP
>>> result = migrator.run(source, to="sqlite:clinic.db", mapping=table)            # doctest: +SKIP
>>> migrator.reconcile(result.batch_id, source=source).ok                          # doctest: +SKIP
True
>>> migrator.batches()                               # doctest: +SKIP

Everything but the API's errors loads on first use (the steps ``connect``, ``scoped_preview``,
``mapping``, ``run``, ``reconcile``, ``batches``, ``delete_batch`` from :mod:`migrator.steps`;
``save_mapping``, which writes a mapping table as the file ``run(mapping=path)`` reads; the client,
the preview; the ledger's and deletion's ``BatchNotFound``, ``BatchNotDeletable``
and ``DeletionPlan``), so ``import migrator`` and ``python -m migrator --help`` stay light.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

from migrator.errors import (
    AccessError,
    APIError,
    AuthError,
    ConfigError,
    FatalAPIError,
    MappingError,
    MigratorError,
    NotFoundError,
    ReadOnlyError,
    RetriableAPIError,
    ValidationAPIError,
)

if TYPE_CHECKING:
    from migrator.batches import BatchNotDeletable, DeletionPlan
    from migrator.cliniko.client import ClientConfig, ClinikoClient, Identity
    from migrator.cliniko.filters import Filter
    from migrator.cliniko.keys import ApiKey, parse_key
    from migrator.engine import RunResult
    from migrator.ledger import BatchNotFound
    from migrator.mapping import save_mapping
    from migrator.preview import Preview, preview
    from migrator.reconcile import Reconciliation
    from migrator.scoped_preview import ScopedPreview
    from migrator.steps import batches, connect, delete_batch, mapping, reconcile, run, scoped_preview

__all__ = [
    "APIError",
    "AccessError",
    "ApiKey",
    "AuthError",
    "BatchNotDeletable",
    "BatchNotFound",
    "ClientConfig",
    "ClinikoClient",
    "ConfigError",
    "DeletionPlan",
    "FatalAPIError",
    "Filter",
    "Identity",
    "MappingError",
    "MigratorError",
    "NotFoundError",
    "Preview",
    "ReadOnlyError",
    "Reconciliation",
    "RetriableAPIError",
    "RunResult",
    "ScopedPreview",
    "ValidationAPIError",
    "batches",
    "connect",
    "delete_batch",
    "mapping",
    "parse_key",
    "preview",
    "reconcile",
    "run",
    "save_mapping",
    "scoped_preview",
]

#: Names loaded on first use, and the module each comes from.
_LAZY = {
    "ApiKey": "migrator.cliniko.keys",
    "BatchNotDeletable": "migrator.batches",
    "BatchNotFound": "migrator.ledger",
    "DeletionPlan": "migrator.batches",
    "ClientConfig": "migrator.cliniko.client",
    "ClinikoClient": "migrator.cliniko.client",
    "Filter": "migrator.cliniko.filters",
    "Identity": "migrator.cliniko.client",
    "Preview": "migrator.preview",
    "parse_key": "migrator.cliniko.keys",
    "preview": "migrator.preview",
    "RunResult": "migrator.engine",
    "Reconciliation": "migrator.reconcile",
    "batches": "migrator.steps",
    "connect": "migrator.steps",
    "delete_batch": "migrator.steps",
    "mapping": "migrator.steps",
    "reconcile": "migrator.steps",
    "run": "migrator.steps",
    "save_mapping": "migrator.mapping",
    "scoped_preview": "migrator.steps",
    "ScopedPreview": "migrator.scoped_preview",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'migrator' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """What ``dir(migrator)`` and a notebook's tab completion offer: the lazily loaded names too."""
    return sorted(set(globals()) | set(_LAZY))


class _Package(types.ModuleType):
    """The package, whose functions share their names with modules (``preview``, ``scoped_preview``...).

    Importing a submodule makes Python set it as an attribute of its package, which
    would replace ``migrator.reconcile()`` with the module ``migrator.reconcile`` (and so on);
    the functions win here (the modules stay importable: ``from migrator.reconcile import counts``).
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _LAZY and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
