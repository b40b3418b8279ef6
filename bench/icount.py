"""The pipeline's instructions per mail, counted by valgrind: a figure that does not move
with the machine's load or clock, for comparing source trees.

    .venv/bin/python bench/icount.py --tree /path/to/before --tree . --mails 200   # ~3 min

Each tree runs `bench/inproc.py --pipeline-only --batch 1` under `valgrind --tool=cachegrind`
(Debian's valgrind; counting only, no cache simulation) twice: with the pipeline and
with `--no-pipeline` (the corpus built and stored, the same mails). The difference over
the mails is the pipeline's instructions per mail. One transaction per mail, since a
batch's length depends on time (`BATCH_HOLD`) and valgrind runs ~50x slower.
Hash randomisation is fixed (PYTHONHASHSEED=0): two runs of one tree agree to ~1e-5.
Runs go two at a time (the cores this machine has). Each tree's bytecode is compiled
first: without it (PYTHONDONTWRITEBYTECODE, a fresh checkout) every run would compile
the package again, ~0.7 G instructions.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
_REFS = re.compile(r"I\s+refs:\s+([\d,]+)")


def count(tree: Path, mails: int, *extra: str) -> int:
    """Instructions valgrind counted for one inproc run on `tree`."""
    cmd = ["valgrind", "--tool=cachegrind", "--cache-sim=no",
           "--cachegrind-out-file=/dev/null", PYTHON, str(REPO / "bench" / "inproc.py"),
           "--mails", str(mails), "--batch", "1", "--pipeline-only", "--tree", str(tree),
           "--tag", "icount1796000000",
           *extra]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    found = _REFS.search(done.stderr)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"{tree}: valgrind run failed:\n{done.stderr[-2000:]}")
    return int(found.group(1).replace(",", ""))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", action="append", default=[],
                        help="a mailbridge source tree (repeat; default: this one)")
    parser.add_argument("--mails", type=int, default=200)
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 2
    trees = [Path(t).resolve() for t in (args.tree or [str(REPO)])]
    started = time.monotonic()
    for tree in trees:  # else a tree without bytecode compiles it in every counted run
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        subprocess.run([PYTHON, "-m", "compileall", "-q", str(tree / "mailbridge")],
                       env=env, check=True)
    with ThreadPoolExecutor(args.jobs) as pool:
        jobs = {(t, kind): pool.submit(count, t, args.mails,
                                       *(["--no-pipeline"] if kind == "fixed" else []))
                for t in trees for kind in ("fixed", "all")}
        counted = {key: job.result() for key, job in jobs.items()}
    rows = []
    for tree in trees:
        per_mail = (counted[tree, "all"] - counted[tree, "fixed"]) / args.mails
        rows.append({"tree": str(tree), "instructions_all": counted[tree, "all"],
                     "instructions_fixed": counted[tree, "fixed"],
                     "pipeline_minstr_per_mail": round(per_mail / 1e6, 2)})
    first = rows[0]["pipeline_minstr_per_mail"]
    for row in rows:
        row["ratio_to_first"] = round(row["pipeline_minstr_per_mail"] / first, 3)
    report = {"mails": args.mails, "seconds": round(time.monotonic() - started, 1),
              "trees": rows}
    print(json.dumps(report, indent=2))
    results = REPO / "bench" / "results"
    results.mkdir(exist_ok=True)
    saved = results / f"icount-{time.strftime('%Y%m%dT%H%M%S')}.json"
    saved.write_text(json.dumps(report, indent=2) + "\n")
    for row in rows:
        print(f"{row['pipeline_minstr_per_mail']:8.2f} M instructions per mail "
              f"({row['ratio_to_first']:.3f}x)  {row['tree']}")
    print(f"saved {saved.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
