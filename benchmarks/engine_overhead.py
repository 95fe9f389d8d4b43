"""Engine overhead and memory: a full migration against fetching the same pages with a bare httpx loop.

    uv run python benchmarks/engine_overhead.py [--size demo] [--memory]

Starts a sandbox (rate limit off) in its own process, then in this process:
1. fetches every list a full migration reads with a plain sequential httpx loop
   (per_page=100, following links.next), timing it;
2. runs the engine for the same lists into a fresh local store, timing it;
and prints both times and their ratio (goal: at most 1.25). With ``--memory`` it
also runs the engine alone in a child process and reports its peak resident
memory (goal for the large clinic: under 500 MB).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from migrator.cliniko.client import ClientConfig, ClinikoClient  # noqa: E402
from migrator.destinations.local import LocalStore  # noqa: E402
from migrator.engine import Engine  # noqa: E402
from migrator.ledger import Ledger  # noqa: E402
from migrator.mapping import build_mapping, to_rows  # noqa: E402
from migrator.plan import Plan, Scope  # noqa: E402
from migrator.preview import SOURCE_LISTS  # noqa: E402
from migrator.sandbox import start_subprocess  # noqa: E402
from migrator.setup import copy_clinic_setup  # noqa: E402


def bare_fetch(base: str, key: str) -> tuple[int, float]:
    """Every list page by page with nothing but httpx: (requests, seconds)."""
    requests = 0
    started = time.perf_counter()
    with httpx.Client(
        auth=(key, ""), headers={"User-Agent": "bench (bench@example.com)"}, timeout=60
    ) as http:
        for resource_name, route in SOURCE_LISTS:
            url: str | None = f"{base}/{resource_name}{'/' + route if route else ''}?page=1&per_page=100"
            while url:
                body = http.get(url).json()
                requests += 1
                url = body["links"].get("next")
    return requests, time.perf_counter() - started


def engine_run(info: dict, workdir: Path) -> tuple[int, float, dict]:
    """A full migration into a fresh store: (source requests, seconds, entity counts)."""
    source = next(a for a in info["accounts"] if a["role"] == "source")
    dest = next(a for a in info["accounts"] if a["role"] == "destination")
    config = ClientConfig(url_template=info["url_template"], requests_per_minute=0)
    ledger = Ledger(workdir / "workspace")
    store = LocalStore(workdir / "clinic.db", ledger)
    with ClinikoClient(dest["key"], config=config) as client:
        copy_clinic_setup(store, client)
    with ClinikoClient(source["key"], config=config) as client:
        rows = to_rows(build_mapping(client, store.reference, can_create=True))
        rows = [r.model_copy(update={"action": "former"}) if r.action == "unresolved" else r for r in rows]
        plan = Plan(
            source_account=source["name"],
            source_shard=source["shard"],
            destination=store.describe(),
            scope=Scope.parse("all"),
            mappings=rows,
        )
        before = client.stats.requests
        started = time.perf_counter()
        result = Engine(plan, client, store, ledger).run()
        seconds = time.perf_counter() - started
        return client.stats.requests - before, seconds, result.entities


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--size", default="demo", help="sandbox size: tiny, demo, large or a number of patients"
    )
    parser.add_argument(
        "--memory", action="store_true", help="also measure the engine's peak memory in a child process"
    )
    parser.add_argument("--engine-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--info", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.engine_only:  # the child of --memory: run the engine against a running sandbox
        with tempfile.TemporaryDirectory() as tmp:
            requests, seconds, entities = engine_run(json.loads(args.info), Path(tmp))
        print(
            json.dumps(
                {
                    "requests": requests,
                    "seconds": seconds,
                    "records": sum(e["in_scope"] for e in entities.values()),
                }
            )
        )
        return

    process, info = start_subprocess(size=args.size, seed=1, rate_limit=0)
    try:
        source = next(a for a in info["accounts"] if a["role"] == "source")
        base = info["url_template"].replace("{shard}", source["shard"])
        bare_requests, bare_seconds = bare_fetch(base, source["key"])
        with tempfile.TemporaryDirectory() as tmp:
            requests, seconds, entities = engine_run(info, Path(tmp))
        records = sum(e["in_scope"] for e in entities.values())
        figures = {
            "size": args.size,
            "records": records,
            "bare_requests": bare_requests,
            "bare_seconds": round(bare_seconds, 2),
            "engine_requests": requests,
            "engine_seconds": round(seconds, 2),
            "overhead_ratio": round(seconds / bare_seconds, 3),
            "goal_overhead_ratio": 1.25,
        }
        if args.memory:
            child = subprocess.run(
                [sys.executable, __file__, "--engine-only", "--info", json.dumps(info)],
                capture_output=True,
                text=True,
                check=True,
            )
            figures["memory_run"] = json.loads(child.stdout.strip().splitlines()[-1])
            figures["engine_peak_rss_mb"] = round(
                resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1
            )
            figures["goal_peak_rss_mb"] = 500
        print(json.dumps(figures, indent=2))
    finally:
        process.terminate()
        process.wait(timeout=30)


if __name__ == "__main__":
    main()
