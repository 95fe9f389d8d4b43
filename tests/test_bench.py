"""The benchmark's smoke test: ``--quick`` completes and reports every figure with its goal.

The goals themselves are checked by reading the full benchmark's output (README), not
here: timings on a shared machine are not a test.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

FIGURES = {
    "budget_use",
    "budget_use_429_after_first_window",
    "request_efficiency_all",
    "request_efficiency_business",
    "request_efficiency_practitioner",
    "own_overhead",
    "peak_memory_mb",
    "destination_writes",
    "destination_writes_429_after_first_window",
    "latency_hiding",
    "latency_hiding_429_after_first_window",
}


def test_quick_benchmark_reports_every_figure_with_its_goal_and_command() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "migrator.bench", "--quick", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["quick"] is True
    figures = report["figures"]
    assert set(figures) == FIGURES
    for name, figure in figures.items():
        assert figure["goal"], name
        assert figure["command"].startswith("uv run python -m migrator.bench --quick --only "), name
        assert isinstance(figure["value"], int | float), name
    # Sanity, not speed: the runs really happened and the counts add up.
    assert figures["request_efficiency_all"]["detail"]["requests"] > 0
    overhead = figures["own_overhead"]["detail"]
    assert overhead["engine_requests"] == overhead["bare_requests"]
    # Each pair's migration has its process CPU (the run really worked) and the load it ran under.
    assert len(overhead["engine_cpu_seconds"]) == len(overhead["load_average"]) == overhead["rounds"]
    assert all(cpu > 0 for cpu in overhead["engine_cpu_seconds"])
    assert figures["peak_memory_mb"]["value"] > 20
    assert figures["budget_use_429_after_first_window"]["value"] == 0
    writes = figures["destination_writes"]["detail"]
    assert writes["records_created"] > 0
    assert 0 < writes["writes_in_writing_phase"] <= writes["requests_in_writing_phase"]
    assert writes["sandbox_served"] == writes["destination_requests"]  # the sandbox agrees with the client


def test_engine_replay_runs_the_same_migration_from_memory() -> None:
    # The tool behind hot-path comparisons (README, Benchmarks): it must replay the very
    # migration it recorded, not a lighter one.
    done = subprocess.run(
        [sys.executable, "tools/engine_replay.py", "--size", "tiny", "--runs", "2", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).parent.parent,
    )
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)
    assert figures["runs"] == 2 and len(figures["main_thread_cpu_seconds"]) == 2
    recorded, *replayed = figures["in_scope_per_run"]
    assert recorded > 100 and replayed == [recorded, recorded]
    assert figures["records"] >= recorded
