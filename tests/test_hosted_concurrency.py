"""Three clinics at once on a hosted instance: each its own API budget, store and batch, none slowed by the others."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
from pydantic import SecretStr

from migrator.background import RunRegistry
from migrator.hosted import KeyLease, sign_in_clinic, visible_batches
from migrator.ledger import Ledger
from tests.hosted_clinics import hosted_plan, running_clinics, store_target, tenant_of

SEEDS = (3, 4, 5)
PACE = 240  # requests a minute per key: a tiny clinic's ~23 requests take about 6 s


def test_three_clinics_run_at_once_each_on_its_own_budget(tmp_path: Path) -> None:
    # The sandbox enforces the same pace per user: a client spending another's budget would get 429s.
    with running_clinics(SEEDS, rate_limit=PACE, rate_window=60) as clinics:
        paced = clinics.config(pace=PACE)
        registry = RunRegistry()
        principals, leases, plans = {}, {}, {}
        with Ledger(tmp_path) as ledger:
            for seed in SEEDS:
                key = SecretStr(clinics.key(seed))
                principals[seed] = sign_in_clinic(ledger, key, clinics.config()).principal
                leases[seed] = KeyLease(key, tenant_of(seed))
                plans[seed] = hosted_plan(clinics, seed, tmp_path)
        httpx.post(clinics.sandbox.origin + "/_sandbox/reset_stats")

        began = time.monotonic()
        handles = {
            seed: registry.start(
                plans[seed],
                leases[seed].key,  # type: ignore[arg-type]
                workspace=tmp_path,
                client_config=paced,
                actor=principals[seed].actor,
                role=principals[seed].role,
                on_end=leases[seed].drop,
            )
            for seed in SEEDS
        }
        assert len({h.batch_id for h in handles.values()}) == 3
        assert len(registry.active()) == 3  # all three at once: different stores, no refusal
        for handle in handles.values():
            assert handle.wait(60) and handle.state == "completed", handle.error
        wall = time.monotonic() - began
        stats = httpx.get(clinics.sandbox.origin + "/_sandbox/stats").json()

    interval = 60 / (PACE - 2)  # the client's pacing (two requests a window spare)
    alone = {}
    for seed, handle in handles.items():
        result = handle.result
        assert result is not None and handle.finished_at is not None
        took = (handle.finished_at - handle.started_at).total_seconds()
        alone[seed] = result.requests * interval  # how long this run takes at its own pace, by itself
        # Paced by its own budget: never faster than its pace, and not slowed by the other two.
        assert took >= alone[seed] * 0.8, (seed, took, alone[seed])
        assert took <= alone[seed] * 1.5 + 2, (seed, took, alone[seed])
        assert leases[seed].dropped  # the key went with the run
    # Side by side: the three together take about as long as the slowest alone, not the sum.
    assert wall < max(alone.values()) * 1.5 + 2 < sum(alone.values()), (wall, alone)
    # Each clinic's requests were counted against its own account, none refused for another's.
    accounts = stats["accounts"]
    for seed, handle in handles.items():
        tally = accounts[f"Clinic {seed}"]
        assert tally["rate_limited"] == 0 and tally["writes"] == 0
        assert tally["requests"] >= handle.result.requests  # type: ignore[union-attr]

    with Ledger(tmp_path) as ledger:
        for seed in SEEDS:
            mine = visible_batches(ledger, principals[seed])
            assert [b.id for b in mine] == [handles[seed].batch_id]  # each sees its own batch only
            batch = mine[0]
            assert batch.status == "completed" and batch.source_account == tenant_of(seed)
            assert batch.destination == store_target(tmp_path, tenant_of(seed))
            totals = clinics.totals(seed)
            patients = sum(ledger.counts(batch.id)["patients"].values())
            assert patients == totals["patients"] + totals["patients/archived"]
            assert Path(batch.destination.removeprefix("sqlite:")).exists()
