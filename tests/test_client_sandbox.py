"""The client against the sandbox as a real server: every record once, filters, pacing, faults, models."""

from __future__ import annotations

import math
import time
from collections import Counter
from datetime import UTC, datetime

import httpx
import pytest

from migrator.cliniko.client import ClientConfig, ClinikoClient
from migrator.cliniko.filters import Filter, ids_in
from migrator.cliniko.models import parse_record
from migrator.errors import AuthError
from migrator.preview import SOURCE_LISTS, list_key
from tests.conftest import RunningSandbox

DELETED_LISTS = (
    ("patients", "deleted"),
    ("individual_appointments", "deleted"),
    ("individual_appointments", "cancelled"),
    ("medical_alerts", "deleted"),
    ("treatment_notes", "deleted"),
    ("invoices", "deleted"),
)


def read_all(client, resource: str, route: str | None = None, filters=()) -> list[dict]:
    return [r for page in client.pages(resource, filters, route=route) for r in page.records]


def test_every_record_is_seen_exactly_once_across_pages(demo_sandbox: RunningSandbox) -> None:
    totals = demo_sandbox.totals()
    with demo_sandbox.client(concurrency=4) as client:
        for resource, route in SOURCE_LISTS:
            records = read_all(client, resource, route)
            ids = Counter(str(r["id"]) for r in records)
            assert len(records) == totals[list_key(resource, route)], list_key(resource, route)
            assert all(n == 1 for n in ids.values()), f"{list_key(resource, route)} repeats records"
            expected_requests = max(1, math.ceil(len(records) / 100))
            assert expected_requests >= 1
    # A large list actually spans pages, so the test means something.
    assert totals["individual_appointments"] > 1000


def test_reads_cost_one_request_per_page(demo_sandbox: RunningSandbox) -> None:
    with demo_sandbox.client(concurrency=4) as client:
        before = client.stats.requests
        records = read_all(client, "individual_appointments")
        assert client.stats.requests - before == math.ceil(len(records) / 100)


def test_filters_of_each_kind_match_a_local_computation(demo_sandbox: RunningSandbox) -> None:
    with demo_sandbox.client(concurrency=4) as client:
        appointments = read_all(client, "individual_appointments")
        patients = read_all(client, "patients")

        def ids(records: list[dict]) -> set[str]:
            return {str(r["id"]) for r in records}

        def link_id(record: dict, rel: str) -> str:
            return record[rel]["links"]["self"].rstrip("/").rsplit("/", 1)[-1]

        # DateTime
        cut = "2026-06-01T00:00:00Z"
        got = ids(read_all(client, "individual_appointments", filters=[Filter("starts_at", ">=", cut)]))
        assert got == {str(a["id"]) for a in appointments if a["starts_at"] >= cut} and got
        # Integer list and !=
        practitioners = sorted({link_id(a, "practitioner") for a in appointments})[:2]
        got = ids(
            read_all(
                client, "individual_appointments", filters=[Filter("practitioner_id", "=", practitioners)]
            )
        )
        assert (
            got == {str(a["id"]) for a in appointments if link_id(a, "practitioner") in practitioners} and got
        )
        one = link_id(appointments[0], "patient")
        got = ids(read_all(client, "individual_appointments", filters=[Filter("patient_id", "!=", one)]))
        assert got == {str(a["id"]) for a in appointments if link_id(a, "patient") != one}
        # AND of two filters
        got = ids(
            read_all(
                client,
                "individual_appointments",
                filters=[Filter("practitioner_id", "=", practitioners[0]), Filter("starts_at", "<", cut)],
            )
        )
        assert got == {
            str(a["id"])
            for a in appointments
            if link_id(a, "practitioner") == practitioners[0] and a["starts_at"] < cut
        }
        # Date, with the wildcard
        got = ids(read_all(client, "patients", filters=[Filter("date_of_birth", "=", "****-05-**")]))
        assert (
            got == {str(p["id"]) for p in patients if p["date_of_birth"] and p["date_of_birth"][5:7] == "05"}
            and got
        )
        # String: contains, LIKE, equals
        got = ids(read_all(client, "patients", filters=[Filter("last_name", "~", "son")]))
        assert got == {str(p["id"]) for p in patients if "son" in p["last_name"].lower()}
        got = ids(read_all(client, "patients", filters=[Filter("first_name", "~~", "A%")]))
        assert got == {str(p["id"]) for p in patients if p["first_name"].lower().startswith("a")}
        name = patients[0]["last_name"]
        got = ids(read_all(client, "patients", filters=[Filter("last_name", "=", name)]))
        assert got == {str(p["id"]) for p in patients if p["last_name"] == name}
        # A long id list, chunked into several queries, still finds every record once.
        wanted = [str(p["id"]) for p in patients[:300]]
        found: list[str] = []
        for flt in ids_in("id", wanted):
            found += [str(p["id"]) for p in read_all(client, "patients", filters=[flt])]
        assert sorted(found) == sorted(wanted)


def test_count_matches_a_full_read(demo_sandbox: RunningSandbox) -> None:
    with demo_sandbox.client() as client:
        flt = [Filter("updated_at", ">", "2025-01-01T00:00:00Z")]
        assert client.count("individual_appointments", flt) == len(
            read_all(client, "individual_appointments", filters=flt)
        )


def test_counts_of_many_lists_stop_at_the_first_refusal(demo_sandbox: RunningSandbox) -> None:
    """Counting every list with a key Cliniko refuses costs one round of requests, not one per list."""
    lists = [(name, (), route) for name, route in SOURCE_LISTS]
    with demo_sandbox.client() as client:
        assert client.counts(lists) == [demo_sandbox.totals()[list_key(n, r)] for n, _, r in lists]

    shard = demo_sandbox.account("source")["shard"]
    unknown = f"MSthisKeyDoesNotExistAnywhere0123456789-{shard}"
    config = ClientConfig(url_template=demo_sandbox.url_template)  # paced at Cliniko's 200 a minute
    with ClinikoClient(unknown, config=config) as client, pytest.raises(AuthError):
        client.counts(lists)
    # The lists already taken up when the first 401 came back (one per worker, and one more
    # taken by the worker that got it), never the other 17.
    assert client.stats.requests <= config.concurrency + 1 < len(lists)


def test_a_client_paced_at_the_limit_is_not_refused(sandbox_factory) -> None:
    """Sandbox limited to N per window, client paced at N per window: no 429 after the first window."""
    limit, window = 20, 2.0
    sandbox = sandbox_factory(size="tiny", seed=5, rate_limit=limit, rate_window=window)
    with sandbox.client(requests_per_minute=limit, rate_window=window, concurrency=4) as client:
        client.count("patients")  # warm the connection pool
        first_window_end = time.monotonic() + window
        sent_after = 0
        deadline = time.monotonic() + 4 * window
        refused_after_first = 0
        while time.monotonic() < deadline:
            before = client.stats.rate_limited
            client.count("patients")
            if time.monotonic() > first_window_end:
                sent_after += 1
                refused_after_first += client.stats.rate_limited - before
        assert refused_after_first == 0
        achieved = sent_after / (3 * window) * window  # requests per window after the first
        assert achieved >= 0.8 * limit  # it used the budget, not merely avoided it


def test_a_client_faster_than_the_limit_waits_for_the_reset(sandbox_factory) -> None:
    limit, window = 5, 2.0
    sandbox = sandbox_factory(size="tiny", seed=5, rate_limit=limit, rate_window=window)
    with sandbox.client(requests_per_minute=0, concurrency=1) as client:  # unpaced: it will hit the limit
        # The sandbox counts in fixed windows: 2 * limit + 1 requests within two windows must meet a 429
        # even when a window boundary falls in the middle of them (limit + 3 did not, on a slow machine).
        for _ in range(2 * limit + 1):
            assert client.count("patients") >= 0
        assert client.stats.rate_limited >= 1  # it was told to wait, waited, and every count succeeded


def test_recovers_from_every_fault_kind_with_nothing_lost_or_duplicated(
    demo_sandbox: RunningSandbox, sandbox_factory
) -> None:
    faulty = sandbox_factory(size="demo", seed=1, rate_limit=0, faults=0.25, stall=1.5)
    lists = [
        ("patients", None),
        ("individual_appointments", None),
        ("invoices", None),
        ("treatment_notes", None),
    ]
    with (
        demo_sandbox.client() as clean,
        faulty.client(timeout=0.5, concurrency=4, retry=_patient_retries()) as client,
    ):
        for resource, route in lists:
            expected = sorted(str(r["id"]) for r in read_all(clean, resource, route))
            got = sorted(str(r["id"]) for r in read_all(client, resource, route))
            assert got == expected, resource
        failures = client.stats.failures
    assert failures.get("timed out", 0) >= 1
    assert failures.get("connection dropped mid-response", 0) >= 1
    assert failures.get("HTTP 502", 0) + failures.get("HTTP 503", 0) >= 1
    stats = httpx.get(faulty.url_template.split("/{shard}")[0] + "/_sandbox/stats", timeout=5).json()
    injected = _fault_counts(stats)
    for kind in ("502", "503", "stall", "drop", "truncate"):
        assert any(kind in name and count > 0 for name, count in injected.items()), (kind, injected)


def _patient_retries():
    from migrator.cliniko.transport import RetryPolicy

    return RetryPolicy(attempts=10, backoff_base=0.01, backoff_max=0.05)


def _fault_counts(stats: dict) -> dict[str, int]:
    """Fault counters from /_sandbox/stats, wherever the sandbox nests them."""
    found: dict[str, int] = {}

    def walk(node: object, path: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{path}.{key}" if path else str(key))
        elif isinstance(node, int) and "fault" in path:
            found[path] = found.get(path, 0) + node

    walk(stats, "")
    return found


@pytest.mark.parametrize("ids", ["str", "int"])
def test_models_validate_every_record_served_in_both_id_forms(sandbox_factory, ids: str) -> None:
    sandbox = sandbox_factory(size="demo", seed=1, rate_limit=0, ids=ids)
    with sandbox.client(concurrency=4) as client:
        seen = 0
        for resource, route in SOURCE_LISTS + DELETED_LISTS:
            for raw in read_all(client, resource, route):
                if resource == "patients" and route == "deleted":
                    continue  # stubs with only deleted_at and a link: parsed by DeletedPatient below
                record = parse_record(resource, raw)
                assert record.id == str(raw["id"])
                seen += 1
        assert seen > 5000
        big = [
            r for r in read_all(client, "practitioners") if int(parse_record("practitioners", r).id) > 2**53
        ]
        assert big, "the sandbox serves ids above 2**53"


def test_identity_of_each_role(demo_sandbox: RunningSandbox) -> None:
    expected = {
        "source": (True, True),
        "source_non_admin": (False, False),
        "destination": (True, True),
        "destination_admin_not_practitioner": (True, False),
    }
    for role, (admin, practitioner) in expected.items():
        with demo_sandbox.client(role) as client:
            identity = client.identity()
        account = demo_sandbox.account(role)
        assert (identity.is_admin, identity.is_practitioner) == (admin, practitioner), role
        assert (account["is_admin"], account["is_practitioner"]) == (admin, practitioner), role
        assert identity.account == account["name"]
        assert identity.shard == account["shard"]


def test_writes_are_refused_by_the_source_client_and_the_sandbox_is_untouched(
    demo_sandbox: RunningSandbox,
) -> None:
    from migrator.errors import ReadOnlyError

    with demo_sandbox.client() as client:
        before = client.count("patients")
        with pytest.raises(ReadOnlyError):
            client.post("/patients", {"first_name": "Should", "last_name": "Never"})
        assert client.count("patients") == before


def test_datetime_filter_accepts_aware_datetimes(demo_sandbox: RunningSandbox) -> None:
    with demo_sandbox.client() as client:
        since = datetime(2025, 1, 1, tzinfo=UTC)
        assert client.count("patients", [Filter("created_at", ">=", since)]) <= client.count("patients")
