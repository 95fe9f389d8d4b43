"""The workspace: the directory that holds ``ledger.db`` and, unless told otherwise, the local clinic store.

A module of its own, importing only the standard library, so that the command line can name the default in
its help without loading the library (``python -m migrator --help`` stays quick).
"""

import errno
from pathlib import Path

__all__ = ["DEFAULT_WORKSPACE", "refuse_file"]

#: Where the ledger (and, by default, ``clinic.db``) lives: ``./workspace``.
DEFAULT_WORKSPACE = "workspace"


def refuse_file(workspace: str | Path) -> None:
    """Refuse a workspace that is a file, as opening a ledger there would.

    For what only reads a workspace (listing batches), where a missing one simply has none:
    a file is a mistyped path, not an empty workspace.

    Raises:
        FileExistsError: ``workspace`` is a file (``filename`` names it).
    """
    if Path(workspace).exists() and not Path(workspace).is_dir():
        raise FileExistsError(errno.EEXIST, "File exists", str(workspace))
