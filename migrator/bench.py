"""``python -m migrator.bench [--quick] [--json] [--only NAME,...]``: the tool's speed, measured.

A migration's time is set by Cliniko's rate limit, not by our CPU, so the figures are
ratios taken within one run on this machine, each against its goal:

1. ``budget_use``: the sandbox limits the key to L requests per window and the client
   paces at L; a full migration long enough to last two windows or more. Achieved
   requests per window / L (goal >= 0.97), and the 429 answers after the first window
   (goal 0).
2. ``request_efficiency_*``: requests sent / the minimum possible, that is the sum over
   the lists read of ceil(records in scope / 100) plus one count request per entity
   (goal <= 1.05 for all data; the business and practitioner filters are reported).
3. ``own_overhead``: limit off; a full migration's wall time / the wall time of fetching
   exactly the same pages with a bare sequential httpx loop, same process (goal <= 1.25);
   the median of five such pairs, taken one after the other.
4. ``peak_memory_mb``: peak resident memory of a full migration of the ``large`` clinic
   into the local store, in a child process (goal < 500).
5. ``destination_writes``: a Cliniko-to-Cliniko transfer with both keys limited to L
   requests per window and both clients paced at L; the destination key's requests per
   window over its writing phase (first write to last) / L (goal >= 0.95), and the 429s
   it got after its first window (goal 0).
6. ``latency_hiding``: budget use again with the sandbox adding 300 ms to every answer
   (goal >= 0.95).

``--quick`` shrinks everything (small clinics, 2- and 3-second windows) so that the whole
benchmark runs in about half a minute; CI runs it as a smoke test of its output only.
The full run takes 10 to 15 minutes. Each figure is printed with its goal and the
command that reproduces it; ``--json`` prints them all as one object.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import httpx

from migrator.cliniko.client import ClientConfig, ClinikoClient
from migrator.destinations.local import LocalStore
from migrator.engine import Engine
from migrator.ledger import Ledger
from migrator.mapping import build_mapping, to_rows
from migrator.plan import Plan, Scope
from migrator.preview import SOURCE_LISTS
from migrator.sandbox import start_subprocess
from migrator.setup import copy_clinic_setup

__all__ = ["Figure", "main", "run_benchmark"]

PER_PAGE = 100
LATENCY_MS = 300


@dataclass
class Figure:
    """One measured figure and its goal (``met`` is ``None`` where there is no goal)."""

    name: str
    value: float | None
    goal: str
    met: bool | None
    command: str
    detail: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        shown = "n/a" if self.value is None else f"{self.value:g}"
        verdict = {True: "met", False: "NOT met", None: "reported"}[self.met]
        return f"{self.name:<34} {shown:>10}   goal {self.goal:<14} {verdict}"


# --- shared steps -------------------------------------------------------------------------


class _Sandbox:
    """A sandbox in its own process (so it does not share our interpreter), stopped on exit."""

    def __init__(self, **options: Any) -> None:
        self.process, self.info = start_subprocess(seed=1, **options)

    def account(self, role: str) -> dict[str, Any]:
        return next(a for a in self.info["accounts"] if a["role"] == role)

    def __enter__(self) -> _Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


class _Run(NamedTuple):
    """What :func:`_migrate` did: its (closed) source client, whose ``stats`` count what the run
    sent, the entity counts, and the run's wall and process-CPU seconds (all threads)."""

    client: ClinikoClient
    entities: dict[str, dict[str, int]]
    seconds: float
    cpu_seconds: float


def _migrate(
    info: dict[str, Any], workdir: Path, *, scope: str = "all", config: ClientConfig | None = None
) -> _Run:
    """A full migration of the sandbox's source into a fresh local store (see :class:`_Run`).

    Every client uses ``config`` (the setup's few reads spend the same paced budget as the
    run). The store is set up from the destination account and every practitioner without
    a match maps to "Former practitioner", as an operator would.
    """
    source = next(a for a in info["accounts"] if a["role"] == "source")
    dest = next(a for a in info["accounts"] if a["role"] == "destination")
    config = config or ClientConfig(url_template=info["url_template"], requests_per_minute=0)
    ledger = Ledger(workdir / "workspace")
    store = LocalStore(workdir / "clinic.db", ledger)
    with ClinikoClient(dest["key"], config=config) as client:
        copy_clinic_setup(store, client)
    with ClinikoClient(source["key"], config=config) as client:
        rows = to_rows(build_mapping(client, store.reference, can_create=True))
        ids = _scope_ids(client, scope)
    rows = [r.model_copy(update={"action": "former"}) if r.action == "unresolved" else r for r in rows]
    plan = Plan(
        source_account=source["name"],
        source_shard=source["shard"],
        destination=store.describe(),
        scope=Scope.parse(ids),
        mappings=rows,
    )
    with ClinikoClient(source["key"], config=config) as client:
        started, cpu_started = time.perf_counter(), time.process_time()
        result = Engine(plan, client, store, ledger).run()
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    ledger.close()
    return _Run(client, result.entities, seconds, cpu_seconds)


def _scope_ids(client: ClinikoClient, scope: str) -> str:
    """``business`` / ``practitioner`` become the sandbox's first business or practitioner."""
    if scope == "all":
        return "all"
    resource_name = {"business": "businesses", "practitioner": "practitioners"}[scope]
    first = next(iter(client.records(resource_name)))
    return f"{scope}:{first.id}"


# --- 1 and 6: budget use ------------------------------------------------------------------


def budget_use(
    *, size: str | int, limit: int, window: float, latency_ms: float, name: str, goal: float
) -> list[Figure]:
    """Achieved requests per window / limit over a full migration paced at the sandbox's limit."""
    with _Sandbox(size=size, rate_limit=limit, rate_window=window, latency_ms=latency_ms) as sandbox:
        config = ClientConfig(
            url_template=sandbox.info["url_template"], requests_per_minute=limit, rate_window=window
        )
        result: dict[str, Any] = {}
        with tempfile.TemporaryDirectory() as tmp:

            def run() -> None:
                result["client"], result["entities"], result["seconds"], _ = _migrate(
                    sandbox.info, Path(tmp), config=config
                )

            worker = threading.Thread(target=run, daemon=True)
            worker.start()
            worker.join(timeout=window)
            limited_after_first_window = _sandbox_limited(sandbox)
            worker.join()
        if "client" not in result:
            raise RuntimeError(f"the {name} migration failed; run it alone to see why")
        late_429 = _sandbox_limited(sandbox) - limited_after_first_window
    requests, seconds = result["client"].stats.requests, result["seconds"]
    ratio = round(requests / (seconds / window) / limit, 3)
    detail = {
        "limit_per_window": limit,
        "window_seconds": window,
        "latency_ms": latency_ms,
        "requests": requests,
        "seconds": round(seconds, 1),
        "windows": round(seconds / window, 2),
    }
    return [
        Figure(name, ratio, f">= {goal}", ratio >= goal, "", detail),
        Figure(f"{name}_429_after_first_window", late_429, "0", late_429 == 0, "", {}),
    ]


def _sandbox_limited(sandbox: _Sandbox) -> int:
    """How many 429s the sandbox has answered so far."""
    base = sandbox.info["url_template"].split("{shard}")[0].rstrip("/")
    stats = httpx.get(f"{base}/_sandbox/stats", timeout=10).json()
    return sum(int(tally["rate_limited"]) for tally in stats["accounts"].values())


# --- 2: request efficiency ------------------------------------------------------------------


def request_efficiency(*, size: str | int, scopes: Sequence[str]) -> list[Figure]:
    """Requests sent / the minimum possible for each scope (all data first)."""
    figures = []
    with _Sandbox(size=size, rate_limit=0) as sandbox:
        for scope in scopes:
            with tempfile.TemporaryDirectory() as tmp:
                client, entities, _, _ = _migrate(sandbox.info, Path(tmp), scope=scope)
            minimum = _minimum_requests(sandbox.info, entities, scope)
            ratio = round(client.stats.requests / minimum, 3)
            goal_met = ratio <= 1.05 if scope == "all" else None
            figures.append(
                Figure(
                    f"request_efficiency_{scope}",
                    ratio,
                    "<= 1.05" if scope == "all" else "(reported)",
                    goal_met,
                    "",
                    {
                        "requests": client.stats.requests,
                        "minimum": minimum,
                        "records": sum(e["in_scope"] for e in entities.values()),
                    },
                )
            )
    return figures


def _minimum_requests(info: dict[str, Any], entities: dict[str, dict[str, int]], scope: str) -> int:
    """Sum over entities of ceil(records in scope / 100), plus one count request per entity.

    For all data the records per list come from the source's own totals (an entity
    such as patients is read from two lists, active and archived, and each list's last
    page is partial); for a filter they are the records the batch had in scope.
    """
    if scope != "all":
        return sum(math.ceil(e["in_scope"] / PER_PAGE) + 1 for e in entities.values() if e["in_scope"])
    source = next(a for a in info["accounts"] if a["role"] == "source")
    config = ClientConfig(url_template=info["url_template"], requests_per_minute=0)
    minimum = 0
    with ClinikoClient(source["key"], config=config) as client:
        for resource_name, route in SOURCE_LISTS:
            if resource_name not in entities:
                continue
            n = client.count(resource_name, route=route)
            minimum += math.ceil(n / PER_PAGE)
    return minimum + sum(1 for e in entities.values() if e["in_scope"])


# --- 3: own overhead --------------------------------------------------------------------------


def own_overhead(*, size: str | int, rounds: int = 5) -> Figure:
    """A full migration's wall time / a bare httpx loop fetching the same pages, same process.

    The machine is shared, and one pair of timings swings by a fifth from one minute to
    the next, so ``rounds`` pairs are taken, each a bare fetch straight followed by a
    migration, and the figure is the median of the pairs' ratios; every pair is in the
    detail. So is, for each migration, the CPU its process spent (all threads: about its wall
    time, as the run is bound by one interpreter) and the machine's one-minute load average
    before each pair: the ratio is lowest when the machine is busiest, since the bare loop
    waits for the sandbox at every page and the engine, reading ahead, does not.
    """
    pairs: list[tuple[float, float]] = []
    cpu: list[float] = []
    load: list[float] = []
    with _Sandbox(size=size, rate_limit=0) as sandbox:
        source = sandbox.account("source")
        base = sandbox.info["url_template"].replace("{shard}", source["shard"])
        for _ in range(rounds):
            load.append(os.getloadavg()[0])
            bare_requests, bare_seconds = _bare_fetch(base, source["key"])
            with tempfile.TemporaryDirectory() as tmp:
                client, entities, seconds, cpu_seconds = _migrate(sandbox.info, Path(tmp))
            pairs.append((bare_seconds, seconds))
            cpu.append(cpu_seconds)
    ratios = sorted(engine / bare for bare, engine in pairs)
    ratio = round(statistics.median(ratios), 3)
    return Figure(
        "own_overhead",
        ratio,
        "<= 1.25",
        ratio <= 1.25,
        "",
        {
            "records": sum(e["in_scope"] for e in entities.values()),
            "bare_requests": bare_requests,
            "engine_requests": client.stats.requests,
            "rounds": rounds,
            "ratios": [round(r, 3) for r in ratios],
            "bare_seconds": [round(bare, 2) for bare, _ in pairs],
            "engine_seconds": [round(engine, 2) for _, engine in pairs],
            "engine_cpu_seconds": [round(c, 2) for c in cpu],
            "load_average": [round(x, 2) for x in load],
        },
    )


def _bare_fetch(base: str, key: str) -> tuple[int, float]:
    """Every list a full migration reads, page by page, with nothing but httpx."""
    requests = 0
    started = time.perf_counter()
    with httpx.Client(
        auth=(key, ""), headers={"User-Agent": "bench (bench@example.com)"}, timeout=60
    ) as http:
        for resource_name, route in SOURCE_LISTS:
            url: str | None = (
                f"{base}/{resource_name}{'/' + route if route else ''}?page=1&per_page={PER_PAGE}"
            )
            while url:
                body = http.get(url).json()
                requests += 1
                url = body["links"].get("next")
    return requests, time.perf_counter() - started


# --- 4: memory --------------------------------------------------------------------------------


def peak_memory(*, size: str | int) -> Figure:
    """Peak RSS of a full migration, run in a child process against a sandbox in another."""
    with _Sandbox(size=size, rate_limit=0) as sandbox:
        child = subprocess.run(
            [sys.executable, "-m", "migrator.bench", "--migrate-only", json.dumps(sandbox.info)],
            capture_output=True,
            text=True,
            check=False,
        )
    if child.returncode != 0:
        raise RuntimeError(f"the memory run failed: {child.stderr.strip().splitlines()[-1:]}")
    run = json.loads(child.stdout.strip().splitlines()[-1])
    peak = round(run["peak_rss_mb"], 1)
    return Figure("peak_memory_mb", peak, "< 500", peak < 500, "", {"size": size, **run})


def _migrate_only(info_json: str) -> None:
    """The child of :func:`peak_memory`: migrate, then print what it did and its peak RSS."""
    with tempfile.TemporaryDirectory() as tmp:
        client, entities, seconds, _ = _migrate(json.loads(info_json), Path(tmp))
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux
    print(
        json.dumps(
            {
                "records": sum(e["in_scope"] for e in entities.values()),
                "requests": client.stats.requests,
                "seconds": round(seconds, 1),
                "peak_rss_mb": peak_kb / 1024,
            }
        )
    )


# --- 5: destination writes --------------------------------------------------------------------


class _Recorder(httpx.BaseTransport):
    """An inner transport that notes when each request left and what status answered it.

    It sits under the client's pacing and retries, so it sees every attempt, 429s included.
    """

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner = inner
        self.sent: list[tuple[float, str, int]] = []  # (monotonic send time, method, status)
        self._lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        started = time.monotonic()
        response = self.inner.handle_request(request)
        with self._lock:
            self.sent.append((started, request.method.upper(), response.status_code))
        return response

    def close(self) -> None:
        self.inner.close()


def destination_writes(
    *, size: str | int, limit: int, window: float, workers: int = 4, latency_ms: float = 0
) -> list[Figure]:
    """Destination requests per window / the limit, over the writing phase of a Cliniko-to-Cliniko transfer.

    The sandbox limits every key to ``limit`` requests per ``window``; the source and the
    destination clients are both paced at that limit (separate keys, separate budgets;
    the destination's writes dominate). Practitioners missing from the destination are
    reassigned to the first mapped one, so their appointments are written too.

    The writing phase runs from the send time of the destination key's first write
    (a request other than GET) to that of its last; neither the setup before it
    (connecting, pre-flight, mapping) nor anything after it is counted. Every request of
    the destination key the sandbox served in that phase counts (its reads, such as an
    attachment's upload form or a duplicate check, spend the same budget), 429s do not;
    the rate is (served - 1) / seconds, since n requests at a steady pace span n - 1
    intervals. The client leaves two requests per window spare (``migrator.cliniko.pacing``),
    so the ceiling is (L - 2) / L: 0.99 at 200, 0.98 at 100. The 429s are those the
    destination key got from one window after its first request on (goal 0).
    ``latency_ms`` makes the sandbox answer that much later (the benchmark uses 0).
    """
    from migrator.destinations.cliniko import ClinikoDestination, preflight
    from migrator.workflow import auto_mapping, make_plan, run_plan, verify_source

    with _Sandbox(size=size, rate_limit=limit, rate_window=window, latency_ms=latency_ms) as sandbox:
        config = ClientConfig(
            url_template=sandbox.info["url_template"], requests_per_minute=limit, rate_window=window
        )
        pool = httpx.Limits(
            max_connections=config.concurrency + workers,
            max_keepalive_connections=config.concurrency + workers,
        )
        recorder = _Recorder(httpx.HTTPTransport(limits=pool))
        with (
            tempfile.TemporaryDirectory() as tmp,
            ClinikoClient(sandbox.account("source")["key"], config=config) as source,
            ClinikoClient(
                sandbox.account("destination")["key"], config=config, writable=True, transport=recorder
            ) as client,
        ):
            ledger = Ledger(Path(tmp) / "workspace")
            destination = ClinikoDestination.connect(client, ledger, source=source, workers=workers)
            try:
                preflight(source, destination).raise_for_refusal()
                identity = verify_source(source)
                rows = auto_mapping(source, destination)
                stand_in = next(r for r in rows if r.entity == "practitioners" and r.action == "map")
                rows = [
                    r.model_copy(
                        update={
                            "action": "reassign",
                            "target_id": stand_in.target_id,
                            "target_name": stand_in.target_name,
                        }
                    )
                    if r.action == "unresolved" and r.entity == "practitioners"
                    else r
                    for r in rows
                ]
                plan = make_plan(source, identity, destination, scope=Scope.parse("all"), mappings=rows)
                result = run_plan(plan, source, destination, ledger)
            finally:
                destination.close()
                ledger.close()
        served_by_sandbox = _key_tally(sandbox, "destination")
    sent = sorted(recorder.sent)
    served = [(t, method) for t, method, status in sent if status != 429]
    write_times = [t for t, method in served if method != "GET"]
    if len(write_times) < 2:
        raise RuntimeError("the destination_writes transfer wrote fewer than two records")
    first, last = write_times[0], write_times[-1]
    seconds = last - first
    in_phase = [method for t, method in served if first <= t <= last]
    ratio = round((len(in_phase) - 1) / seconds * window / limit, 3)
    late_429 = sum(1 for t, _, status in sent if status == 429 and t >= sent[0][0] + window)
    created = sum(e["created"] for e in result.entities.values())
    detail = {
        "size": size,
        "limit_per_window": limit,
        "window_seconds": window,
        "workers": workers,
        "latency_ms": latency_ms,
        "writing_seconds": round(seconds, 1),
        "windows": round(seconds / window, 2),
        "requests_in_writing_phase": len(in_phase),
        "writes_in_writing_phase": len(write_times),
        "writes_only_ratio": round((len(write_times) - 1) / seconds * window / limit, 3),
        "records_created": created,
        "destination_requests": len(served),
        "destination_429": len(sent) - len(served),
        "sandbox_served": served_by_sandbox["requests"],
        "sandbox_rate_limited": served_by_sandbox["rate_limited"],
        "source_requests": result.requests,
    }
    return [
        Figure("destination_writes", ratio, ">= 0.95", ratio >= 0.95, "", detail),
        Figure("destination_writes_429_after_first_window", late_429, "0", late_429 == 0, "", {}),
    ]


def _key_tally(sandbox: _Sandbox, role: str) -> dict[str, Any]:
    """The sandbox's own counts for one key role (served requests exclude 429s)."""
    base = sandbox.info["url_template"].split("{shard}")[0].rstrip("/")
    stats = httpx.get(f"{base}/_sandbox/stats", timeout=10).json()
    account = sandbox.account(role)["name"]
    found = [t for t in stats["keys"].values() if t.get("role") == role and t.get("account") == account]
    return {
        "requests": sum(int(t["requests"]) for t in found),
        "rate_limited": sum(int(t["rate_limited"]) for t in found),
    }


# --- the run ------------------------------------------------------------------------------------


def run_benchmark(
    *, quick: bool, only: Sequence[str] | None = None, log: Callable[[str], None] = print
) -> list[Figure]:
    """Every figure (or those named in ``only``), each with the command that reproduces it."""
    if quick:
        sizes: dict[str, str | int] = {
            "budget": "tiny",
            "efficiency": "tiny",
            "overhead": "tiny",
            "memory": "tiny",
            "writes": "tiny",
        }
        limit, window = 30, 3.0
        writes_limit, writes_window = 100, 2.0
    else:
        # 3,000 patients take about 1,500 requests: 2.5 windows of 600, so the run spans
        # more than two minutes at a real one-minute window.
        sizes = {"budget": 3000, "efficiency": "demo", "overhead": "demo", "memory": "large", "writes": 30}
        limit, window = 600, 60.0
        # Cliniko's own 200 per window, in 20-second windows: a 30-patient clinic takes about
        # 600 destination requests, three windows.
        writes_limit, writes_window = 200, 20.0
    steps: dict[str, Callable[[], list[Figure]]] = {
        "budget_use": lambda: budget_use(
            size=sizes["budget"], limit=limit, window=window, latency_ms=0, name="budget_use", goal=0.97
        ),
        "request_efficiency": lambda: request_efficiency(
            size=sizes["efficiency"], scopes=("all", "business", "practitioner")
        ),
        "own_overhead": lambda: [own_overhead(size=sizes["overhead"], rounds=1 if quick else 5)],
        "peak_memory": lambda: [peak_memory(size=sizes["memory"])],
        "destination_writes": lambda: destination_writes(
            size=sizes["writes"], limit=writes_limit, window=writes_window
        ),
        "latency_hiding": lambda: budget_use(
            size=sizes["budget"],
            limit=limit,
            window=window,
            latency_ms=LATENCY_MS,
            name="latency_hiding",
            goal=0.95,
        ),
    }
    figures: list[Figure] = []
    for step, measure in steps.items():
        if only and step not in only:
            continue
        log(f"measuring {step}…")
        started = time.monotonic()
        for figure in measure():
            figure.command = f"uv run python -m migrator.bench{' --quick' if quick else ''} --only {step}"
            figure.detail.setdefault("measured_in_seconds", round(time.monotonic() - started, 1))
            figures.append(figure)
            log("  " + figure.line())
    return figures


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m migrator.bench",
        description="Measure budget use, request efficiency, own overhead, memory, destination writes and "
        "latency hiding against the sandbox, each against its goal.",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes and short windows (a smoke test)")
    parser.add_argument("--json", action="store_true", help="print every figure as one JSON object")
    parser.add_argument(
        "--only",
        metavar="STEPS",
        help="comma-separated: budget_use, request_efficiency, own_overhead, peak_memory, "
        "destination_writes, latency_hiding",
    )
    parser.add_argument("--migrate-only", metavar="INFO", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.migrate_only:
        _migrate_only(args.migrate_only)
        return 0
    only = [s.strip() for s in args.only.split(",")] if args.only else None
    log: Callable[[str], None] = (lambda _: None) if args.json else print
    figures = run_benchmark(quick=args.quick, only=only, log=log)
    if args.json:
        print(json.dumps({"quick": args.quick, "figures": {f.name: asdict(f) for f in figures}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
