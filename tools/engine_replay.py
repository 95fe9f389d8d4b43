"""Replay a full migration from pages held in memory: the engine's own CPU, without HTTP.

``uv run python tools/engine_replay.py [--size demo] [--runs 5] [--json]``

The ``own_overhead`` benchmark times the engine against a bare fetch, and on a shared
machine one pair of such timings swings by a fifth. To compare two versions of the
engine's hot path, this script reads the sandbox's pages once, then runs the same
migration ``--runs`` times into fresh stores, each from those pages (no HTTP, no reader
threads), and prints the main thread's CPU seconds per run. Under valgrind, with the hash
seed fixed, the count of instructions is steadier still (1-2% apart between runs)::

    PYTHONHASHSEED=0 valgrind --tool=cachegrind --cache-sim=no --cachegrind-out-file=/dev/null \\
        .venv/bin/python tools/engine_replay.py --runs 1
    # ... and again with --runs 2: the difference is one run's instructions.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from migrator.bench import _Sandbox
from migrator.cliniko.client import ClientConfig, ClinikoClient
from migrator.cliniko.filters import Filter
from migrator.cliniko.pagination import Page
from migrator.destinations.local import LocalStore
from migrator.engine import Engine
from migrator.ledger import Ledger
from migrator.mapping import build_mapping, to_rows
from migrator.plan import Plan, Scope
from migrator.setup import copy_clinic_setup


class RecordedSource:
    """A source client that reads each list once through ``client`` and serves it from memory after."""

    def __init__(self, client: ClinikoClient) -> None:
        self.client = client
        self.stats = client.stats
        self._pages: dict[tuple[Any, ...], list[Page]] = {}
        self._counts: dict[tuple[Any, ...], int] = {}

    def pages(
        self, resource_name: str, filters: Iterable[Filter] = (), *, route: str | None = None, **kw: Any
    ) -> Iterator[Page]:
        filters = list(filters)
        key = (resource_name, tuple(map(str, filters)), route, tuple(sorted(kw.items())))
        if key not in self._pages:
            self._pages[key] = list(self.client.pages(resource_name, filters, route=route, **kw))
        for page in self._pages[key]:
            # A fresh list each time: the engine may not keep or change what it was given.
            yield Page(page.number, list(page.records), page.total_entries, page.next_url)

    def count(self, resource_name: str, filters: Iterable[Filter] = (), **kw: Any) -> int:
        filters = list(filters)
        key = (resource_name, tuple(map(str, filters)), tuple(sorted(kw.items())))
        if key not in self._counts:
            self._counts[key] = self.client.count(resource_name, filters, **kw)
        return self._counts[key]


def _fresh_run(
    info: dict[str, Any], workdir: Path, source: RecordedSource, config: ClientConfig
) -> tuple[float, int]:
    """One migration into a fresh store and ledger: the main thread's CPU seconds in ``Engine.run``
    and the records the batch had in scope."""
    src = next(a for a in info["accounts"] if a["role"] == "source")
    dest = next(a for a in info["accounts"] if a["role"] == "destination")
    ledger = Ledger(workdir / "workspace")
    store = LocalStore(workdir / "clinic.db", ledger)
    with ClinikoClient(dest["key"], config=config) as client:
        copy_clinic_setup(store, client)
    rows = to_rows(build_mapping(source.client, store.reference, can_create=True))
    rows = [r.model_copy(update={"action": "former"}) if r.action == "unresolved" else r for r in rows]
    plan = Plan(
        source_account=src["name"],
        source_shard=src["shard"],
        destination=store.describe(),
        scope=Scope.parse("all"),
        mappings=rows,
    )
    engine = Engine(plan, source, store, ledger, read_ahead=0)  # type: ignore[arg-type]
    started = time.thread_time()
    result = engine.run()
    seconds = time.thread_time() - started
    ledger.close()
    return seconds, sum(e["in_scope"] for e in result.entities.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tools/engine_replay.py", description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="demo", help="the sandbox clinic (default: demo)")
    parser.add_argument("--runs", type=int, default=5, help="replayed runs after the recording one")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = parser.parse_args(argv)
    with _Sandbox(size=args.size, rate_limit=0) as sandbox:
        src = next(a for a in sandbox.info["accounts"] if a["role"] == "source")
        config = ClientConfig(url_template=sandbox.info["url_template"], requests_per_minute=0)
        with ClinikoClient(src["key"], config=config) as client:
            source = RecordedSource(client)
            seconds: list[float] = []
            in_scope: list[int] = []
            for n in range(args.runs + 1):
                with tempfile.TemporaryDirectory() as tmp:
                    spent, handled = _fresh_run(sandbox.info, Path(tmp), source, config)
                in_scope.append(handled)
                if n:  # the first run read the pages over HTTP
                    seconds.append(spent)
    figures = {
        "size": args.size,
        "records": sum(len(p.records) for pages in source._pages.values() for p in pages),
        "in_scope_per_run": in_scope,
        "runs": len(seconds),
        "main_thread_cpu_seconds": [round(s, 3) for s in seconds],
        "median": round(statistics.median(seconds), 3) if seconds else None,
    }
    if args.json:
        print(json.dumps(figures))
    else:
        print(
            f"{figures['records']} records; main-thread CPU per replayed run: {figures['main_thread_cpu_seconds']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
