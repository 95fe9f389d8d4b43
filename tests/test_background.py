"""Runs in background threads: one per plan, stoppable, resumable, and never holding the key after."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr

from migrator.background import RunHandle, RunRegistry
from migrator.cliniko.client import ClientConfig, ClinikoClient
from migrator.errors import ConfigError
from migrator.ledger import Ledger
from migrator.plan import Plan, Scope
from migrator.setup import copy_clinic_setup
from migrator.workflow import auto_mapping, make_plan, open_local_store, verify_source
from tests.conftest import ROOT, RunningSandbox


def plan_for(sandbox: RunningSandbox, workspace: Path, scope: str = "all") -> Plan:
    """A runnable plan into a store set up like the destination clinic; former staff go to 'former'."""
    ledger, store = open_local_store(f"sqlite:{workspace / 'clinic.db'}", workspace)
    with ledger, sandbox.client() as client, sandbox.client("destination") as destination:
        copy_clinic_setup(store, destination)
        rows = [
            r.model_copy(update={"action": "former"}) if r.action == "unresolved" else r
            for r in auto_mapping(client, store)
        ]
        return make_plan(client, verify_source(client), store, scope=Scope.parse(scope), mappings=rows)


def config(sandbox: RunningSandbox, pace: float = 0) -> ClientConfig:
    return ClientConfig(url_template=sandbox.url_template, requests_per_minute=pace)


def stopped_batch(plan: Plan, workspace: Path) -> str:
    """A batch of ``plan`` recorded as stopped before it read anything: its id."""
    with Ledger(workspace) as ledger:
        batch = ledger.create_batch(
            source_account=plan.source_account,
            destination=plan.destination,
            plan=plan.model_dump(mode="json"),
        )
        ledger.set_status(batch.id, "stopped")
    return batch.id


def holds_a_key(handle: RunHandle) -> bool:
    return any(isinstance(v, SecretStr | ClinikoClient) for v in vars(handle).values())


def test_one_run_per_plan_stop_and_resume(tiny_sandbox: RunningSandbox, tmp_path: Path) -> None:
    plan = plan_for(tiny_sandbox, tmp_path)
    key = SecretStr(tiny_sandbox.key("source"))
    registry = RunRegistry()
    slow = config(tiny_sandbox, pace=240)  # four requests a second: a run of several seconds

    handle = registry.start(plan, key, workspace=tmp_path, client_config=slow, expected={"patients": 12})
    assert handle.batch_id and handle.running
    # The same plan again (a refresh, a second tab, a double click): the same run.
    assert registry.start(plan, key, workspace=tmp_path, client_config=slow) is handle
    # Another plan into the same store while it runs: refused in one sentence.
    other = plan.model_copy(update={"include_archived_patients": False})
    with pytest.raises(ConfigError, match=r"is running into this store right now; follow it on the Run page"):
        registry.start(other, key, workspace=tmp_path, client_config=slow)
    assert registry.active() == [handle] and registry.get(handle.batch_id) is handle

    handle.stop()
    assert handle.wait(60) and handle.state == "stopped" and handle.error is None
    assert not holds_a_key(handle)
    with Ledger(tmp_path) as ledger:
        assert ledger.batch(handle.batch_id).status == "stopped"

    # Starting the plan again resumes the stopped batch; it ends as one clean run would.
    resumed = registry.start(plan, key, workspace=tmp_path, client_config=config(tiny_sandbox))
    assert resumed is not handle and resumed.resumed and resumed.batch_id == handle.batch_id
    assert resumed.wait(60) and resumed.state == "completed", resumed.error
    assert resumed.result is not None and not holds_a_key(resumed)
    with Ledger(tmp_path) as ledger:
        assert [(b.id, b.status) for b in ledger.batches()] == [(handle.batch_id, "completed")]
        patients = ledger.counts(handle.batch_id)["patients"]
    totals = tiny_sandbox.totals()
    assert sum(patients.values()) == totals["patients"] + totals["patients/archived"]
    assert resumed.result.entities["patients"]["in_scope"] == sum(patients.values())


@pytest.mark.parametrize("wrote", ["some pages", "nothing"])
def test_resuming_in_a_copy_of_the_workspace_writes_into_the_copy_only(
    tiny_sandbox: RunningSandbox, tmp_path: Path, wrote: str
) -> None:
    """A copy still names the original's store in its ledger: a resume there must not write into the original.

    Stopped at once, a run may have written nothing yet, and then no record in the copy's
    store claims the batch: the original's store, beside a ledger of its own, is not taken
    for this workspace's either way.
    """
    import shutil
    import sqlite3

    original, copy = tmp_path / "original", tmp_path / "copy"
    plan = plan_for(tiny_sandbox, original)
    key = SecretStr(tiny_sandbox.key("source"))
    if wrote == "nothing":
        batch_id = stopped_batch(plan, original)
    else:
        handle = RunRegistry().start(
            plan, key, workspace=original, client_config=config(tiny_sandbox, pace=240)
        )
        handle.stop()
        assert handle.wait(60) and handle.state == "stopped" and handle.batch_id
        batch_id = handle.batch_id
    shutil.copytree(original, copy)

    def appointments(workspace: Path) -> int:
        with sqlite3.connect(workspace / "clinic.db") as conn:
            return int(conn.execute("SELECT count(*) FROM individual_appointments").fetchone()[0])

    before = appointments(original)
    resumed = RunRegistry().resume(
        batch_id,
        key,
        source_account=plan.source_account,
        workspace=copy,
        client_config=config(tiny_sandbox),
    )
    assert resumed.wait(60) and resumed.state == "completed", resumed.error
    assert (
        appointments(original)
        == before
        < appointments(copy)
        == tiny_sandbox.totals()["individual_appointments"]
    )
    with Ledger(original) as ledger:
        assert ledger.batch(batch_id).status == "stopped"
    with Ledger(copy) as ledger:
        batch = ledger.batch(batch_id)
        assert (batch.status, batch.destination) == ("completed", f"sqlite:{(copy / 'clinic.db').resolve()}")


def test_a_failed_run_says_why_in_one_sentence(tiny_sandbox: RunningSandbox, tmp_path: Path) -> None:
    plan = plan_for(tiny_sandbox, tmp_path)
    wrong = SecretStr("MS" + "0" * 40 + "-" + tiny_sandbox.account("source")["shard"])
    handle = RunRegistry().start(plan, wrong, workspace=tmp_path, client_config=config(tiny_sandbox))
    assert handle.wait(60) and handle.state == "failed"
    assert handle.error is not None and handle.error.startswith(
        "Cliniko did not accept the source API key (HTTP 401)"
    )
    assert wrong.get_secret_value() not in handle.error
    with Ledger(tmp_path) as ledger:
        assert ledger.batch(handle.batch_id).status == "failed"


def test_resuming_needs_the_batchs_own_source_account(tiny_sandbox: RunningSandbox, tmp_path: Path) -> None:
    plan = plan_for(tiny_sandbox, tmp_path)
    batch_id = stopped_batch(plan, tmp_path)
    with pytest.raises(ConfigError, match=r"connect .*'s key to resume it"):
        RunRegistry().resume(
            batch_id,
            SecretStr(tiny_sandbox.key("source")),
            source_account="Another Clinic",
            workspace=tmp_path,
            client_config=config(tiny_sandbox),
        )


_RUN_THEN_EXIT = """
import json, os, sys, time
from pydantic import SecretStr
from migrator.background import RunRegistry
from migrator.cliniko.client import ClientConfig
from migrator.plan import Plan

plan = Plan.model_validate_json(sys.stdin.read())
config = ClientConfig(url_template=os.environ["URL_TEMPLATE"], requests_per_minute=240)
handle = RunRegistry().start(plan, SecretStr(os.environ["KEY"]), workspace=sys.argv[1], client_config=config)
time.sleep(1.5)  # some pages in, then the main thread ends, as a server's does on Ctrl+C
print(handle.batch_id, handle.running, flush=True)
"""


def test_a_run_is_stopped_not_failed_when_its_process_shuts_down(
    tiny_sandbox: RunningSandbox, tmp_path: Path
) -> None:
    """QA: the server's Ctrl+C marked a running batch failed, on a RuntimeError of a closed thread pool."""
    plan = plan_for(tiny_sandbox, tmp_path)
    env = {**os.environ, "URL_TEMPLATE": tiny_sandbox.url_template, "KEY": tiny_sandbox.key("source")}
    done = subprocess.run(
        [sys.executable, "-c", _RUN_THEN_EXIT, str(tmp_path)],
        input=plan.model_dump_json(),
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    batch_id, was_running = done.stdout.split()
    assert was_running == "True"  # it was cut short, not finished
    with Ledger(tmp_path) as ledger:
        batch = ledger.batch(batch_id)
        assert batch.status == "stopped"
        assert sum(sum(c.values()) for c in ledger.counts(batch_id).values()) > 0  # what it did is kept
    # And it resumes to the end, as the Run page's Resume does.
    resumed = RunRegistry().start(
        plan, SecretStr(tiny_sandbox.key("source")), workspace=tmp_path, client_config=config(tiny_sandbox)
    )
    assert resumed.batch_id == batch_id and resumed.wait(60) and resumed.state == "completed", resumed.error
