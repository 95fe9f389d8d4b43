"""API keys and shards.

A Cliniko API key carries its shard as a suffix: ``...-uk1`` lives on
``https://api.uk1.cliniko.com/v1``. Older keys have no suffix and live on ``au1``.
The key itself is held as a :class:`pydantic.SecretStr` so that it never shows
in a repr, a log line or an exception message.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field

import httpx
from pydantic import SecretStr

from migrator.errors import ConfigError

__all__ = [
    "DEFAULT_SHARD",
    "DEFAULT_URL_TEMPLATE",
    "KNOWN_SHARDS",
    "URL_TEMPLATE_ENV",
    "ApiKey",
    "base_url_for",
    "parse_key",
]

DEFAULT_SHARD = "au1"
DEFAULT_URL_TEMPLATE = "https://api.{shard}.cliniko.com/v1"
URL_TEMPLATE_ENV = "MIGRATOR_API_URL"

#: Shards Cliniko lists, with the region a person would recognise.
KNOWN_SHARDS: dict[str, str] = {
    "au1": "Australia",
    "au2": "Australia",
    "au3": "Australia",
    "au4": "Australia",
    "ca1": "Canada",
    "uk1": "United Kingdom",
    "uk2": "United Kingdom",
    "eu1": "Europe",
    "us1": "United States",
}

_SHARD = re.compile(r"^[a-z]{2}[0-9]{1,2}$")
# Real keys are long base64-ish strings; we only insist on something key-like so
# that a pasted sentence or an empty field is caught before any request.
_BODY = re.compile(r"^[A-Za-z0-9_=+/.]{8,}$")


@dataclass(frozen=True)
class ApiKey:
    """A parsed API key: the secret, and the shard it belongs to.

    ``repr()`` and ``str()`` never show the secret; ``fingerprint`` is a short,
    stable, non-reversible tag for telling keys apart in logs and rate limiters.
    ``name`` is what Cliniko's refusals call the key ("the destination API key" where
    two are at hand); it plays no part in comparing keys.
    """

    secret: SecretStr
    shard: str
    name: str = field(default="API key", compare=False)

    @property
    def region(self) -> str:
        return KNOWN_SHARDS.get(self.shard, "an unlisted region")

    @property
    def fingerprint(self) -> str:
        digest = hashlib.sha256(self.secret.get_secret_value().encode()).hexdigest()
        return digest[:12]

    def __repr__(self) -> str:
        return f"ApiKey(shard={self.shard!r}, fingerprint={self.fingerprint!r})"

    __str__ = __repr__


def parse_key(raw: str | SecretStr, *, name: str = "API key") -> ApiKey:
    """Read the shard from a key's suffix.

    Args:
        raw: the key as pasted (surrounding whitespace is ignored).
        name: what the messages call it ("destination API key" where two are at hand), here
            and in Cliniko's refusals of it later (:attr:`ApiKey.name`).

    Returns:
        The key with its shard: the suffix after the last ``-`` when it is two
        letters and one or two digits, else ``au1`` for a key with no ``-``.

    Raises:
        ConfigError: the key is empty, has more than one ``-``, or its suffix is
            not a shard. The message describes the problem, never the key.

    >>> parse_key("abc123def456ghi789-uk1").shard
    'uk1'
    """
    value = (raw.get_secret_value() if isinstance(raw, SecretStr) else raw).strip()
    if not value:
        raise ConfigError(f"The {name} is empty: paste the key from Cliniko's Manage API keys page.")
    parts = value.split("-")
    if len(parts) == 1:
        body, shard = value, DEFAULT_SHARD
    elif len(parts) == 2:
        body, suffix = parts
        if not _SHARD.match(suffix.lower()):
            raise ConfigError(
                f"The {name}'s suffix is not a Cliniko shard: it has {len(suffix)} "
                f"character{'s' if len(suffix) != 1 else ''} after "
                "the '-', where a shard is two letters and one or two digits such as 'au1' or 'uk1'."
            )
        shard = suffix.lower()
    else:
        raise ConfigError(
            f"The {name} has {len(parts) - 1} '-' separators; a Cliniko key has at most one, "
            "before its shard suffix (for example '...-au1')."
        )
    if not _BODY.match(body):
        raise ConfigError(
            f"The {name} does not look like a Cliniko key: it should be one long run of "
            "letters and digits, optionally followed by a shard such as '-au1'."
        )
    return ApiKey(secret=SecretStr(value), shard=shard, name=name)


def base_url_for(shard: str, template: str | None = None) -> str:
    """The API's base URL for a shard.

    The template comes from the argument, else ``$MIGRATOR_API_URL``, else
    ``https://api.{shard}.cliniko.com/v1``; ``{shard}`` is replaced.
    """
    template = template or os.environ.get(URL_TEMPLATE_ENV) or DEFAULT_URL_TEMPLATE
    if "{shard}" not in template:
        raise ConfigError(
            f"The API URL template must contain '{{shard}}' (got {template!r}), "
            "for example 'http://127.0.0.1:8765/{shard}/v1'."
        )
    url = template.replace("{shard}", shard).rstrip("/")
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise ConfigError(f"The API URL template {template!r} is not a valid URL ({exc}).") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ConfigError(
            f"The API URL template {template!r} must be an http(s) address with a host, "
            "for example 'http://127.0.0.1:8765/{shard}/v1'."
        )
    return url
