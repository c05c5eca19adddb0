"""Commit growth: what a stream's one-commit-a-second output costs as it
runs, with and without the compaction the stream's sink does
(``WriteTablesBuffered(maintain_every=)``), side by side in one run.

    .venv/bin/python bench/commit_growth.py --commits 1500 --maintain-every 300

Each contender appends one ``slices`` row per commit (``tables.commit``, as
the sink does) to its own output and, every ``--report-every`` commits,
prints the last commit's time, ``tables.snapshot`` (median of 5) and a full
read of the slices table. Without compaction every commit adds files, and
opening a table costs about what its files number.
"""
import argparse
import os
import shutil
import statistics
import time

import pyarrow as pa

from topk.core import counting, schema
from topk.storage import layout, tables


def one_row() -> pa.Table:
    counts = pa.table({"event_type": ["play"],
                       "slice_start": pa.array([1_700_000_000_000], pa.int64()),
                       "item_id": ["a"], "count": pa.array([1], pa.int64())},
                      schema=schema.SLICE_COUNTS_SCHEMA)
    return tables.prepare(layout.SLICES, counting.to_slices_table(
        counts, "1m", "stream", 1))


def ms(seconds: float) -> str:
    return f"{seconds * 1000:,.0f} ms"


def run(out: str, commits: int, maintain_every: int, report_every: int,
        label: str) -> None:
    shutil.rmtree(out, ignore_errors=True)
    rows = one_row()
    for i in range(1, commits + 1):
        started = time.perf_counter()
        tables.commit(out, [tables.Change(layout.SLICES, rows)], "stream")
        commit_s = time.perf_counter() - started
        if maintain_every and i % maintain_every == 0:
            tables.maintain(out)
        if i % report_every == 0:
            snaps = []
            for _ in range(5):
                started = time.perf_counter()
                tables.snapshot(out)
                snaps.append(time.perf_counter() - started)
            started = time.perf_counter()
            n = tables.dataset(out, layout.SLICES).count_rows()
            read_s = time.perf_counter() - started
            files = len(tables.dataset(out, layout.SLICES).files)
            print(f"{label:<20} {i:>7,} {ms(commit_s):>10} "
                  f"{ms(statistics.median(snaps)):>10} {ms(read_s):>10} "
                  f"{files:>7,} {n:>7,}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--commits", type=int, default=1500,
                        help="Commits per contender (default 1500).")
    parser.add_argument("--maintain-every", type=int, default=300,
                        help="Commits between compactions of the compacting "
                        "contender (default 300; the sink's default is 600).")
    parser.add_argument("--report-every", type=int, default=250,
                        help="Commits between two printed lines (default 250).")
    parser.add_argument("--dir", default="/tmp/topk-bench-commit-growth",
                        help="Work directory (one output per contender).")
    args = parser.parse_args()
    os.makedirs(args.dir, exist_ok=True)
    print(f"{'contender':<20} {'commits':>7} {'commit':>10} {'snapshot':>10} "
          f"{'read':>10} {'files':>7} {'rows':>7}")
    run(os.path.join(args.dir, "plain"), args.commits, 0, args.report_every,
        "no compaction")
    run(os.path.join(args.dir, "compacted"), args.commits,
        args.maintain_every, args.report_every,
        f"compact every {args.maintain_every}")


if __name__ == "__main__":
    main()
