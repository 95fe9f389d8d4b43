"""The exception tree of the migrator, grouped by what the caller does next.

    MigratorError                 base: catch this to catch everything of ours
    ├── ConfigError               bad input before any request (malformed key, bad filter, bad option)
    ├── APIError                  Cliniko answered with an error, or could not be reached
    │   ├── AuthError             401: the key is unknown, revoked, or on another shard
    │   ├── AccessError           403: the key's user lacks the right for this request
    │   ├── NotFoundError         404: no such record or route
    │   ├── ValidationAPIError    422: Cliniko refused a create or update (carries field errors)
    │   ├── FatalAPIError         any other 4xx: fix the request, retrying will not help
    │   └── RetriableAPIError     429, 5xx, timeouts, dropped connections: retries ran out
    ├── ReadOnlyError             a write was attempted through the read-only source client
    └── MappingError              a mapping table still has unresolved rows

Every message is one sentence meant for a person, and none ever contains an API key.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

__all__ = [
    "APIError",
    "AccessError",
    "AuthError",
    "ConfigError",
    "FatalAPIError",
    "MappingError",
    "MigratorError",
    "NotFoundError",
    "ReadOnlyError",
    "RetriableAPIError",
    "ValidationAPIError",
    "database_refused",
    "path_refused",
    "paths_said",
]


class MigratorError(Exception):
    """Base class of every error the migrator raises on purpose."""


class ConfigError(MigratorError):
    """The input is wrong before any request is sent (a malformed key, an unknown filter...)."""


class ReadOnlyError(MigratorError):
    """A write was attempted through a client that may only read (the migration source)."""


class MappingError(MigratorError):
    """A mapping table has rows that are not resolved yet."""


class APIError(MigratorError):
    """Cliniko answered with an error status, or could not be reached.

    Attributes:
        status: the HTTP status code, or ``None`` when no response arrived.
        method, path: what was asked (the path never carries the key).
        api_message: the message from the API's error body, if it sent one.
        errors: field errors from a 422 body (``{"field": ["..."]}``).
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        method: str | None = None,
        path: str | None = None,
        api_message: str | None = None,
        errors: dict[str, list[str]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.method = method
        self.path = path
        self.api_message = api_message
        self.errors = errors or {}


class AuthError(APIError):
    """401: the key was refused (unknown, revoked, or used on the wrong shard)."""


class AccessError(APIError):
    """403: the key's user is not allowed to do this."""


class NotFoundError(APIError):
    """404: the record or route does not exist."""


class ValidationAPIError(APIError):
    """422: Cliniko refused the record; ``errors`` says which fields."""


class FatalAPIError(APIError):
    """Any other 4xx: the request itself is wrong and retrying will not help."""


class RetriableAPIError(APIError):
    """429, 5xx, a timeout or a dropped connection, still failing after every retry.

    ``unconfirmed`` is true for a write whose request left but whose answer was lost:
    Cliniko may or may not have applied it, so it must be looked up before being sent again.
    ``unreachable`` is true when no try could even connect (no network, or no such host).
    """

    def __init__(
        self, message: str, *, unconfirmed: bool = False, unreachable: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(message, **kwargs)
        self.unconfirmed = unconfirmed
        self.unreachable = unreachable


def path_refused(exc: OSError) -> str:
    """One sentence for a file or folder the file system refused, naming it (no traceback)."""
    where = exc.filename if exc.filename is not None else "a file"
    if isinstance(exc, FileExistsError):
        return f"Cannot use {where}: a file is already there where a folder is needed."
    reason = (exc.strerror or type(exc).__name__).rstrip(".")
    return f"Cannot use {where}: {reason[:1].lower()}{reason[1:]}."


def database_refused(exc: sqlite3.Error) -> str | None:
    """One sentence for SQLite refusing to write a database it could read, else ``None``.

    A ledger or store (or the folder it is in) that this user may read but not write opens
    and reads fine; the first write then fails with ``SQLITE_READONLY`` (or, for the folder
    its journal goes in, ``SQLITE_READONLY_DIRECTORY``). That is a permission to give, not a
    damaged file, so it is said as such. SQLite does not say which file refused.

    >>> database_refused(sqlite3.OperationalError("database is locked")) is None
    True
    """
    if not getattr(exc, "sqlite_errorname", "").startswith("SQLITE_READONLY"):
        return None
    return (
        f"The ledger or the clinic store may be read but not written ({str(exc).rstrip('.')}): let this user "
        "write both files and the folders they are in, then try again; what was committed before stays."
    )


_P = ParamSpec("_P")
_R = TypeVar("_R")


def paths_said(func: Callable[_P, _R]) -> Callable[_P, _R]:
    """``func``, with a path the file system refuses (a workspace that is a file, a folder it
    may not write) raised as a :class:`ConfigError` of one sentence (:func:`path_refused`),
    as the CLI says it; the ``OSError`` is its ``__cause__``. So is a ledger or store it may
    read but not write (:func:`database_refused`), with the ``sqlite3`` error as the cause."""

    @functools.wraps(func)
    def said(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return func(*args, **kwargs)
        except OSError as exc:
            raise ConfigError(path_refused(exc)) from exc
        except sqlite3.Error as exc:
            refused = database_refused(exc)
            if refused is None:
                raise
            raise ConfigError(refused) from exc

    return said
