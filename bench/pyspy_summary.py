"""Summarise a py-spy raw profile (`--format raw --threads`): where the daemon's time goes.

Run alone on a saved profile: `python bench/pyspy_summary.py bench/results/profile-….txt`.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def _short(path: str) -> str:
    if "/mailbridge/" in path:
        return "mailbridge/" + path.rsplit("/mailbridge/", 1)[1]
    for marker in ("site-packages/", "/work/main/", "lib/python3.11/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def _key(frame: str) -> str:
    match = _FRAME.match(frame)
    if match is None:
        return frame
    return f"{match['func']} ({_short(match['file'])})"


_LIBRARIES = (
    ("DefaultDialect.do_", "sqlite3 (SQL execution, commit)"),
    ("sqlalchemy/", "SQLAlchemy (ORM and Core, Python side)"),
    ("mailparser_reply/", "mail-parser-reply"),
    ("mailparser/", "mail-parser"),
    ("email/", "stdlib email (parse, headers, generate)"),
    ("jinja2/", "Jinja2"),
    ("aiosmtpd/", "aiosmtpd"),
    ("asyncio/", "asyncio"),
    ("smtplib", "smtplib (relay)"),
    ("mailbridge/", "mailbridge's own code"),
)


def _library(key: str) -> str:
    """Which library a frame (on top of the stack) belongs to."""
    for marker, name in _LIBRARIES:
        if marker in key:
            return name
    return "other (stdlib re, json, logging …)"


def summarize(path: Path, top: int = 25) -> dict[str, Any]:
    threads: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    leaf: Counter[str] = Counter()
    libraries: Counter[str] = Counter()
    by_thread_inclusive: dict[str, Counter[str]] = {}
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        if frames[0].startswith("thread ("):
            # "thread (123): name" comes first with --threads
            name = frames[0].split(": ", 1)[1] if ": " in frames[0] else frames[0]
            frames = frames[1:]
        else:
            name = "?"
        thread_name = re.sub(r"_\d+$", "_N", name)  # asyncio_0, asyncio_1 … together
        total += count
        threads[thread_name] += count
        keys = [_key(f) for f in frames]
        for key in set(keys):
            inclusive[key] += count
            by_thread_inclusive.setdefault(thread_name, Counter())[key] += count
        if keys:
            leaf[keys[-1]] += count
            libraries[_library(keys[-1])] += count

    def share(counter: Counter[str], n: int) -> list[dict[str, Any]]:
        return [{"frame": k, "samples": v, "share": round(v / total, 4) if total else 0.0}
                for k, v in counter.most_common(n)]

    project = Counter({k: v for k, v in inclusive.items() if "mailbridge/" in k})
    return {
        "samples": total,
        "project": share(project, top * 2),
        "libraries": share(libraries, 15),
        "threads": share(threads, 20),
        "inclusive": share(inclusive, top),
        "self": share(leaf, top),
        "per_thread": {
            name: share(counter, 15)
            for name, counter in by_thread_inclusive.items()
            if threads[name] >= 0.02 * total
        },
    }


def render(summary: dict[str, Any], top: int = 20) -> str:
    lines = [f"py-spy samples (threads busy, all threads): {summary['samples']}", "",
             "threads:"]
    lines += [f"  {row['share']:6.1%}  {row['frame']}" for row in summary["threads"]]
    lines += ["", "inclusive (a frame anywhere on the stack):"]
    lines += [f"  {row['share']:6.1%}  {row['frame']}" for row in summary["inclusive"][:top]]
    lines += ["", "self time by library:"]
    lines += [f"  {row['share']:6.1%}  {row['frame']}" for row in summary.get("libraries", [])]
    lines += ["", "mailbridge's own functions, inclusive:"]
    lines += [f"  {row['share']:6.1%}  {row['frame']}" for row in summary.get("project", [])]
    lines += ["", "self (the frame on top):"]
    lines += [f"  {row['share']:6.1%}  {row['frame']}" for row in summary["self"][:top]]
    for name, rows in summary["per_thread"].items():
        lines += ["", f"thread {name}, inclusive:"]
        lines += [f"  {row['share']:6.1%}  {row['frame']}" for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    summary = summarize(args.profile, args.top)
    if args.json:
        json.dump(summary, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(render(summary, args.top) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
