"""For the in-process benches: repeat a run (SQLite or a private PostgreSQL), keep the best."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def report_best(args: argparse.Namespace, run: Callable[[argparse.Namespace], dict[str, Any]],
                key: str) -> int:
    """Run `run(args)` `args.repeat` times on `args.tree`'s mailbridge and print the result
    with the lowest `key` as JSON. With `args.postgres`, `args.server` is a private durable
    PostgreSQL for the runs (stopped afterwards); otherwise None."""
    sys.path.insert(0, str(Path(args.tree).resolve()))
    sys.path.insert(1, str(REPO / "bench"))
    args.server = None
    if args.postgres:
        from workers import start_postgres

        args.server = start_postgres(Path(args.tree).resolve(), durable=True)
    try:
        results = [run(args) for _ in range(args.repeat)]
    finally:
        if args.server is not None:
            args.server.stop()
    best = min(results, key=lambda r: r[key])
    sys.stdout.write(json.dumps(best, indent=2) + "\n")
    return 0
