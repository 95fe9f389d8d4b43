"""Patients' custom fields between two Cliniko accounts: matching by name, and the sandbox's write rules."""

from __future__ import annotations

from typing import Any

import pytest

from migrator.destinations.custom_fields import CustomFields
from migrator.sandbox.writes import custom_fields as sandbox_check

SOURCE = {
    "sections": [
        {
            "name": "Health fund",
            "token": "s-sec",
            "fields": [
                {"name": "Health fund name", "type": "text", "token": "s-fund"},
                {"name": "Member since", "type": "date", "token": "s-since"},
                {
                    "name": "How did you hear about us?",
                    "type": "radiobuttons",
                    "token": "s-heard",
                    "options": [
                        {"name": "Google", "token": "s-google"},
                        {"name": "A friend", "token": "s-friend"},
                    ],
                    "other": {"enabled": True},
                },
                {
                    "name": "Interests",
                    "type": "checkboxes",
                    "token": "s-int",
                    "options": [
                        {"name": "Pilates", "token": "s-pil"},
                        {"name": "Yoga", "token": "s-yoga"},
                        {"name": "Running", "token": "s-run"},
                    ],
                },
                {"name": "Locker number", "type": "text", "token": "s-locker"},
            ],
        }
    ]
}

# The clinic set the destination up by hand: other tokens, other case and spacing, one
# field missing, one option missing, "Member since" as text rather than a date.
DESTINATION = {
    "sections": [
        {
            "name": "HEALTH  FUND",
            "token": "d-sec",
            "fields": [
                {"name": "health fund name", "type": "text", "token": "d-fund"},
                {"name": "Member since", "type": "text", "token": "d-since"},
                {
                    "name": "How did you hear about us?",
                    "type": "radiobuttons",
                    "token": "d-heard",
                    "options": [
                        {"name": "A Friend", "token": "d-friend"},
                        {"name": "Google", "token": "d-google"},
                    ],
                    "other": {"enabled": True},
                },
                {
                    "name": "Interests",
                    "type": "checkboxes",
                    "token": "d-int",
                    "options": [{"name": "Yoga", "token": "d-yoga"}, {"name": "Pilates", "token": "d-pil"}],
                },
            ],
        }
    ]
}


def answer(*fields: dict[str, Any]) -> dict[str, Any]:
    """A source patient's custom_fields as Cliniko answers them (names and types included)."""
    return {"sections": [{"token": "s-sec", "name": "Health fund", "fields": list(fields)}]}


def test_fields_match_by_name_and_type_and_options_by_name() -> None:
    fields = CustomFields(SOURCE, DESTINATION)
    written = fields.translate(
        answer(
            {"token": "s-fund", "name": "Health fund name", "type": "text", "value": "Bupa"},
            {"token": "s-since", "name": "Member since", "type": "date", "value": "2019-03-01"},
            {
                "token": "s-heard",
                "name": "How did you hear about us?",
                "type": "radiobuttons",
                "options": [{"token": "s-friend", "selected": True}],
            },
            {
                "token": "s-int",
                "name": "Interests",
                "type": "checkboxes",
                "options": [
                    {"token": "s-pil", "selected": True},
                    {"token": "s-run", "selected": True},
                    {"token": "s-yoga", "selected": False},
                ],
            },
            {"token": "s-locker", "name": "Locker number", "type": "text", "value": "12"},
        )
    )
    assert written == {
        "sections": [
            {
                "token": "d-sec",
                "fields": [
                    {"token": "d-fund", "value": "Bupa"},
                    {"token": "d-heard", "options": [{"token": "d-friend", "selected": True}]},
                    {"token": "d-int", "options": [{"token": "d-pil", "selected": True}]},
                ],
            }
        ]
    }
    # What has no place in the destination is named, for the preflight's warning.
    assert fields.unmatched == [
        "Health fund › Member since (date)",
        "Health fund › Interests: Running",
        "Health fund › Locker number (text)",
    ]
    # ... and so is what one patient answered there, for their item; a field left empty is not.
    left = fields.left_behind(
        answer(
            {"token": "s-since", "name": "Member since", "type": "date", "value": "2019-03-01"},
            {
                "token": "s-int",
                "name": "Interests",
                "type": "checkboxes",
                "options": [{"token": "s-pil", "selected": True}, {"token": "s-run", "selected": True}],
            },
            {"token": "s-locker", "name": "Locker number", "type": "text", "value": " "},
            {
                "token": "s-heard",
                "name": "How did you hear about us?",
                "type": "radiobuttons",
                "options": [],
                "other": {"selected": True, "value": "Radio ad"},
            },
        )
    )
    assert left == ["Health fund › Member since", "Health fund › Interests: Running"]
    assert CustomFields(SOURCE, {"sections": []}).left_behind(answer(
        {"token": "s-heard", "name": "How did you hear about us?", "type": "radiobuttons",
         "options": [], "other": {"selected": True, "value": "Radio ad"}}
    )) == ["Health fund › How did you hear about us?"]  # fmt: skip
    # The destination's definition is checked as Cliniko checks it: the translation passes.
    assert sandbox_check(written, DESTINATION) is not None


def test_other_empty_values_and_radio_rules() -> None:
    fields = CustomFields(SOURCE, DESTINATION)
    other = {"token": "s-heard", "name": "How did you hear about us?", "type": "radiobuttons",
             "options": [{"token": "s-google", "selected": True}],
             "other": {"selected": True, "value": "Radio ad"}}  # fmt: skip
    written = fields.translate(answer(other))
    assert written == {
        "sections": [
            {
                "token": "d-sec",
                "fields": [{"token": "d-heard", "other": {"selected": True, "value": "Radio ad"}}],
            }
        ]
    }
    assert sandbox_check(written, DESTINATION) is not None
    # Empty answers and unanswered choices send nothing; no answers at all send no custom_fields.
    assert fields.translate(answer({"token": "s-fund", "type": "text", "value": "  "})) is None
    assert fields.translate(answer({"token": "s-heard", "type": "radiobuttons", "options": []})) is None
    assert fields.translate(None) is None and fields.translate({"sections": []}) is None


def test_without_the_source_definition_names_come_from_the_answer() -> None:
    fields = CustomFields(None, DESTINATION)
    assert fields.unmatched == []
    written = fields.translate(
        answer(
            {"token": "unknown", "name": "Health Fund Name", "type": "text", "value": "HCF"},
            # Choices named only by the source's token cannot be matched without its definition.
            {
                "token": "s-heard",
                "name": "How did you hear about us?",
                "type": "radiobuttons",
                "options": [{"token": "s-google", "selected": True}],
            },
        )
    )
    assert written == {"sections": [{"token": "d-sec", "fields": [{"token": "d-fund", "value": "HCF"}]}]}


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ({"sections": [{"token": "s-sec", "fields": []}]}, "section token"),
        ({"sections": [{"token": "d-sec", "fields": [{"token": "s-fund", "value": "x"}]}]}, "field token"),
        ({"sections": [{"token": "d-sec", "fields": [{"token": "d-fund", "value": ""}]}]}, "empty value"),
        ({"sections": [{"token": "d-sec", "fields": [{"token": "d-fund", "options": []}]}]}, "not options"),
        ({"sections": [{"token": "d-sec", "fields": [{"token": "d-heard", "value": "x"}]}]}, "not a value"),
        (
            {"sections": [{"token": "d-sec", "fields": [{"token": "d-heard", "options": [
                {"token": "d-friend", "selected": True}, {"token": "d-google", "selected": True}]}]}]},
            "one choice at most",
        ),
        (
            {"sections": [{"token": "d-sec", "fields": [{"token": "d-int", "other": {"selected": True}}]}]},
            "does not enable other",
        ),
        (
            {"sections": [{"token": "d-sec", "fields": [{"token": "d-heard", "other": {"selected": False, "value": "x"}}]}]},
            "only allowed when other is selected",
        ),
        ({"sections": [{"token": "d-sec", "fields": [{"token": "d-int", "options": [{"token": "s-pil", "selected": True}]}]}]}, "option token"),
    ],
)  # fmt: skip
def test_the_sandbox_refuses_what_cliniko_refuses(value: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        sandbox_check(value, DESTINATION)


def test_the_sandbox_stores_names_and_types_as_cliniko_answers() -> None:
    stored = sandbox_check(
        {"sections": [{"token": "d-sec", "fields": [{"token": "d-fund", "value": "nib"}]}]}, DESTINATION
    )
    assert stored == {
        "sections": [
            {
                "token": "d-sec",
                "name": "HEALTH  FUND",
                "fields": [{"token": "d-fund", "name": "health fund name", "type": "text", "value": "nib"}],
            }
        ]
    }
