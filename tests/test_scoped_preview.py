"""What a plan reads, for its scope: counted where a count is possible, estimated (and marked) where not."""

from __future__ import annotations

import math
import re

import polars as pl
import pytest

import migrator
from migrator.cliniko.filters import Filter
from migrator.errors import ConfigError
from migrator.plan import Scope
from migrator.preview import preview, read_requests
from migrator.scoped_preview import plan_entities, scoped_preview
from tests.conftest import RunningSandbox
from tests.test_engine import Env, env, sandbox  # noqa: F401 - fixtures


def test_all_data_is_counted_exactly_per_stage(tiny_sandbox: RunningSandbox) -> None:
    with tiny_sandbox.client() as client:
        result = scoped_preview(client)
        counts = preview(client).counts
    rows = {r["entity"]: r for r in result.frame.iter_rows(named=True)}
    assert list(rows) == plan_entities(None)
    assert rows["patients"]["records"] == counts["patients"] + counts["patients/archived"]
    assert rows["practitioners"]["records"] == counts["practitioners"] + counts["practitioners/inactive"]
    assert rows["invoice_items"]["records"] == counts["invoice_items"]
    assert rows["patients"]["requests"] == read_requests(counts["patients"]) + read_requests(
        counts["patients/archived"]
    )
    assert result.exact and result.requests == sum(r["requests"] for r in rows.values())
    assert result.estimated_minutes == 0.0  # the test client is unpaced
    assert result.expected()["individual_appointments"] == counts["individual_appointments"]


def test_a_business_filter_counts_what_it_can_and_estimates_the_rest(tiny_sandbox: RunningSandbox) -> None:
    with tiny_sandbox.client() as client:
        business = next(client.records("businesses")).id
        scope = Scope(kind="business", ids=[business])
        result = scoped_preview(client, scope, ["treatment_notes", "individual_appointments", "contacts"])
        at_business = client.count("individual_appointments", [Filter("business_id", "=", business)])
        everywhere = client.count("individual_appointments")
        contacts = client.count("contacts")
    frame = result.frame
    assert frame["entity"].to_list() == [
        "businesses",
        "practitioners",
        "appointment_types",
        "contacts",
        "patients",
        "individual_appointments",
        "treatment_notes",
    ]
    row = frame.filter(pl.col("entity") == "individual_appointments").row(0, named=True)
    assert (row["records"], row["exact"], row["how"]) == (at_business, True, "counted with the filter")
    assert frame.filter(pl.col("entity") == "contacts")["records"].to_list() == [contacts]
    estimated = frame.filter(~pl.col("exact"))["entity"].to_list()
    assert estimated == ["patients", "treatment_notes"] and not result.exact
    assert 0 < at_business < everywhere


def test_a_paced_key_says_how_many_minutes(tiny_sandbox: RunningSandbox) -> None:
    with tiny_sandbox.client(requests_per_minute=6000) as client:
        result = scoped_preview(client, include=["patients"])
    assert result.requests_per_minute == 6000
    assert result.estimated_minutes == math.ceil(result.requests / 6000 * 10) / 10 > 0


def test_what_follows_its_parent_says_so_in_words(tiny_sandbox: RunningSandbox) -> None:
    with tiny_sandbox.client() as client:
        business = next(client.records("businesses")).id
        scope = Scope(kind="business", ids=[business])
        result = scoped_preview(
            client, scope, ["group_appointments", "attendees", "invoices", "invoice_items"]
        )
    how = dict(result.frame.select("entity", "how").iter_rows())
    assert how["attendees"] == "estimated from the group appointments in scope"
    assert how["invoice_items"] == "estimated from the invoices in scope"


@pytest.mark.parametrize("kind", ["business", "practitioner"])
def test_the_run_brings_no_more_patients_than_the_estimates_bound(env: Env, kind: str) -> None:  # noqa: F811
    """The share of appointments is the estimate; patients seen at several businesses raise it, up to the bound."""
    first = next(env.source.records("businesses" if kind == "business" else "practitioners")).id
    scope = Scope(kind=kind, ids=[first])  # type: ignore[arg-type]
    result = scoped_preview(env.source, scope, ["medical_alerts", "individual_appointments"])
    run = env.run(env.plan(f"{kind}:{first}", include=["medical_alerts", "individual_appointments"]))
    for entity in ("patients", "medical_alerts"):
        row = result.frame.filter(pl.col("entity") == entity).row(0, named=True)
        high = int(
            re.search(r"up to ([\d,]+) if patients are seen at several", row["how"])[1].replace(",", "")
        )  # type: ignore[index]
        real = run.entities[entity]["in_scope"]
        assert 0 < real <= high, (entity, row["records"], real, high)
    if kind == "business":  # the demo's patients visit several of its businesses: the share is half the truth
        estimate = result.frame.filter(pl.col("entity") == "patients")["records"][0]
        assert run.entities["patients"]["in_scope"] > 1.5 * estimate


def test_a_transfer_preview_counts_the_cancellations_and_archives_it_sends(
    tiny_sandbox: RunningSandbox,
) -> None:
    """Into a Cliniko account each cancelled appointment or attendee, and each archived patient, is one write more."""

    def cancelled(resource: str, business: str | None = None) -> int:
        return sum(
            1
            for page in client.pages(resource)
            for raw in page.records
            if raw["cancelled_at"]
            and (business is None or raw["business"]["links"]["self"].endswith(f"/{business}"))
        )

    with tiny_sandbox.client() as client:
        business = next(client.records("businesses")).id
        scope = Scope(kind="business", ids=[business])
        plain = scoped_preview(client)
        whole = scoped_preview(client, count_follow_ups=True)
        scoped = scoped_preview(client, scope, count_follow_ups=True)
        archived = client.count("patients", route="archived")
        appointments, attendees = cancelled("individual_appointments"), cancelled("attendees")
        at_business = cancelled("individual_appointments", business)
        groups_at = client.count("group_appointments", [Filter("business_id", "=", business)])
        groups = client.count("group_appointments")
        ind_at = client.count("individual_appointments", [Filter("business_id", "=", business)])
        ind = client.count("individual_appointments")
    assert plain.follow_ups is None  # a preview for the local store does not ask
    assert whole.follow_ups == {
        "patients": archived,
        "individual_appointments": appointments,
        "attendees": attendees,
    }
    assert min(whole.follow_ups.values()) > 0  # the tiny clinic has some of each
    assert scoped.follow_ups is not None
    counted = scoped.follow_ups["individual_appointments"]
    assert counted == at_business < appointments  # counted with the filter
    # As the attendees and the patients are: from the share of group (or all) appointments in scope.
    assert scoped.follow_ups["attendees"] == math.ceil(attendees * groups_at / groups)
    share = (ind_at + groups_at) / (ind + groups)
    assert scoped.follow_ups["patients"] == math.ceil(archived * share)


def test_a_plan_without_patients_is_previewed_under_any_filter(tiny_sandbox: RunningSandbox) -> None:
    with tiny_sandbox.client() as client:
        business = next(client.records("businesses")).id
        contacts = client.count("contacts")
        for scope in (None, Scope(kind="business", ids=[business])):
            result = scoped_preview(client, scope, ["contacts"])
            assert "patients" not in result.frame["entity"].to_list()
            assert result.frame.filter(pl.col("entity") == "contacts")["records"].to_list() == [contacts]


def test_a_notebook_previews_a_filtered_run_with_the_runs_own_words(tiny_sandbox: RunningSandbox) -> None:
    """``migrator.scoped_preview`` takes ``run``'s strings: ``scope="business:ID"``, ``include="..."``."""
    with tiny_sandbox.client() as client:
        business = next(client.records("businesses")).id
        at_business = client.count("individual_appointments", [Filter("business_id", "=", business)])
        result = migrator.scoped_preview(
            client, scope=f"business:{business}", include="individual_appointments"
        )
        assert isinstance(result, migrator.ScopedPreview)
        rows = {r["entity"]: r for r in result.frame.iter_rows(named=True)}
        assert list(rows) == [
            "businesses",
            "practitioners",
            "appointment_types",
            "patients",
            "individual_appointments",
        ]
        assert (rows["individual_appointments"]["records"], rows["individual_appointments"]["exact"]) == (
            at_business,
            True,
        )
        assert rows["patients"]["exact"] is False  # estimated from the appointments in scope
        with pytest.raises(
            ConfigError, match=r"has no business with the id 999, so the filter would bring nothing"
        ):
            migrator.scoped_preview(client, scope="business:999")
        with pytest.raises(ConfigError, match=r"^Unknown data type 'patientz'"):
            migrator.scoped_preview(client, include="patientz")
    # A notebook cell run again after its `with` block ended: a sentence, not httpx's RuntimeError.
    with pytest.raises(ConfigError) as closed:
        migrator.scoped_preview(client)
    assert str(closed.value).startswith("Cannot send GET /")
    assert str(closed.value).endswith(
        "this Cliniko client was closed (its `with` block ended); open a new one."
    )
