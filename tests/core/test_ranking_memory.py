"""Ranking memory follows the windows, not the span of the data (no Beam).

The per-shard ranking walks event time a chunk of windows at a time over
sparse count segments (``ranking.iter_shard_top_k``). These tests check it
against the brute-force oracle (tests/oracle.py): with tiny chunks and steps
(every chunk and step edge exercised), and over a long, sparse span (years
of one-minute panes, thousands of items) in a child process whose address
space is capped far below what a dense (pane x item) block would need.
"""
import os
import random
import subprocess
import sys
import textwrap

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from topk.core import counting, ranking, schema, sharding
from topk.core.windows import WindowSpec

import oracle  # tests/ is on sys.path (conftest.py)

MINUTE, DAY = oracle.MINUTE_MS, oracle.DAY_MS
#: 2024-05-17T00:00:00Z: a 30-day window starts here.
T30 = 19860 * DAY
SPECS = [WindowSpec.parse(name) for name in oracle.WINDOW_SPECS]


def random_events(n, items, span_ms, seed, weights=False):
    rng = random.Random(seed)
    out = []
    for i in range(n):
        item = f"i{min(int(rng.paretovariate(0.8)), items) :05d}"
        if rng.random() < 0.3:  # a uniform tail: thousands of items
            item = f"i{rng.randrange(items):05d}"
        out.append(oracle.Event(
            f"e{i}", item, rng.choice(["play", "click"]),
            T30 + rng.randrange(span_ms), None,
            rng.randint(1, 5) if weights else 1))
    return out


def event_table(evs) -> pa.Table:
    return pa.table({
        "event_id": [e.event_id for e in evs],
        "item_id": [e.item_id for e in evs],
        "event_type": [e.event_type for e in evs],
        "ts": pa.array([e.ts for e in evs], pa.int64()),
        "user_id": pa.array([e.user_id for e in evs], pa.string()),
        "weight": pa.array([e.weight for e in evs], pa.int64()),
    }, schema=schema.EVENT_SCHEMA)


def shards_of(counts, n):
    shard = sharding.shard_of(counts["item_id"], n)
    return [rows for _, rows in sharding.split_by_shard(counts, shard, n)]


def rows_of(merged: pa.Table):
    return [(r["event_type"], r["window_start"], r["rank"], r["item_id"],
             r["count"], r["window_total"]) for r in merged.to_pylist()]


def ranked_by_chunks(counts, specs, k, shards, runs=False):
    """The pipeline's way: every shard's chunks, merged per (spec, chunk);
    also checks that chunks hold their windows only and come in order.
    With ``runs``, shards send runs of windows (``WindowTopKRuns``), which
    must expand to what they stand for and never be more rows."""
    parts = {}
    for rows in shards_of(counts, shards):
        last = {}
        for spec, chunk, top in ranking.iter_shard_top_k(rows, specs, k,
                                                         runs=runs):
            if runs:
                folded, top = top, top.expand()
                assert folded.candidates.num_rows <= top.candidates.num_rows
                assert folded.totals.num_rows <= top.totals.num_rows
            for table in (top.candidates, top.totals):
                starts = table["window_start"].to_numpy()
                assert (ranking.chunk_of(spec, starts) == chunk).all()
            key = (spec, top.totals["event_type"][0].as_py())
            assert chunk > last.get(key, -np.inf), "chunks in time order"
            last[key] = chunk
            parts.setdefault((spec, chunk), []).append(top)
    out = {spec: [] for spec in specs}
    for (spec, chunk), tops in parts.items():
        out[spec] += rows_of(ranking.merge_window_top_k(tops, k))
    return {spec: sorted(rows) for spec, rows in out.items()}


def oracle_rows(unique, spec, k):
    length, slide = oracle.WINDOW_SPECS[spec.name]
    return sorted(oracle.ranked_windows(unique, length, slide, k))


@pytest.mark.parametrize("per_chunk,per_step,k,prune,runs", [
    (2, 1, 3, 0, False), (7, 5, 1, 4, True), (40, 300, 50, 0, True),
    (1440, 2_000_000, 2, 0, False), (1440, 2_000_000, 1, 4, True)])
def test_tiny_chunks_and_steps_match_the_oracle(monkeypatch, k, per_chunk,
                                                per_step, prune, runs):
    """``prune``: 0 prunes the segments of every step (``_reachable``)."""
    monkeypatch.setattr(ranking, "WINDOWS_PER_CHUNK", per_chunk)
    monkeypatch.setattr(ranking, "PAIRS_PER_STEP", per_step)
    monkeypatch.setattr(ranking, "PRUNE_ITEMS_PER_WINDOW", prune)
    pruned = []
    reachable = ranking._reachable
    monkeypatch.setattr(ranking, "_reachable", lambda *a: pruned.append(
        1) or reachable(*a))
    unique = random_events(150, 60, 65 * DAY, seed=per_chunk * 100 + k,
                           weights=True)
    # Dense stretches too: as many events again inside two hours.
    unique += [e._replace(event_id="d" + e.event_id,
                          ts=T30 + 5 * DAY + e.ts % (2 * oracle.HOUR_MS))
               for e in unique]
    counts = counting.count_slices(event_table(unique))
    got = ranked_by_chunks(counts, SPECS, k, shards=3, runs=runs)
    for spec in SPECS:
        assert got[spec] == oracle_rows(unique, spec, k), spec.name
    assert pruned or prune, "pruning exercised"


def test_only_some_windows_with_tiny_chunks(monkeypatch):
    monkeypatch.setattr(ranking, "WINDOWS_PER_CHUNK", 3)
    monkeypatch.setattr(ranking, "PAIRS_PER_STEP", 4)
    unique = random_events(300, 40, 3 * DAY, seed=9)
    counts = counting.count_slices(event_table(unique))
    for spec in SPECS:
        every = ranking.shard_top_k(counts, [spec], 4)[spec]
        starts = np.unique(every.totals["window_start"].to_numpy())
        wanted = np.r_[starts[::5], starts[-1] + 77 * spec.step_ms]
        some = ranking.shard_top_k(counts, [spec], 4,
                                   window_starts=wanted)[spec]
        keys = pa.array(wanted)
        for got, full in ((some.candidates, every.candidates),
                          (some.totals, every.totals)):
            picked = full.filter(pa.compute.is_in(full["window_start"], keys))
            assert sorted(map(str, got.to_pylist())) == sorted(
                map(str, picked.to_pylist())), spec.name


#: Run in a child process under RLIMIT_AS (argv[3] bytes): rank the item
#: shards' counts (Parquet files argv[4:]) for every spec, a chunk at a
#: time, merge per (spec, chunk) and write the merged rows to argv[2]; print
#: the peak RSS growth in MB. (Nothing here uses DuckDB, whose allocator
#: reserves more address space than the cap.)
CHILD = textwrap.dedent("""
    import resource, sys
    cap = int(sys.argv[3])
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    import pyarrow as pa, pyarrow.parquet as pq
    from topk.core import ranking
    from topk.core.windows import WindowSpec, SUPPORTED_WINDOWS
    shards = [pq.read_table(path) for path in sys.argv[4:]]
    specs = [WindowSpec.parse(n) for n in SUPPORTED_WINDOWS]
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    parts = {}
    for rows in shards:
        for spec, chunk, top in ranking.iter_shard_top_k(rows, specs, 5,
                                                         runs=True):
            parts.setdefault((spec.name, chunk), []).append(top)
    with pq.ParquetWriter(sys.argv[2], pa.schema([
            ("spec", pa.string()), ("event_type", pa.string()),
            ("window_start", pa.int64()), ("rank", pa.int32()),
            ("item_id", pa.string()), ("count", pa.int64()),
            ("window_total", pa.int64())])) as out:
        for (name, chunk), tops in parts.items():
            merged = ranking.merge_window_top_k([t.expand() for t in tops], 5)
            out.write_table(merged.add_column(0, "spec", pa.array(
                [name] * merged.num_rows, pa.string())).cast(out.schema))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print((peak - base) // 1024)
""")


def test_long_sparse_span_under_a_memory_cap(tmp_path):
    """Two and a half years of events over 3,000 items, every spec, k=5.
    A dense (minute pane x item) block of one shard would need about
    1.3M panes x 750 items x 8 bytes = 7.9 GB; the child gets 2 GiB of
    address space in all (the interpreter, NumPy and Arrow included; their
    allocators reserve about 1.7 GB of it) and may grow its resident set
    by 400 MB at most (it needs about 100 MB)."""
    span = 913 * DAY
    unique = random_events(5000, 3000, span, seed=1)
    counts = counting.count_slices(event_table(unique))
    paths = []
    for i, rows in enumerate(shards_of(counts, 4)):
        paths.append(str(tmp_path / f"shard{i}.parquet"))
        pq.write_table(rows, paths[-1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.dirname(os.path.dirname(os.path.dirname(
            os.path.abspath(__file__))))] + sys.path))
    done = subprocess.run(
        [sys.executable, "-c", CHILD, "-",
         str(tmp_path / "ranked.parquet"), str(2 * 2**30)] + paths,
        capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout.split()[-1]) < 400, "peak RSS growth (MB)"
    got = pq.read_table(tmp_path / "ranked.parquet")
    by_spec = {}
    for r in got.to_pylist():
        by_spec.setdefault(r["spec"], []).append(
            (r["event_type"], r["window_start"], r["rank"], r["item_id"],
             r["count"], r["window_total"]))
    for spec in SPECS:
        want = oracle_rows(unique, spec, 5)
        assert sorted(by_spec.get(spec.name, [])) == want, spec.name
        assert want


def test_runs_pickle_compressed_and_unchanged():
    """Runs cross the shuffle pickled: as LZ4 Arrow IPC, smaller than the
    tables' own buffers, and equal after the round trip."""
    import pickle
    rng = np.random.default_rng(3)
    n = 50_000
    runs = ranking.WindowTopKRuns(
        pa.table({"event_type": pa.array(["play"] * n),
                  "window_start": pa.array(np.sort(rng.integers(0, 10**9, n))
                                           * 60_000),
                  "item_id": pa.array([f"item-{i % 500}" for i in range(n)]),
                  "count": pa.array(rng.integers(1, 9, n)),
                  "windows": pa.array(rng.integers(1, 60, n), pa.int32())}
                 ).cast(ranking.CANDIDATE_RUNS_SCHEMA),
        ranking.TOTAL_RUNS_SCHEMA.empty_table(), 60_000)
    data = pickle.dumps(runs)
    back = pickle.loads(data)
    assert back.candidates.equals(runs.candidates)
    assert back.totals.equals(runs.totals) and back.step_ms == 60_000
    assert len(data) < runs.candidates.nbytes


@pytest.mark.parametrize("far", [False, True],
                         ids=["one-key-sort", "lexsort-beyond-int64-keys"])
def test_count_segments_give_every_items_count_in_every_window(far):
    # Rows unique per (pane, item); with ``far`` the panes span more than
    # an int64 key of (item, position) can hold, the sort's other branch.
    rng = random.Random(5)
    n = 3
    panes = sorted(rng.sample(range(40), 12))
    if far:
        panes = panes[:6] + [p + 2**61 for p in panes[6:]]
    rows = sorted({(p, rng.randrange(1 << 20)) for p in panes
                   for _ in range(3)})
    pane = np.array([p for p, _ in rows], np.int64)
    item = np.array([i for _, i in rows], np.int64)
    count = np.array([rng.randint(1, 9) for _ in rows], np.int64)
    expected = {}
    for p, i, c in zip(pane.tolist(), item.tolist(), count.tolist()):
        for w in range(p - n + 1, p + 1):
            expected[(w, i)] = expected.get((w, i), 0) + c
    start, end, who, value = ranking._count_segments(pane, item, count, n)
    assert list(start) == sorted(start)
    got = {}
    for s, e, i, v in zip(start.tolist(), end.tolist(), who.tolist(),
                          value.tolist()):
        for w in range(s, e):
            assert (w, i) not in got
            got[(w, i)] = v
    assert got == expected
