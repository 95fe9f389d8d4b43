"""The ``/settings`` object: one per account, no id, loosely typed."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator

from migrator.cliniko.models._base import ClinikoId


class SettingsAccount(BaseModel):
    """``settings.account``; ``email_from`` and ``admin`` are in the full version only."""

    model_config = ConfigDict(extra="allow")

    id: ClinikoId | None = None
    name: str | None = None
    country: str | None = None
    time_zone: str | None = None  # Rails name, e.g. "Eastern Time (US & Canada)"
    currency_symbol: str | None = None
    subdomain: str | None = None
    email_from: str | None = None
    admin: dict[str, Any] | None = None


class Settings(BaseModel):
    """The ``/settings`` (or ``/settings/public``) object, loosely typed: every key is kept."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    terminology: dict[str, Any] | None = None
    account: SettingsAccount | None = None
    calendar: dict[str, Any] | None = None
    online_bookings: dict[str, Any] | None = None
    patient_custom_fields_definition: dict[str, Any] | None = None
    reminders: dict[str, Any] | None = None
    links_self: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _read_links(cls, data: Any) -> Any:
        # /settings links to /settings/public as its self (§6.12); kept as given.
        if type(data) is dict and "links" in data:
            links = data["links"]
            data = {k: v for k, v in data.items() if k != "links"}
            if type(links) is dict and "links_self" not in data:
                data["links_self"] = links.get("self")
        return data
