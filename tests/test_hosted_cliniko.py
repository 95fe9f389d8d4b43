"""Hosted instances writing into another Cliniko account: leased keys, the pre-flight, go-live and deletion.

A clinic of ``tests.hosted_clinics`` transfers into the sandbox's destination account, as a
hosted session does (the library calls the Connect, Run and Batches pages make).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from migrator.background import RunRegistry
from migrator.cliniko.client import ClinikoClient
from migrator.console import ClinikoKeys, ConsoleSettings
from migrator.errors import ConfigError
from migrator.hosted import (
    CLINIC,
    KeyLease,
    NotAllowed,
    connect_cliniko_destination,
    delete_as,
    drop_all,
    go_live_as,
    plan_for_tenant,
    resume_as,
    sign_in_clinic,
    visible_batches,
)
from migrator.ledger import Ledger
from migrator.plan import Scope
from migrator.workflow import auto_mapping, make_plan, verify_source
from tests.hosted_clinics import Clinics, running_clinics, tenant_of, wait_until

SOURCE = 3


@pytest.fixture(scope="module")
def clinics() -> Iterator[Clinics]:
    with running_clinics((SOURCE, 4)) as running:
        yield running


def test_a_clinic_transfers_into_another_cliniko_account_goes_live_and_deletes(
    clinics: Clinics, tmp_path: Path
) -> None:
    settings = ConsoleSettings(tmp_path, 0, mode="hosted", api_url=clinics.url_template)
    key = SecretStr(clinics.key(SOURCE))
    dest_key = SecretStr(clinics.key(SOURCE, "destination"))
    admin_only = SecretStr(clinics.key(SOURCE, "destination_admin_not_practitioner"))
    with Ledger(tmp_path) as ledger:
        alice = sign_in_clinic(ledger, key, clinics.config()).principal
        bea = sign_in_clinic(ledger, SecretStr(clinics.key(4)), clinics.config()).principal
        owner = sign_in_clinic(ledger, dest_key, clinics.config()).principal  # the destination's own clinic
    source = KeyLease(key, tenant_of(SOURCE))

    # An administrator who is no practitioner cannot author notes: refused, and no key is kept.
    refused, nothing = connect_cliniko_destination(settings, alice, source, admin_only)
    assert not refused.ok and nothing is None
    assert any("practitioner" in r for r in refused.preflight.refusals)

    check, dest = connect_cliniko_destination(
        settings, alice, source, dest_key, [SecretStr(clinics.key(SOURCE, "destination_practitioner"))]
    )
    assert check.ok and dest is not None and check.note_authors == 1
    assert dest.tenant == owner.tenant != alice.tenant and check.target == f"cliniko:{owner.tenant}"
    assert len(dest.extra) == 1

    with ClinikoClient(dest_key, config=clinics.config()) as reader:
        appointments_before = reader.count("individual_appointments")
        patients_before = reader.count("patients")
    keys = ClinikoKeys(dest_key, dest.extra)
    with settings.open_cliniko(keys, source_key=key) as (_, destination), settings.client(key) as client:
        rows = auto_mapping(client, destination)
        first = next(r.target_id for r in rows if r.entity == "practitioners" and r.action == "map")
        rows = [
            r.model_copy(update={"action": "reassign", "target_id": first})
            if r.action == "unresolved" and r.entity == "practitioners"
            else r
            for r in rows
        ]
        plan = make_plan(client, verify_source(client), destination, scope=Scope.parse("all"), mappings=rows)
    plan = plan_for_tenant(plan, alice.tenant or "")
    registry = RunRegistry()
    handle = registry.start(
        plan,
        key,
        workspace=tmp_path,
        client_config=clinics.config(),
        actor=alice.actor,
        role=alice.role,
        on_end=drop_all(source, dest),
        destination_keys=keys,
    )
    assert handle.wait(180) and handle.state == "completed", handle.error
    wait_until(lambda: source.dropped and dest.dropped)  # both accounts' keys go when the run ends
    assert dest.extra == ()
    batch_id = handle.batch_id or ""
    created = handle.result.entities["patients"]["created"] if handle.result else 0
    assert created > 0

    with Ledger(tmp_path) as ledger:
        # The batch belongs to both accounts: the destination's own clinic sees it, another clinic not.
        assert [b.id for b in visible_batches(ledger, alice)] == [batch_id]
        assert [b.id for b in visible_batches(ledger, owner)] == [batch_id]
        assert visible_batches(ledger, bea) == []
        # Resuming it needs the destination's keys again; the dropped lease is not enough.
        with pytest.raises(ConfigError, match="connect that account's key as the destination"):
            resume_as(
                ledger,
                registry,
                alice,
                batch_id,
                KeyLease(key, alice.tenant or ""),
                workspace=tmp_path,
                client_config=clinics.config(),
                destination=dest,
            )

    # Going live and deleting take an administrator's key of the destination account, checked then.
    with pytest.raises(NotAllowed, match="another Cliniko account"):
        go_live_as(settings, alice, batch_id, key)
    live = go_live_as(settings, alice, batch_id, admin_only)
    assert live.restored == created and not live.gone
    with pytest.raises(NotAllowed, match="another Cliniko account"):
        delete_as(settings, alice, batch_id, key)
    done = delete_as(settings, alice, batch_id, admin_only)
    assert len(done.created["patients"]) == created
    with ClinikoClient(dest_key, config=clinics.config()) as reader:
        assert reader.count("individual_appointments") == appointments_before
        assert reader.count("patients") == patients_before  # the batch's patients are archived
        assert reader.count("patients", route="archived") >= created

    with Ledger(tmp_path) as ledger:
        assert ledger.batch(batch_id).status == "deleted"
        trail = [
            (e["action"], e["tenant"], e["role"], e["actor"])
            for e in ledger.audit_log(tenant=alice.tenant)
            if e["action"] in ("preflight", "go_live", "go_live_refused", "delete_refused", "deleted")
        ]
    assert trail == [
        ("preflight", alice.tenant, CLINIC, alice.actor),
        ("preflight", alice.tenant, CLINIC, alice.actor),
        ("go_live_refused", alice.tenant, CLINIC, alice.actor),
        ("go_live", alice.tenant, CLINIC, alice.actor),
        ("delete_refused", alice.tenant, CLINIC, alice.actor),
        ("deleted", alice.tenant, CLINIC, alice.actor),
    ]
