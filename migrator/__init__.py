"""Copy a clinic's data out of Cliniko: the library behind the console and the CLI.

>>> import migrator
>>> client = migrator.ClinikoClient("MS...-au1")     # doctest: +SKIP
>>> migrator.preview(client).counts["patients"]      # doctest: +SKIP
412
"""

from __future__ import annotations

from migrator.cliniko.client import ClientConfig, ClinikoClient, Identity
from migrator.cliniko.filters import Filter
from migrator.cliniko.keys import ApiKey, parse_key
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
from migrator.preview import Preview, preview

__all__ = [
    "APIError",
    "AccessError",
    "ApiKey",
    "AuthError",
    "ClientConfig",
    "ClinikoClient",
    "ConfigError",
    "FatalAPIError",
    "Filter",
    "Identity",
    "MappingError",
    "MigratorError",
    "NotFoundError",
    "Preview",
    "ReadOnlyError",
    "RetriableAPIError",
    "ValidationAPIError",
    "parse_key",
    "preview",
]
