"""Delta Lake vs Apache Iceberg for the output tables, side by side.

    .venv/bin/python bench/table_formats.py [--rows 1000000] [--appends 150]
        [--bundle-rows 200] [--repeat 3] [--iceberg-merge-manifests]
        [--out-dir DIR]

Needs ``pyiceberg[sql-sqlite,pyarrow]`` (the ``bench`` extra) beside the
project's ``deltalake``. The same workload runs on both formats in one
process, with the ``slices`` table as the project stores it (its schema from
``topk/core/schema.py`` plus the derived ``date`` column, via
``topk.storage.tables.prepare``; partitioned by ``slice_length``/``date``
like ``tables.TABLES``):

- Delta: ``write_deltalake`` as ``topk/storage/tables.py`` calls it
  (``partition_by``, ``TABLE_CONFIG``: a checkpoint every 20 commits);
- Iceberg: ``pyiceberg`` with a local SQL catalog on SQLite and a local
  warehouse directory, identity partitions on ``slice_length`` and ``date``.

Per repeat, on fresh tables (the formats alternate which goes first):

1. a batch commit: create the table and write ``--rows`` slice rows over
   ``--days`` days in one commit;
2. a batch rerun: overwrite one day by a predicate (``date = D``) with as
   many new rows;
3. read latency: open the latest snapshot, register it in DuckDB as an
   Arrow dataset (Delta: ``to_pyarrow_dataset``; Iceberg has none, so the
   files its scan plans for ``date = D`` become a ``pyarrow.dataset``; DuckDB
   never downloads an extension) and run a top-100 over that day's rows;
4. a stream: ``--appends`` commits of ``--bundle-rows`` rows (1m, 1h and
   1d slices of one minute: 3 partitions per commit) into a new table; the
   time of every commit, and the first vs the last 50 commits;
5. files and bytes on disk after the appends, the same read on the streamed
   table, then what each offers to compact and expire: Delta
   ``optimize.compact`` + ``vacuum``; pyiceberg 0.12 has no
   ``rewrite_data_files``, so a full rewrite (``overwrite`` with its own
   scan) stands in, then ``expire_snapshots`` (metadata only: pyiceberg
   deletes no file).

Prints medians over --repeat runs and the ratio Iceberg/Delta (> 1: Delta
is faster or smaller). Progress goes to stderr.
"""
import argparse
import datetime as dt
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.dataset as pads  # noqa: E402

from topk.core.schema import DAY_MS, HOUR_MS, MINUTE_MS  # noqa: E402
from topk.storage import layout, tables  # noqa: E402

TABLE = layout.SLICES
PARTITIONS = tables.TABLES[TABLE][1]  # ["slice_length", "date"]
START_MS = 1_714_521_600_000  # 2024-05-01T00:00:00Z
EVENT_TYPES = np.array(["view", "click", "cart", "buy", "*"])
QUERY = ("SELECT item_id, sum(count) AS n FROM t WHERE date = '{day}' "
         "AND slice_length = '1m' GROUP BY item_id ORDER BY n DESC, item_id "
         "LIMIT 100")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --- Rows -------------------------------------------------------------------

def slice_rows(rng, n: int, start_ms: int, span_ms: int, items: int,
               source: str, lengths=(0.8, 0.15, 0.05)) -> pa.Table:
    """``n`` rows of the ``slices`` table over [start, start + span) as
    stored (``tables.prepare``: microsecond timestamps, ``date``)."""
    kinds = rng.choice(3, size=n, p=list(lengths))
    unit = np.array([MINUTE_MS, HOUR_MS, DAY_MS])[kinds]
    ts = start_ms + rng.integers(0, span_ms, size=n)
    ts = ts - ts % unit
    emitted = int(time.time() * 1000)
    rows = pa.table({
        "slice_start": pa.array(ts, pa.int64()).cast(
            pa.timestamp("ms", "UTC")),
        "slice_length": pa.array(np.array(["1m", "1h", "1d"])[kinds]),
        "event_type": pa.array(EVENT_TYPES[rng.integers(0, 5, size=n)]),
        "item_id": pa.array(np.char.add(
            "item-", rng.zipf(1.2, size=n).clip(max=items).astype(str))),
        "count": pa.array(rng.integers(1, 1000, size=n), pa.int64()),
        "source": pa.array([source] * n),
        "emitted_at": pa.array(np.full(n, emitted), pa.int64()).cast(
            pa.timestamp("ms", "UTC")),
    })
    return tables.prepare(TABLE, rows)


def disk_usage(path: str) -> tuple[int, int, int]:
    """(data files, log/metadata files, total bytes) under ``path``: Delta's
    Parquet checkpoints in ``_delta_log`` count as log files."""
    data = other = size = 0
    for d, _, files in os.walk(path):
        in_log = os.path.basename(d) in ("_delta_log", "metadata")
        for f in files:
            size += os.path.getsize(os.path.join(d, f))
            if f.endswith(".parquet") and not in_log:
                data += 1
            else:
                other += 1
    return data, other, size


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


# --- The two formats ---------------------------------------------------------

class Delta:
    name = "delta"

    def __init__(self, root: str, merge_manifests: bool = False):
        self.root = root

    def path(self, table: str) -> str:
        return os.path.join(self.root, table)

    def write(self, table: str, rows: pa.Table, predicate=None) -> None:
        # As topk.storage.tables._apply: append, or overwrite by predicate.
        from deltalake import DeltaTable, write_deltalake
        path = self.path(table)
        exists = DeltaTable.is_deltatable(path)
        mode = "overwrite" if predicate and exists else "append"
        write_deltalake(path, rows, mode=mode,
                        predicate=predicate if mode == "overwrite" else None,
                        partition_by=PARTITIONS,
                        configuration=None if exists else tables.TABLE_CONFIG)

    def create_and_write(self, table: str, rows: pa.Table) -> None:
        self.write(table, rows)

    def overwrite_day(self, table: str, rows: pa.Table, day: str) -> None:
        self.write(table, rows, predicate=f"date = '{day}'")

    def append(self, table: str, rows: pa.Table) -> None:
        self.write(table, rows)

    def register(self, con, table: str, day: str) -> None:
        from deltalake import DeltaTable
        con.register("t", DeltaTable(self.path(table)).to_pyarrow_dataset())

    def live_files(self, table: str) -> int:
        from deltalake import DeltaTable
        actions = DeltaTable(self.path(table)).get_add_actions()
        return pa.table(actions).num_rows

    def compact(self, table: str) -> float:
        from deltalake import DeltaTable
        path = self.path(table)
        return timed(lambda: DeltaTable(path).optimize.compact())[0]

    def expire(self, table: str) -> float:
        from deltalake import DeltaTable

        def run():
            t = DeltaTable(self.path(table))
            t.vacuum(retention_hours=0, dry_run=False,
                     enforce_retention_duration=False)
            t.create_checkpoint()
            t.cleanup_metadata()
        return timed(run)[0]

    def close(self) -> None:
        pass


class Iceberg:
    name = "iceberg"

    def __init__(self, root: str, merge_manifests: bool = False):
        from pyiceberg.catalog.sql import SqlCatalog
        self.root = root
        self.properties = ({"commit.manifest-merge.enabled": "true"}
                           if merge_manifests else {})
        os.makedirs(os.path.join(root, "warehouse"), exist_ok=True)
        self.catalog = SqlCatalog(
            "bench", uri=f"sqlite:///{os.path.join(root, 'catalog.db')}",
            warehouse=f"file://{os.path.join(root, 'warehouse')}")
        self.catalog.create_namespace("topk")
        self.tables = {}

    def path(self, table: str) -> str:
        location = self.catalog.load_table(f"topk.{table}").location()
        return location.removeprefix("file://")

    def create_and_write(self, table: str, rows: pa.Table) -> None:
        tbl = self.catalog.create_table(f"topk.{table}", schema=rows.schema,
                                        properties=self.properties)
        with tbl.update_spec() as spec:
            for column in PARTITIONS:
                spec.add_identity(column)
        if rows.num_rows:
            tbl.append(rows)
        self.tables[table] = tbl

    def overwrite_day(self, table: str, rows: pa.Table, day: str) -> None:
        from pyiceberg.expressions import EqualTo
        self.tables[table].overwrite(rows,
                                     overwrite_filter=EqualTo("date", day))

    def append(self, table: str, rows: pa.Table) -> None:
        # A long-running stream keeps its Table object: no reload per commit.
        self.tables[table].append(rows)

    def register(self, con, table: str, day: str) -> None:
        from pyiceberg.expressions import EqualTo
        tbl = self.catalog.load_table(f"topk.{table}")  # latest snapshot
        scan = tbl.scan(row_filter=EqualTo("date", day))
        tasks = list(scan.plan_files())
        if any(task.delete_files for task in tasks):  # merge-on-read deletes
            con.register("t", scan.to_arrow_batch_reader())
            return
        # The data files of the planned scan (pruned by partition and
        # column statistics) as an Arrow dataset: DuckDB pushes its
        # projection and filter into it, as into Delta's.
        files = [task.file.file_path.removeprefix("file://") for task in tasks]
        con.register("t", pads.dataset(files, format="parquet")
                     if files else tbl.schema().as_arrow().empty_table())

    def live_files(self, table: str) -> int:
        return len(list(self.catalog.load_table(f"topk.{table}")
                        .scan().plan_files()))

    def compact(self, table: str) -> float:
        # pyiceberg 0.12 has no rewrite_data_files: rewrite it all.
        def run():
            tbl = self.catalog.load_table(f"topk.{table}")
            tbl.overwrite(tbl.scan().to_arrow())
            self.tables[table] = tbl
        return timed(run)[0]

    def expire(self, table: str) -> float:
        def run():
            tbl = self.catalog.load_table(f"topk.{table}")
            newer = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=1)
            tbl.maintenance.expire_snapshots().older_than(newer).commit()
        return timed(run)[0]

    def close(self) -> None:
        self.catalog.engine.dispose()


# --- One run ----------------------------------------------------------------

def read_ms(fmt, table: str, day: str, reads: int) -> tuple[float, int]:
    """Median ms to open the latest snapshot, register it in DuckDB and run
    the top-100 of ``day``; and the rows the day's 1m slices hold."""
    import duckdb
    times = []
    for _ in range(reads):
        con = duckdb.connect()
        con.execute("SET TimeZone = 'UTC'")
        con.execute("SET autoinstall_known_extensions = false")
        con.execute("SET autoload_known_extensions = false")
        t = time.perf_counter()
        fmt.register(con, table, day)
        con.sql(QUERY.format(day=day)).fetchall()
        times.append(time.perf_counter() - t)
        n = con.sql(f"SELECT count(*) FROM t WHERE date = '{day}' "
                    "AND slice_length = '1m'").fetchall()[0][0]
        con.close()
    return statistics.median(times) * 1000, n


def run_format(fmt, args, seed: int, r: dict) -> None:
    rng = np.random.default_rng(seed)
    days = args.days
    day = dt.date(2024, 5, 1 + days // 2).isoformat()
    day_ms = START_MS + (days // 2) * DAY_MS

    batch = slice_rows(rng, args.rows, START_MS, days * DAY_MS, args.items,
                       "stream")
    r["batch_write_s"], _ = timed(lambda: fmt.create_and_write("batch", batch))
    log(f"  {fmt.name}: batch commit of {args.rows:,} rows "
        f"{r['batch_write_s']:.2f} s")
    rerun = slice_rows(rng, args.rows // days, day_ms, DAY_MS, args.items,
                       "batch")
    r["overwrite_s"], _ = timed(lambda: fmt.overwrite_day("batch", rerun, day))
    log(f"  {fmt.name}: overwrite of {day} ({rerun.num_rows:,} rows) "
        f"{r['overwrite_s']:.2f} s")
    r["read_batch_ms"], n = read_ms(fmt, "batch", day, args.reads)
    log(f"  {fmt.name}: read {day} into DuckDB {r['read_batch_ms']:.0f} ms "
        f"({n:,} 1m rows)")

    bundles = [slice_rows(rng, args.bundle_rows, START_MS + i * MINUTE_MS,
                          MINUTE_MS, args.items, "stream",
                          lengths=(0.9, 0.075, 0.025))
               for i in range(args.appends)]
    fmt.create_and_write("stream", bundles[0].schema.empty_table())
    commits = []
    for i, bundle in enumerate(bundles):
        commits.append(timed(lambda: fmt.append("stream", bundle))[0] * 1000)
        if (i + 1) % max(1, args.appends // 4) == 0:
            log(f"  {fmt.name}: {i + 1}/{args.appends} appends, last "
                f"{commits[-1]:.0f} ms")
    edge = min(50, max(1, len(commits) // 3))
    r["append_med_ms"] = statistics.median(commits)
    r["append_p95_ms"] = float(np.percentile(commits, 95))
    r["append_first_ms"] = statistics.median(commits[:edge])
    r["append_last_ms"] = statistics.median(commits[-edge:])
    r["appends_total_s"] = sum(commits) / 1000
    files, other, size = disk_usage(fmt.path("stream"))
    r["stream_data_files"], r["stream_meta_files"] = files, other
    r["stream_mb"] = size / 1e6
    stream_day = dt.date(2024, 5, 1).isoformat()
    r["read_stream_ms"], _ = read_ms(fmt, "stream", stream_day, args.reads)
    r["compact_s"] = fmt.compact("stream")
    r["expire_s"] = fmt.expire("stream")
    r["live_files_after"] = fmt.live_files("stream")
    files, other, size = disk_usage(fmt.path("stream"))
    r["files_after"], r["mb_after"] = files + other, size / 1e6
    r["read_compacted_ms"], _ = read_ms(fmt, "stream", stream_day, args.reads)
    log(f"  {fmt.name}: appends median {r['append_med_ms']:.0f} ms, "
        f"{r['stream_data_files']} data files; compact {r['compact_s']:.2f} s"
        f", expire {r['expire_s']:.2f} s")


ROWS = [  # (key, label, format)
    ("batch_write_s", "batch commit: create + write {rows} rows, s", ".2f"),
    ("overwrite_s", "overwrite one day by predicate, s", ".2f"),
    ("read_batch_ms", "read one day (top-100) in DuckDB, ms", ".0f"),
    ("append_med_ms", "append of {bundle} rows: median ms", ".1f"),
    ("append_p95_ms", "append: p95 ms", ".1f"),
    ("append_first_ms", "append: median of first {edge}, ms", ".1f"),
    ("append_last_ms", "append: median of last {edge}, ms", ".1f"),
    ("appends_total_s", "{appends} appends in all, s", ".1f"),
    ("stream_data_files", "after appends: data files", ".0f"),
    ("stream_meta_files", "after appends: log/metadata files", ".0f"),
    ("stream_mb", "after appends: MB on disk", ".2f"),
    ("read_stream_ms", "read streamed day (small files), ms", ".0f"),
    ("compact_s", "compact (optimize.compact | full rewrite), s", ".2f"),
    ("expire_s", "expire (vacuum | expire_snapshots), s", ".2f"),
    ("live_files_after", "after compact+expire: live data files", ".0f"),
    ("files_after", "after compact+expire: files on disk", ".0f"),
    ("mb_after", "after compact+expire: MB on disk", ".2f"),
    ("read_compacted_ms", "read streamed day after compaction, ms", ".0f"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000,
                        help="Slice rows of the batch commit (default 1M).")
    parser.add_argument("--days", type=int, default=7,
                        help="Days the batch rows span (default 7); the "
                        "overwrite and the read take the middle one.")
    parser.add_argument("--appends", type=int, default=150,
                        help="Stream commits (default 150).")
    parser.add_argument("--bundle-rows", type=int, default=200,
                        help="Rows per stream commit (default 200).")
    parser.add_argument("--items", type=int, default=20_000,
                        help="Distinct item ids, Zipf 1.2 (default 20k).")
    parser.add_argument("--reads", type=int, default=5,
                        help="Reads per measurement within a run; their "
                        "median counts (default 5).")
    parser.add_argument("--repeat", type=int, default=3,
                        help="Runs per format; medians are printed "
                        "(default 3).")
    parser.add_argument("--iceberg-merge-manifests", action="store_true",
                        help="Create the Iceberg tables with "
                        "commit.manifest-merge.enabled=true (pyiceberg's "
                        "default is off: every append adds a manifest).")
    parser.add_argument("--out-dir", default=None,
                        help="Directory for the tables (default: a new "
                        "temporary directory, removed at the end; a given "
                        "directory is kept, its run subdirectories removed).")
    args = parser.parse_args()

    import deltalake
    import duckdb
    import pyiceberg

    base = args.out_dir or tempfile.mkdtemp(prefix="topk-table-formats-")
    os.makedirs(base, exist_ok=True)
    results = {"delta": [], "iceberg": []}
    log(f"deltalake {deltalake.__version__}, pyiceberg {pyiceberg.__version__}"
        f", duckdb {duckdb.__version__}, pyarrow {pa.__version__}; "
        f"{os.cpu_count()} cores; tables under {base}")
    try:
        for rep in range(args.repeat):
            order = [Delta, Iceberg] if rep % 2 == 0 else [Iceberg, Delta]
            for cls in order:
                root = os.path.join(base, f"{cls.name}-{rep}")
                log(f"run {rep + 1}/{args.repeat}: {cls.name}")
                fmt = cls(root, args.iceberg_merge_manifests)
                r = {}
                try:
                    run_format(fmt, args, seed=rep, r=r)
                finally:
                    fmt.close()
                    shutil.rmtree(root, ignore_errors=True)
                results[cls.name].append(r)
    finally:
        if args.out_dir is None:
            shutil.rmtree(base, ignore_errors=True)

    edge = min(50, max(1, args.appends // 3))
    print(f"\nslices table, {args.rows:,} batch rows over {args.days} days, "
          f"{args.appends} appends of {args.bundle_rows} rows; medians of "
          f"{args.repeat} runs; {os.cpu_count()} cores; Iceberg manifest "
          f"merge {'on' if args.iceberg_merge_manifests else 'off'}; "
          f"deltalake "
          f"{deltalake.__version__}, pyiceberg {pyiceberg.__version__}, "
          f"duckdb {duckdb.__version__}; load average at the end "
          f"{os.getloadavg()[0]:.1f}")
    print(f"| {'measure':<50} | {'Delta':>9} | {'Iceberg':>9} | "
          f"{'Ice/Delta':>9} |")
    print(f"| {'-' * 50} | {'-' * 8}: | {'-' * 8}: | {'-' * 8}: |")
    for key, label, spec in ROWS:
        d = statistics.median(r[key] for r in results["delta"])
        i = statistics.median(r[key] for r in results["iceberg"])
        ratio = f"{i / d:.2f}x" if d else "-"
        label = label.format(rows=f"{args.rows:,}", bundle=args.bundle_rows,
                             edge=edge, appends=args.appends)
        print(f"| {label:<50} | {d:>9{spec}} | {i:>9{spec}} | {ratio:>9} |")


if __name__ == "__main__":
    main()
