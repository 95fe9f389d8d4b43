"""Several clinics on one sandbox, for the hosted-instance tests: each seed's source clinic, renamed.

Every seed generates the same clinic name and account id (``Harbourside Physio``, 40117), so
each clinic here gets its own name and id (``Clinic 3``, 70003): its own tenant, and its own
budget at the sandbox, which limits per account and user. Keys differ per seed already.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr

from migrator.cliniko.client import ClientConfig, ClinikoClient
from migrator.hosted import Principal, plan_for_tenant
from migrator.plan import Plan, Scope
from migrator.sandbox import Sandbox
from migrator.sandbox.accounts import AccountSeed
from migrator.sandbox.data import build_accounts
from migrator.workflow import auto_mapping, make_plan, open_local_store, verify_source


def tenant_of(seed: int) -> str:
    return str(70_000 + seed)


def clinic_accounts(seeds: Sequence[int], size: str = "tiny") -> list[AccountSeed]:
    """The source clinic of each seed as an account of its own, plus the first seed's destination clinic."""
    accounts: list[AccountSeed] = []
    for index, seed in enumerate(seeds):
        source, destination = build_accounts(size, seed)
        source.name = f"Clinic {seed}"
        source.account_id = int(tenant_of(seed))
        source.settings["account"].update(id=source.account_id, name=source.name)
        accounts.append(source)
        if index == 0:
            accounts.append(destination)
    return accounts


@dataclass
class Clinics:
    """A running sandbox with :func:`clinic_accounts`."""

    sandbox: Sandbox
    seeds: tuple[int, ...]

    @property
    def url_template(self) -> str:
        return self.sandbox.url_template

    def key(self, seed: int, role: str = "source") -> str:
        name = f"Clinic {seed}" if role.startswith("source") else None
        for entry in self.sandbox.info["accounts"]:
            if entry["role"] == role and (name is None or entry["name"] == name):
                return str(entry["key"])
        raise KeyError((seed, role))

    def totals(self, seed: int) -> dict[str, int]:
        return dict(self.sandbox.info["totals"][f"Clinic {seed}"])

    def config(self, pace: float = 0) -> ClientConfig:
        return ClientConfig(url_template=self.url_template, requests_per_minute=pace)


@contextmanager
def running_clinics(
    seeds: Sequence[int] = (3, 4, 5), *, rate_limit: int = 0, rate_window: float = 60.0
) -> Iterator[Clinics]:
    sandbox = Sandbox(accounts=clinic_accounts(seeds), rate_limit=rate_limit, rate_window=rate_window)
    sandbox.start()
    try:
        yield Clinics(sandbox, tuple(seeds))
    finally:
        sandbox.stop()


def store_target(workspace: Path, tenant: str) -> str:
    return f"sqlite:{workspace / 'tenants' / tenant / 'clinic.db'}"


def hosted_plan(clinics: Clinics, seed: int, workspace: Path, who: Principal | None = None) -> Plan:
    """A runnable plan of one clinic into its own store (former practitioners to 'former'), named by tenant."""
    tenant = tenant_of(seed)
    assert who is None or who.tenant in (None, tenant)
    ledger, store = open_local_store(store_target(workspace, tenant), workspace)
    with ledger, ClinikoClient(SecretStr(clinics.key(seed)), config=clinics.config()) as client:
        rows = [
            r.model_copy(update={"action": "former"}) if r.action == "unresolved" else r
            for r in auto_mapping(client, store)
        ]
        plan = make_plan(client, verify_source(client), store, scope=Scope.parse("all"), mappings=rows)
    return plan_for_tenant(plan, tenant)


def wait_until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    """Poll ``condition`` until it holds (a run's own thread drops its keys as it ends), failing after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)
