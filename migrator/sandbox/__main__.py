"""``python -m migrator.sandbox``: serve the sandbox clinics over HTTP.

Prints one JSON line once the socket is bound and the data loaded (and writes it
to ``--info-file``): the URL template, every key with its account and role, and
the per-account totals. Stops cleanly on SIGINT or SIGTERM.

    python -m migrator.sandbox --port 8765 --size demo --rate-limit 200
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

from migrator.sandbox.faults import FAULT_KINDS
from migrator.sandbox.runner import bind_socket, build_info, make_app, uvicorn_server


def _size(text: str) -> str | int:
    return int(text) if text.isdigit() else text


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m migrator.sandbox", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="TCP port; 0 picks a free one")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--size", type=_size, default="demo", help="tiny, demo, large or a number of patients"
    )
    parser.add_argument("--rate-limit", type=int, default=200, help="requests per user per window; 0 = off")
    parser.add_argument("--rate-window", type=float, default=60.0, help="seconds (default 60)")
    parser.add_argument("--faults", type=float, default=0.0, help="probability of a fault per API request")
    parser.add_argument(
        "--fault-kinds",
        default=",".join(FAULT_KINDS),
        help=f"comma-separated subset of {','.join(FAULT_KINDS)}",
    )
    parser.add_argument("--stall", type=float, default=35.0, help="seconds a stall fault holds (default 35)")
    parser.add_argument("--latency", "--latency-ms", dest="latency_ms", type=float, default=0.0, help="ms")
    parser.add_argument("--ids", choices=("mixed", "str", "int"), default="mixed")
    parser.add_argument("--info-file", type=Path, help="also write the info JSON here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    kinds = tuple(k.strip() for k in args.fault_kinds.split(",") if k.strip())
    try:
        app = make_app(
            args.size,
            args.seed,
            rate_limit=args.rate_limit,
            rate_window=args.rate_window,
            faults=args.faults,
            fault_kinds=kinds,
            stall=args.stall,
            latency_ms=args.latency_ms,
            ids=args.ids,
        )
        sock = bind_socket(args.host, args.port)
    except (ValueError, OSError) as exc:
        print(f"sandbox: {exc}", file=sys.stderr)
        return 2
    info = build_info(app, args.host, sock.getsockname()[1])
    line = json.dumps(info, ensure_ascii=False)
    print(line, flush=True)
    if args.info_file:
        # write then rename, so a reader never sees half a file
        fd, tmp = tempfile.mkstemp(dir=args.info_file.parent, prefix=".info-")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(line + "\n")
        os.replace(tmp, args.info_file)
    print(f"sandbox: ready in {time.monotonic() - started:.1f} s", file=sys.stderr, flush=True)
    server = uvicorn_server(app)

    def stop(signum: int, frame: object) -> None:
        # first signal: graceful shutdown; a second one: don't wait for open requests
        if server.should_exit:
            server.force_exit = True
        server.should_exit = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        server.run(sockets=[sock])
    finally:
        app.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
