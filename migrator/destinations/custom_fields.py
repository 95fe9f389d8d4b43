"""Patients' custom fields, carried from one Cliniko account to another by name.

Cliniko names a custom field by a token (a UUID) that belongs to the account: the
"Health fund" field of the source has one token, the destination's "Health Fund"
another, and the API cannot create definitions (settings are read-only, ``CLINIKO_API.md``
§4.1). So a patient's ``custom_fields`` are rewritten for the destination:

- a section matches the destination section of the same name, and a field the field
  of the same name *and type* within it; an option of checkboxes or radio buttons
  matches the option of the same name. Names compare as the mapping tables do
  (:func:`migrator.mapping.normalise_name`: case, spacing, accents).
- a field without a match is left out, so its values stay in the source; so is a chosen
  option without a match, and the free-text ``other`` where the destination field does
  not enable it. :attr:`CustomFields.unmatched` names them, and the transfer's preflight
  warns with it before any write: add them to the destination's settings and they come
  across.
- empty values are left out (Cliniko refuses an empty value); a radio field keeps one
  choice at most, and none when ``other`` is chosen, as Cliniko requires.

>>> fields = CustomFields(source_settings["patient_custom_fields_definition"],   # doctest: +SKIP
...                       dest_settings["patient_custom_fields_definition"])
>>> fields.translate(patient["custom_fields"])                                   # doctest: +SKIP
{'sections': [{'token': '...', 'fields': [{'token': '...', 'value': 'Bupa'}]}]}
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from migrator.mapping import normalise_name

__all__ = ["CustomFields"]

_VALUE_TYPES = ("text", "paragraph", "date")


@dataclass
class _Field:
    section: str  # the section's name, as the account spells it
    name: str
    type: str
    token: str
    section_token: str
    options: dict[str, str] = field(default_factory=dict)  # option token -> name
    other: bool = False  # whether "other" is enabled

    @property
    def label(self) -> str:
        return f"{self.section} › {self.name}"


def _fields(definition: Mapping[str, Any] | None) -> list[_Field]:
    out = []
    for section in (definition or {}).get("sections") or []:
        for f in section.get("fields") or []:
            out.append(
                _Field(
                    section=str(section.get("name") or ""),
                    name=str(f.get("name") or ""),
                    type=str(f.get("type") or ""),
                    token=str(f.get("token") or ""),
                    section_token=str(section.get("token") or ""),
                    options={str(o.get("token")): str(o.get("name") or "") for o in f.get("options") or []},
                    other=bool((f.get("other") or {}).get("enabled")),
                )
            )
    return out


def _key(section: str, name: str, kind: str) -> tuple[str, str, str]:
    return normalise_name(section), normalise_name(name), kind


class CustomFields:
    """The source account's patient custom fields, matched to the destination's.

    Args:
        source: the source's ``settings.patient_custom_fields_definition`` (``None``: none).
        destination: the destination's.
    """

    def __init__(self, source: Mapping[str, Any] | None, destination: Mapping[str, Any] | None) -> None:
        self._source = {f.token: f for f in _fields(source)}
        targets: dict[tuple[str, str, str], _Field] = {}
        for f in _fields(destination):
            targets.setdefault(_key(f.section, f.name, f.type), f)
        self._targets = targets
        unmatched = []
        for f in self._source.values():
            target = targets.get(_key(f.section, f.name, f.type))
            if target is None:
                unmatched.append(f"{f.label} ({f.type})")
                continue
            names = {normalise_name(n) for n in target.options.values()}
            unmatched += [f"{f.label}: {n}" for n in f.options.values() if normalise_name(n) not in names]
            if f.other and not target.other:
                unmatched.append(f"{f.label}: other")
        #: What the destination has no place for: ``"Section › Field (type)"`` for a
        #: field, ``"Section › Field: Option"`` for a choice, ``"...: other"`` for free text.
        self.unmatched: list[str] = unmatched

    def translate(self, values: Mapping[str, Any] | None) -> dict[str, Any] | None:
        """A source patient's ``custom_fields`` as the destination takes them; ``None`` if nothing is left."""
        sections: dict[str, list[dict[str, Any]]] = {}
        for entry, source, target, _ in self._entries(values):
            if target is None:
                continue
            written = self._field(entry, source, target)
            if written is not None:
                sections.setdefault(target.section_token, []).append(written)
        if not sections:
            return None
        return {"sections": [{"token": token, "fields": fields} for token, fields in sections.items()]}

    def left_behind(self, values: Mapping[str, Any] | None) -> list[str]:
        """A source patient's answers the destination has no place for, named as :attr:`unmatched` names them.

        ``"Section › Field"`` for an answered field the destination lacks, ``"Section ›
        Field: Option"`` for a chosen option it lacks, ``"...: other"`` for free text it
        does not enable. Unanswered fields are not named: nothing of the patient's is lost.
        """
        out: list[str] = []
        for entry, source, target, label in self._entries(values):
            chosen = [o for o in entry.get("options") or [] if o.get("selected")]
            other = bool((entry.get("other") or {}).get("selected"))
            value = entry.get("value")
            if not (chosen or other or (isinstance(value, str) and value.strip())):
                continue
            if target is None:
                out.append(label)
                continue
            names = {normalise_name(n) for n in target.options.values()}
            for option in chosen:
                name = (source.options.get(str(option.get("token"))) if source else None) or option.get(
                    "name"
                )
                if normalise_name(str(name or "")) not in names:
                    out.append(f"{label}: {name}")
            if other and not target.other:
                out.append(f"{label}: other")
        return out

    def _entries(
        self, values: Mapping[str, Any] | None
    ) -> Iterator[tuple[Mapping[str, Any], _Field | None, _Field | None, str]]:
        """Each answer of a patient's ``custom_fields``: its source field, its match here, and its label."""
        for section in (values or {}).get("sections") or []:
            for entry in section.get("fields") or []:
                source = self._source.get(str(entry.get("token")))
                # Cliniko's answer names each section and field; the definition names its options.
                section_name = source.section if source else str(section.get("name") or "")
                name = source.name if source else str(entry.get("name") or "")
                kind = source.type if source else str(entry.get("type") or "")
                yield (
                    entry,
                    source,
                    self._targets.get(_key(section_name, name, kind)),
                    f"{section_name} › {name}",
                )

    @staticmethod
    def _field(entry: Mapping[str, Any], source: _Field | None, target: _Field) -> dict[str, Any] | None:
        if target.type in _VALUE_TYPES:
            value = entry.get("value")
            if not isinstance(value, str) or not value.strip():
                return None
            return {"token": target.token, "value": value}
        by_name = {normalise_name(n): t for t, n in target.options.items()}
        chosen = []
        for option in entry.get("options") or []:
            if not option.get("selected"):
                continue
            token = str(option.get("token"))
            name = source.options.get(token) if source else None
            found = by_name.get(normalise_name(name or option.get("name")))
            if found is not None and found not in chosen:
                chosen.append(found)
        out: dict[str, Any] = {"token": target.token}
        other = entry.get("other") or {}
        if other.get("selected") and target.other:
            out["other"] = {
                "selected": True,
                **({"value": str(other["value"])[:255]} if other.get("value") else {}),
            }
            chosen = [] if target.type == "radiobuttons" else chosen
        if target.type == "radiobuttons":
            chosen = chosen[:1]
        if chosen:
            out["options"] = [{"token": t, "selected": True} for t in chosen]
        return out if len(out) > 1 else None
