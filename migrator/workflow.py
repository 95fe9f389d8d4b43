"""The steps every front end takes, in one place: the CLI, the console and notebooks call these.

>>> client = ClinikoClient(key)                                        # doctest: +SKIP
>>> identity = verify_source(client)                                   # an administrator's key
>>> ledger, store = open_local_store("sqlite:workspace/clinic.db", "workspace")
>>> plan = make_plan(client, identity, store, scope=Scope.parse("all"))
>>> Engine(plan, client, store, ledger).run(unfinished_batch(ledger, plan))

Each raises a :class:`~migrator.errors.MigratorError` whose message is one sentence for
the operator; none of them ever puts a key in a message.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from migrator.cliniko.client import ClinikoClient, Identity
from migrator.destinations.local import LocalStore
from migrator.errors import ConfigError
from migrator.ledger import Ledger
from migrator.mapping import build_mapping, load_mapping, to_rows
from migrator.plan import MappingRow, Plan, Scope, default_include

__all__ = [
    "DEFAULT_STORE",
    "DEFAULT_WORKSPACE",
    "auto_mapping",
    "make_plan",
    "open_local_store",
    "unfinished_batch",
    "verify_source",
]

DEFAULT_WORKSPACE = "workspace"
DEFAULT_STORE = "sqlite:workspace/clinic.db"


def verify_source(client: ClinikoClient) -> Identity:
    """Who the source key belongs to; refused unless an administrator (seed 001: others lack the rights)."""
    identity = client.identity()
    if not identity.is_admin:
        raise ConfigError(
            f"The source key belongs to {identity.user}, who is not an administrator of "
            f"{identity.account or 'the account'}; Cliniko only gives an administrator's key the rights a migration needs."
        )
    return identity


def open_local_store(
    target: str = DEFAULT_STORE, workspace: str | Path = DEFAULT_WORKSPACE
) -> tuple[Ledger, LocalStore]:
    """The workspace's ledger and the local clinic store ``sqlite:PATH`` attached to it."""
    ledger = Ledger(workspace)
    return ledger, LocalStore(LocalStore.parse_target(target), ledger)


def auto_mapping(client: ClinikoClient, store: LocalStore) -> list[MappingRow]:
    """The auto-matched mapping rows (by normalised name) between the source and the store."""
    return to_rows(build_mapping(client, store.reference, can_create=True))


def make_plan(
    client: ClinikoClient,
    identity: Identity,
    store: LocalStore,
    *,
    scope: Scope,
    include: Sequence[str] | None = None,
    mappings: Sequence[MappingRow] | str | Path | None = None,
    include_archived_patients: bool = True,
) -> Plan:
    """A plan for this source and store; ``mappings`` are rows, a JSON file's path, or auto-matched.

    Raises:
        MappingError: a mapping row is still unresolved (the message lists them).
    """
    if mappings is None:
        rows = auto_mapping(client, store)
    elif isinstance(mappings, str | Path):
        rows = load_mapping(mappings)
    else:
        rows = list(mappings)
    plan = Plan(
        source_account=identity.account or identity.user,
        source_shard=client.key.shard,
        destination=store.describe(),
        scope=scope,
        mappings=rows,
        include_archived_patients=include_archived_patients,
        include=list(include) if include else default_include(local=True),
    )
    plan.require_resolved()
    return plan


def unfinished_batch(ledger: Ledger, plan: Plan) -> str | None:
    """The latest batch of the same plan that did not finish (killed, stopped or failed): resume it.

    Raises:
        ConfigError: that batch is running right now in another live process, so a second
            run would only race it.
    """
    wanted = {k: v for k, v in json.loads(plan.to_json()).items() if k != "created_with"}
    for batch in ledger.batches():
        if batch.status not in ("running", "stopped", "failed"):
            continue
        if batch.destination != plan.destination or batch.source_account != plan.source_account:
            continue
        if {k: v for k, v in batch.plan.items() if k != "created_with"} == wanted:
            if batch.running_elsewhere():
                raise ConfigError(
                    f"Batch {batch.id} of this plan is running right now in another process ({batch.worker}); "
                    "follow it there, or stop it before starting it again."
                )
            return batch.id
    return None
