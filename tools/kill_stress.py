"""SIGKILL a CLI run at random moments, many times over, let it finish, and compare with a clean run.

``uv run python tools/kill_stress.py [--to sqlite|cliniko] [--rounds 3] [--kills 40] [--seed 1]``

The tests kill runs at a few chosen points (``tests/test_resume.py``,
``tests/test_cliniko_destination.py``); this script kills them wherever chance puts
the signal (during start-up, mid-page, mid-commit, mid-write), ``--kills`` times per
round, then lets the last start run to its end and checks that it left exactly what an
uninterrupted run leaves:

- ``--to sqlite`` (the demo clinic into a local store, paced at 50 requests a second):
  every store row the same as the clean run's, ids aside, one batch ``completed``, and
  the ledger's counts per data type equal to the clean run's.
- ``--to cliniko`` (the tiny clinic into a sandbox Cliniko account, 25 requests a second):
  the run's counts per data type equal to the clean one's, the account holding the same
  number of records of each written data type, and no patient twice.

It prints one line per round and exits 1 if any round differs. A round takes one to four minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from migrator.cliniko.client import ClientConfig, ClinikoClient
from migrator.ledger import Ledger
from migrator.mapping import load_mapping, save_mapping
from tests.conftest import ROOT, RunningSandbox, _start
from tests.test_resume import canonical, run_cli, setup_workspace

#: What a transfer into Cliniko writes, counted in the account afterwards.
WRITTEN = (
    *("patients", "individual_appointments", "group_appointments", "attendees", "treatment_notes"),
    *("medical_alerts", "invoices", "contacts", "appointment_types"),
)


def _killed_until_done(
    start: Callable[[], subprocess.Popen[str]], rng: random.Random, kills: int, low: float, high: float
) -> tuple[dict[str, Any], int]:
    """Start and SIGKILL ``start()``'s process after a random ``low``-``high`` s, ``kills`` times; then let it end.

    Returns the finished run's ``--json`` result and how many starts were killed (fewer
    than ``kills`` when a start finished before its signal).
    """
    killed = 0
    for attempt in range(kills + 1):
        process = start()
        try:
            out, err = process.communicate(timeout=rng.uniform(low, high) if attempt < kills else 900)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            process.communicate()
            killed += 1
            continue
        if process.returncode != 0:
            raise RuntimeError(f"a run failed: {err.strip()[-500:]}")
        return json.loads(out), killed
    raise AssertionError("unreachable")


def _ledger_outcome(workspace: Path) -> tuple[list[str], dict[str, dict[str, int]]]:
    """The statuses of the workspace's batches, and the first batch's counts per data type."""
    with Ledger(workspace) as ledger:
        batches = ledger.batches()
        return [b.status for b in batches], ledger.counts(batches[0].id)


def local_rounds(rounds: int, kills: int, rng: random.Random, root: Path) -> Iterator[tuple[bool, str]]:
    with contextmanager(_start)(size="demo", seed=1, rate_limit=0) as sandbox:
        clean_ws = root / "clean"
        clean_ws.mkdir()
        mapping = setup_workspace(sandbox, clean_ws)
        _killed_until_done(partial(run_cli, sandbox, clean_ws, mapping), rng, 0, 0, 0)
        clean_store, (_, clean_counts) = canonical(clean_ws / "clinic.db"), _ledger_outcome(clean_ws)
        for n in range(rounds):
            workspace = root / f"killed-{n}"
            workspace.mkdir()
            mapping = setup_workspace(sandbox, workspace)
            _, killed = _killed_until_done(
                partial(run_cli, sandbox, workspace, mapping), rng, kills, 0.3, 4.0
            )
            statuses, counts = _ledger_outcome(workspace)
            same_store = canonical(workspace / "clinic.db") == clean_store
            same_counts = counts == clean_counts
            ok = same_store and same_counts and statuses == ["completed"]
            yield (
                ok,
                f"{killed} kills; store same: {same_store}; counts same: {same_counts}; batches: {statuses}",
            )


def _transfer(
    root: Path, name: str, rng: random.Random, kills: int
) -> tuple[dict[str, Any], dict[str, int], int, int]:
    """A transfer of the tiny clinic into a fresh sandbox account; its result, the account's counts, the
    most copies of one patient and the kills."""
    with contextmanager(_start)(size="tiny", seed=1, rate_limit=0) as sandbox:
        workspace = root / name
        workspace.mkdir()

        def cli(*args: str) -> subprocess.Popen[str]:
            return _cli(sandbox, workspace, *args)

        mapping = workspace / "mapping.json"
        made = cli("mapping", "--to", "cliniko", "--out", str(mapping))
        if made.wait(timeout=120) != 0:
            raise RuntimeError(made.stderr.read() if made.stderr else "mapping failed")
        rows = load_mapping(mapping)
        target = next(r.target_id for r in rows if r.entity == "practitioners" and r.action == "map")
        save_mapping(
            mapping,
            [r.model_copy(update={"action": "reassign", "target_id": target}) if r.action == "unresolved" else r for r in rows],
        )  # fmt: skip
        run = ("run", "--to", "cliniko", "--mapping", str(mapping), "--json")
        result, killed = _killed_until_done(partial(cli, *run), rng, kills, 0.8, 3.0)
        config = ClientConfig(url_template=sandbox.url_template, requests_per_minute=0)
        with ClinikoClient(sandbox.key("destination"), config=config) as dest:
            held = {
                entity: sum(dest.count(entity, route=r) for r in ((None, "archived") if entity == "patients" else (None,)))
                for entity in WRITTEN
            }  # fmt: skip
            patients = Counter(
                (p["first_name"], p["last_name"], p["date_of_birth"], p["email"])
                for route in (None, "archived")
                for page in dest.pages("patients", route=route)
                for p in page.records
            )
        return result, held, max(patients.values()), killed


def _cli(sandbox: RunningSandbox, workspace: Path, *args: str) -> subprocess.Popen[str]:
    """``python -m migrator ARGS --workspace W`` with both keys, paced at 25 requests a second."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIGRATOR_")}
    env.update(
        MIGRATOR_API_URL=sandbox.url_template,
        MIGRATOR_SOURCE_KEY=sandbox.key("source"),
        MIGRATOR_DEST_KEY=sandbox.key("destination"),
        MIGRATOR_REQUESTS_PER_MINUTE="1500",
    )
    return subprocess.Popen(
        [sys.executable, "-m", "migrator", *args, "--workspace", str(workspace)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def cliniko_rounds(rounds: int, kills: int, rng: random.Random, root: Path) -> Iterator[tuple[bool, str]]:
    clean, clean_held, _, _ = _transfer(root, "clean", rng, 0)
    for n in range(rounds):
        result, held, copies, killed = _transfer(root, f"killed-{n}", rng, kills)
        same_counts = result["entities"] == clean["entities"]
        ok = same_counts and held == clean_held and copies == 1
        yield (
            ok,
            f"{killed} kills; counts same: {same_counts}; account same: {held == clean_held}; most copies of a patient: {copies}",
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tools/kill_stress.py", description=__doc__.splitlines()[0])
    parser.add_argument("--to", choices=("sqlite", "cliniko"), default="sqlite")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--kills", type=int, default=40, help="SIGKILLs per round before the run may finish")
    parser.add_argument("--seed", type=int, default=1, help="seeds the random moments of the kills")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    rounds = local_rounds if args.to == "sqlite" else cliniko_rounds
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        for n, (ok, line) in enumerate(rounds(args.rounds, args.kills, rng, Path(tmp)), 1):
            failed += not ok
            print(f"round {n}: {'same as a clean run' if ok else 'DIFFERS'}: {line}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
