"""The workspace: the directory that holds ``ledger.db`` and, unless told otherwise, the local clinic store.

A module of its own, importing only the standard library, so that the command line can name the default in
its help without loading the library (``python -m migrator --help`` stays quick).
"""

import contextlib
import errno
import os
from pathlib import Path

__all__ = ["DEFAULT_WORKSPACE", "make_private_file", "make_private_folder", "refuse_file"]

#: Where the ledger (and, by default, ``clinic.db``) lives: ``./workspace``.
DEFAULT_WORKSPACE = "workspace"


def make_private_folder(folder: Path) -> None:
    """Make ``folder`` (and its parents) if missing; a folder made here is its owner's alone (``0700``).

    The ledger and the clinic stores hold patients' records: on a shared machine (a hosted
    instance) no other user may read them. A folder that already exists keeps its mode.
    """
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)


def make_private_file(path: Path) -> None:
    """Create the database file ``path`` empty, readable by its owner only (``0600``), if it does not exist.

    SQLite gives its journal files the database's own mode, so they stay private too. An
    existing file (or a folder, which opening it as a database then refuses) is left as it is,
    and a path the file system refuses is left for SQLite to refuse in its own words.
    """
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
