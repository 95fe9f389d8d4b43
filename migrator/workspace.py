"""The workspace: the directory that holds ``ledger.db`` and, unless told otherwise, the local clinic store.

A module of its own, without imports, so that the command line can name the default in
its help without loading the library (``python -m migrator --help`` stays quick).
"""

__all__ = ["DEFAULT_WORKSPACE"]

#: Where the ledger (and, by default, ``clinic.db``) lives: ``./workspace``.
DEFAULT_WORKSPACE = "workspace"
