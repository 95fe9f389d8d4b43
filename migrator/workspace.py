"""The workspace: the directory that holds ``ledger.db`` and, unless told otherwise, the local clinic store.

A module of its own, importing only the standard library, so that the command line can name the default in
its help without loading the library (``python -m migrator --help`` stays quick).
"""

import contextlib
import errno
import os
import sqlite3
from pathlib import Path

__all__ = ["DEFAULT_WORKSPACE", "audit_mark", "make_private_database", "read_only", "refuse_file"]

#: Where the ledger (and, by default, ``clinic.db``) lives: ``./workspace``.
DEFAULT_WORKSPACE = "workspace"


def make_private_database(path: Path) -> None:
    """Make the database file ``path`` and its folder if missing, each its owner's alone (``0600``, ``0700``).

    The ledger and the clinic stores hold patients' records: on a shared machine (a hosted
    instance) no other user may read them. The file is created empty (a new SQLite
    database); SQLite gives its journal files the database's own mode, so they stay private
    too. A folder or file that already exists keeps its mode (a folder where the file goes
    is then refused by SQLite), and a path the file system refuses is left for SQLite to
    refuse in its own words.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)  # parents made on the way: the usual mode
    with contextlib.suppress(OSError):
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))


def refuse_file(workspace: str | Path) -> None:
    """Refuse a workspace that is a file, as opening a ledger there would.

    For what only reads a workspace (listing batches), where a missing one simply has none:
    a file is a mistyped path, not an empty workspace.

    Raises:
        FileExistsError: ``workspace`` is a file (``filename`` names it).
    """
    if Path(workspace).exists() and not Path(workspace).is_dir():
        raise FileExistsError(errno.EEXIST, "File exists", str(workspace))


def read_only(database: Path) -> contextlib.closing[sqlite3.Connection]:
    """A read-only connection to the SQLite file ``database`` (another workspace's ledger, say), closed with ``with``."""
    return contextlib.closing(sqlite3.connect(f"{database.resolve().as_uri()}?mode=ro", uri=True, timeout=5))


def audit_mark(workspace: str | Path) -> int:
    """The last line of the audit trail in ``workspace``'s ledger (read only): 0 with no ledger or none yet.

    Taken before a command and again after it, it tells whether the command recorded
    anything; -1 when the ledger cannot be read (a folder that may not be searched, a file
    that is no ledger), which no caller should take as unchanged. Standard library only, so
    the command line can take it before loading the library.

    A ``store_moved`` line is not counted: opening a moved or copied workspace re-points its
    batches before any command's work (listing them does it too), and that is no record
    written. A line another process records in the same workspace meanwhile does count; the
    command line tells its own from those by :func:`migrator.ledger.audited_here`.
    """
    ledger_file = Path(workspace) / "ledger.db"
    try:
        if not ledger_file.is_file():
            return 0
        with read_only(ledger_file) as conn:
            return int(
                conn.execute(
                    "SELECT coalesce(max(rowid), 0) FROM audit WHERE action != 'store_moved'"
                ).fetchone()[0]
            )
    except (OSError, sqlite3.Error):
        return -1
