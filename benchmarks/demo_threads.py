"""How far may a newcomer's ``make demo`` fall from the README's table? The demo at several thread counts.

The thread count changes the order of floating-point sums (convolutions, reductions) and so, over a
few hundred steps, the whole trajectory of every training in the demo, teacher included; the seed
does not pin it. This script runs ``avatarkd demo`` from scratch (teacher included) once per
thread count, each in a fresh process with ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` set, one after
the other (nothing else should run meanwhile: the first count's wall clock is the README's), and
reports every arm's metric per thread count and its range across them. A thread count's finished
run is reused while the hash of ``avatarkd/``'s code and of the demo's resolved configs is the one
it ran with (``source_hash``), so the counts may run at different times (e.g. the 1-thread run on
one core while the other is busy: its metrics do not depend on that; only the first count's wall
clock must come from quiet cores).

The first thread count's run is also written to ``docs/demo.json`` (the README's table).

    python benchmarks/demo_threads.py                    # 2, then 1 thread: docs/demo.json, docs/bench/
    python benchmarks/demo_threads.py --threads 2 1 4    # more counts (more threads than cores still changes the sums)
    python benchmarks/demo_threads.py --quick            # a check that it runs (6 steps per arm, temp output)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from avatarkd.atomic import atomic_write_json, atomic_write_text  # noqa: E402
from benchmarks._study import json_hash, tree_hash  # noqa: E402

OUT = ROOT / "benchmarks" / "out" / "demo_threads"


def run_demo(threads: int, out: Path, quick: bool, source: str) -> dict[str, Any]:
    """One ``avatarkd demo`` in a fresh process at ``threads`` threads (or its finished run on the same
    source); its summary JSON."""
    summary = out / f"threads{threads}.json"
    if summary.is_file():
        done = json.loads(summary.read_text())
        if done.get("source_hash") == source and done.get("quick") == quick:
            print(f"{threads} thread(s): reusing {summary}")
            return done
    folder = out / f"threads{threads}"
    if folder.exists():  # a fresh run every time: a reused teacher would hide its own variation
        shutil.rmtree(folder)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "avatarkd", "demo", "--output-dir", str(folder), "--json", str(summary)]
    subprocess.run(cmd + (["--quick"] if quick else []), env=env, check=True, cwd=ROOT)
    done = {**json.loads(summary.read_text()), "threads": threads, "source_hash": source}
    atomic_write_json(summary, done)
    return done


def source_hash() -> str:
    """The code of ``avatarkd/`` and the demo's configs as parsed (a comment edit does not count)."""
    from avatarkd import demo

    names = sorted({demo.TEACHER, *(config for _, config, _ in demo.ARMS)})
    return json_hash({"code": tree_hash(ROOT / "avatarkd"), "configs": {n: demo.packaged_config(n) for n in names}})


def spread(runs: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    """Per arm: mIoU at each thread count, and max - min across them (x100)."""
    arms = [a["arm"] for a in next(iter(runs.values()))["arms"]]
    rows = []
    for i, arm in enumerate(arms):
        values = {n: run["arms"][i]["metrics"]["miou"] for n, run in runs.items()}
        rows.append(
            {
                "arm": arm,
                "miou": {str(n): round(v, 4) for n, v in values.items()},
                "range_x100": round(100 * (max(values.values()) - min(values.values())), 2),
            }
        )
    return rows


def table(rows: list[dict[str, Any]], runs: dict[int, dict[str, Any]]) -> str:
    counts = list(runs)
    head = "| arm | " + " | ".join(f"{n} thread{'s' if n > 1 else ''}" for n in counts) + " | range (x100) |"
    lines = [head, "|---" * (len(counts) + 2) + "|"]
    for r in rows:
        cells = " | ".join(f"{r['miou'][str(n)]:.4f}" for n in counts)
        lines.append(f"| {r['arm']} | {cells} | {r['range_x100']:.2f} |")
    walls = ", ".join(f"{n} thread(s) {run['total_wall_seconds'] / 60:.1f} min" for n, run in runs.items())
    lines.append(f"\nTotal wall clock per demo: {walls}.")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, nargs="+", default=[2, 1], help="thread counts, the README's first")
    ap.add_argument("--quick", action="store_true", help="6 steps per arm in a temp dir; writes nothing in docs/")
    args = ap.parse_args()
    if len(set(args.threads)) != len(args.threads) or min(args.threads) < 1:
        raise SystemExit(f"--threads: distinct positive counts, got {args.threads}")
    out = Path(tempfile.mkdtemp(prefix="demo_threads_")) if args.quick else OUT
    source = source_hash()
    runs = {n: run_demo(n, out, args.quick, source) for n in args.threads}
    rows = spread(runs)
    text = table(rows, runs)
    print(text)
    doc = {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "threads": args.threads,
        "source_hash": source,
        "arms": rows,
        "total_wall_seconds": {str(n): run["total_wall_seconds"] for n, run in runs.items()},
        "runs": {str(n): run for n, run in runs.items()},
    }
    if args.quick:
        shutil.rmtree(out)
        return
    atomic_write_json(out / "demo_threads.json", doc)
    atomic_write_json(ROOT / "docs" / "bench" / "demo_threads.json", doc)
    atomic_write_text(ROOT / "docs" / "bench" / "demo_threads.txt", text + "\n")
    atomic_write_json(ROOT / "docs" / "demo.json", runs[args.threads[0]])


if __name__ == "__main__":
    main()
