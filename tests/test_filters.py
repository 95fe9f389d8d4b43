"""q[] filters: documented fields and operators only, values in Cliniko's formats, id lists chunked."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

import pytest

from migrator.cliniko.filters import Filter, chunk_ids, ids_in, query_params
from migrator.errors import ConfigError


def test_each_operator_kind_renders() -> None:
    params = query_params(
        "individual_appointments",
        [
            Filter("starts_at", ">=", datetime(2024, 3, 4, 20, 37, 17, tzinfo=UTC)),
            Filter("updated_at", "<", "2024-01-01T00:00:00Z"),
            Filter("practitioner_id", "=", ["514810972972521916", 7]),
            Filter("patient_id", "!=", 12),
        ],
    )
    assert params == [
        ("q[]", "starts_at:>=2024-03-04T20:37:17Z"),
        ("q[]", "updated_at:<2024-01-01T00:00:00Z"),
        ("q[]", "practitioner_id:=514810972972521916,7"),
        ("q[]", "patient_id:!=12"),
    ]
    assert query_params("patients", [Filter("date_of_birth", "=", "****-05-**")]) == [
        ("q[]", "date_of_birth:=****-05-**")
    ]
    assert query_params("patients", [Filter("date_of_birth", ">", date(1990, 1, 2))]) == [
        ("q[]", "date_of_birth:>1990-01-02")
    ]
    assert query_params("patients", [Filter("last_name", "~~", "O'%")]) == [("q[]", "last_name:~~O'%")]
    assert query_params("patients", [Filter("email", "~", "@example")]) == [("q[]", "email:~@example")]


def test_datetimes_are_converted_to_utc() -> None:
    melbourne = timezone(timedelta(hours=11))
    rendered = Filter("updated_at", ">", datetime(2024, 1, 1, 11, 0, tzinfo=melbourne)).render("patients")
    assert rendered == "updated_at:>2024-01-01T00:00:00Z"


@pytest.mark.parametrize(
    ("resource", "flt", "says"),
    [
        ("patients", Filter("practitioner_id", "=", 1), "cannot filter patients by 'practitioner_id'"),
        ("patients", Filter("updated_at", "=", "2024-01-01T00:00:00Z"), "cannot use '='"),
        ("patients", Filter("first_name", ">", "A"), "cannot use '>'"),
        ("patients", Filter("updated_at", ">", "2024-01-01T00:00:00"), "end in 'Z'"),
        ("patients", Filter("updated_at", ">", datetime(2024, 1, 1)), "time zone"),
        ("patients", Filter("id", "=", 1.5), "whole numbers"),
        ("patients", Filter("id", "=", "12a"), "whole numbers"),
        ("patients", Filter("first_name", "=", ["a", "b"]), "only allowed with '='"),
        ("patients", Filter("id", "=", []), "at least one id"),
    ],
)
def test_bad_filters_are_refused_before_any_request(resource: str, flt: Filter, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        flt.render(resource)


def test_parse_reads_command_line_filters() -> None:
    assert Filter.parse("updated_at:>=2024-01-01T00:00:00Z") == Filter(
        "updated_at", ">=", "2024-01-01T00:00:00Z"
    )
    assert Filter.parse("last_name:~~Sm%th") == Filter("last_name", "~~", "Sm%th")
    assert Filter.parse("id:!=3") == Filter("id", "!=", "3")
    with pytest.raises(ConfigError):
        Filter.parse("no-colon")


def test_id_lists_are_chunked_and_deduplicated() -> None:
    ids = [str(514810972972521916 + i) for i in range(500)] + ["514810972972521916"]
    chunks = chunk_ids(ids, max_chars=1500)
    assert [i for chunk in chunks for i in chunk] == ids[:500]  # every id once, in order
    assert all(len(",".join(chunk)) <= 1500 for chunk in chunks)
    assert len(chunks) == 7  # 18-digit ids: 78 per 1,500 characters
    full = chunk_ids(ids)  # the defaults: one page of long ids per query
    assert [len(c) for c in full] == [100] * 5
    short = chunk_ids(range(1, 1001))
    assert [len(c) for c in short] == [100] * 10
    filters = ids_in("patient_id", ids)
    assert len(filters) == len(full)
    assert (
        filters[0]
        .render("individual_appointments")
        .startswith("patient_id:=514810972972521916,514810972972521917,")
    )
    assert chunk_ids([]) == []
