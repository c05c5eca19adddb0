"""The batch pipeline's approximate path (``--method cms,frequent_items``)
on the local runner, against brute-force counts of the generated events.

For every ranked window row of both methods and for range queries over
random minute-aligned ranges, the true count (a Counter over
``generator.generate_events``, the valid de-duplicated events) lies within
the reported bounds and a row flagged ``guaranteed`` is in the true top-K;
precision@K against the exact top-K is reported and is 1 at the default
budget on a Zipf stream with few items. Also: the sketches
table's schema and budget, ``--method exact`` output unchanged by the
approximate branch, reruns, and ``topk query --method``.
"""
import bisect
import collections
import dataclasses
import json
import os
import random

import numpy as np
import pyarrow as pa
import pytest

from topk.storage import tables as output_tables
from topk import cli, query
from topk.loadgen import generator
from topk.core import schema
from topk.approx import sketch_windows, sketches
from topk.pipelines import batch
from topk.core.windows import WindowSpec, format_time

MINUTE, DAY = schema.MINUTE_MS, schema.DAY_MS
APPROX = ("cms", "frequent_items")


class Truth:
    """Exact weighted counts of the generated valid events, de-duplicated
    by ``event_id``, per (event type or ``*``, item) over any range."""

    def __init__(self, events: pa.Table):
        ids = events["event_id"].to_pylist()
        first = {}
        for i, event_id in enumerate(ids):
            first.setdefault(event_id, i)
        events = events.take(pa.array(sorted(first.values())))
        per_key = collections.defaultdict(list)
        per_type = collections.defaultdict(list)
        for etype, item, ts, weight in zip(
                events["event_type"].to_pylist(),
                events["item_id"].to_pylist(), events["ts"].to_pylist(),
                events["weight"].to_pylist()):
            for t in (etype, schema.ALL_TYPES):
                per_key[(t, item)].append((ts, weight))
                per_type[t].append((ts, weight))
        self.types = sorted({t for t, _ in per_key} - {schema.ALL_TYPES})
        self.items = collections.defaultdict(list)
        for t, item in per_key:
            self.items[t].append(item)
        self._keys = {k: self._cumulative(v) for k, v in per_key.items()}
        self._types = {k: self._cumulative(v) for k, v in per_type.items()}
        all_ts = [ts for ts, _ in per_type[schema.ALL_TYPES]]
        self.first_ms, self.last_ms = min(all_ts), max(all_ts)

    @staticmethod
    def _cumulative(rows):
        rows.sort()
        return [ts for ts, _ in rows], np.cumsum([0] + [w for _, w in rows])

    @staticmethod
    def _sum(series, start, end) -> int:
        if series is None:
            return 0
        ts, cum = series
        return int(cum[bisect.bisect_left(ts, end)]
                   - cum[bisect.bisect_left(ts, start)])

    def count(self, event_type, item, start, end) -> int:
        return self._sum(self._keys.get((event_type, item)), start, end)

    def total(self, event_type, start, end) -> int:
        return self._sum(self._types.get(event_type), start, end)

    def counts(self, event_type, start, end) -> dict:
        return {i: c for i in self.items[event_type]
                if (c := self.count(event_type, i, start, end))}


def kth_count(true: dict, k: int) -> int:
    """The true k-th largest count (1 if fewer than k items occurred)."""
    values = sorted(true.values(), reverse=True)
    return values[k - 1] if len(values) >= k else 1


def precision(reported: list, true: dict, k: int) -> float:
    """Share of the k slots holding an item whose true count reaches the
    true k-th count (ties at the cut are not errors), as in
    bench/accuracy_report.py."""
    slots = min(k, len(true))
    if slots == 0:
        return 1.0
    kth = kth_count(true, k)
    return sum(true.get(i, 0) >= kth for i in reported[:k]) / slots


def run_batch(path, output, *flags, k=5, windows="all"):
    batch.run([f"--input={path}", f"--output={output}", f"--k={k}",
               f"--windows={windows}", "--item_shards=3", "--dedup_shards=2",
               *flags])


def read_table(output, table):
    """Committed rows of ``table``, with ``_partition`` (dict) added and
    the derived partition columns removed."""
    ds = output_tables.dataset(output, table)
    if ds is None:
        return []
    rows = []
    for row in ds.to_table().to_pylist():
        partition = {p: row[p] for p in output_tables.TABLES[table][1]}
        for derived in ("window_spec", "date", "input_id"):
            row.pop(derived, None)
        rows.append(dict(row, _partition=partition))
    return rows


def ms(value) -> int:
    return int(value.timestamp() * 1000)


@dataclasses.dataclass
class Run:
    config: generator.GeneratorConfig
    path: str
    output: str
    truth: Truth
    k: int
    budget: int


def make_run(tmp_path_factory, name, config, flags, k, windows="all",
             budget=sketches.DEFAULT_BUDGET_BYTES) -> Run:
    base = tmp_path_factory.mktemp(name)
    path = str(base / "events.jsonl")
    generator.write_json_lines(config, path)
    output = str(base / "out")
    run_batch(path, output, *flags, f"--sketch_budget_bytes={budget}", k=k,
              windows=windows)
    return Run(config, path, output, Truth(generator.generate_events(config)),
               k, budget)


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    """Few items (Zipf 1.1 over 30), all windows, default budget; dirty
    input (duplicates, malformed records, weights, jitter) across a day and
    a 30-day boundary (2024-05-17 starts a 30-day window)."""
    config = generator.GeneratorConfig(
        events=6000, items=30, zipf=1.1, start="2024-05-16T22:30:00Z",
        rate=6000 / (3 * 3600), jitter_s=120, duplicate_share=0.05,
        malformed_share=0.01, weight_share=0.2, ts_format="mixed", seed=21,
        users=0)
    return make_run(tmp_path_factory, "default", config,
                    ["--method=exact,cms,frequent_items"], k=5)


@pytest.fixture(scope="module")
def small_budget_run(tmp_path_factory):
    """Many items and a 2 KiB budget: the sketches must drop items, so the
    bounds are really tested."""
    config = generator.GeneratorConfig(
        events=20000, items=3000, zipf=0.9, start="2024-05-01T10:00:00Z",
        rate=20000 / (2 * 3600), jitter_s=30, seed=5, users=0)
    return make_run(tmp_path_factory, "small", config,
                    ["--method=exact,cms,frequent_items"], k=10,
                    windows="1m,1h,1h/1m,30d", budget=2048)


def test_blocks_rank_alike_alone_and_in_batches(tmp_path, monkeypatch):
    """Every block ranked alone (``GROUP_BYTES`` 0) and every group's blocks
    ranked in one batch give the same rows; 2 KiB sketches of 3,000 items
    fill a block, as full-size ones do on a busy hour. (Count-Min only:
    what frequent_items keeps of a full sketch depends on the order the
    runner feeds it, so two runs may differ; the unit tests of
    ``rank_blocks`` cover it.)"""
    config = generator.GeneratorConfig(
        events=3000, items=3000, zipf=0.9, start="2024-05-01T23:00:00Z",
        rate=3000 / (6 * 3600), jitter_s=30, seed=9, users=0)
    path = str(tmp_path / "events.jsonl")
    generator.write_json_lines(config, path)
    got = {}
    for group_bytes in (0, 1 << 40):
        monkeypatch.setattr(sketch_windows, "GROUP_BYTES", group_bytes)
        output = str(tmp_path / f"out{group_bytes}")
        run_batch(path, output, "--method=cms",
                  "--sketch_budget_bytes=2048", k=4,
                  windows="1m,1h,1h/1m,1d/1h")
        got[group_bytes] = sorted((
            tuple(v for c, v in r.items() if c not in ("emitted_at",
                                                       "_partition"))
            for r in read_table(output, "ranked_windows")), key=repr)
    assert got[0] and got[0] == got[1 << 40]


def check_ranked_windows(run: Run) -> dict:
    """Every approximate row's bounds contain the true count, its
    guaranteed flag is right (the item is in the true top-k whatever the
    tie rule), totals are exact, each method ranks the same windows as
    exact, every exact row is guaranteed; returns {method: (mean
    precision@k, min precision@k, share of rows guaranteed, share of rows
    whose item is in the true top-k whatever the tie rule)}."""
    rows = read_table(run.output, "ranked_windows")
    windows = collections.defaultdict(list)
    for r in rows:
        if r["method"] == "exact":
            assert r["guaranteed"] is True, r
        spec = r["window_length"] + ("/" + r["slide"] if r["slide"] else "")
        key = (r["method"], spec, r["event_type"], ms(r["window_start"]))
        windows[key].append(r)
        assert r["_partition"]["window_spec"] == spec.replace("/", "_")
    exact_keys = {key[1:] for key in windows if key[0] == "exact"}
    assert exact_keys
    scores = collections.defaultdict(list)
    flags = collections.defaultdict(list)
    for (method, spec, etype, start), ranked in windows.items():
        if method == "exact":
            continue
        assert (spec, etype, start) in exact_keys
        end = start + WindowSpec.parse(spec).length_ms
        ranked.sort(key=lambda r: r["rank"])
        assert [r["rank"] for r in ranked] == list(range(1, len(ranked) + 1))
        assert len(ranked) <= run.k
        total = run.truth.total(etype, start, end)
        true = run.truth.counts(etype, start, end)
        for r in ranked:
            c = true.get(r["item_id"], 0)
            assert r["lower_bound"] <= c <= r["upper_bound"], (
                method, spec, etype, format_time(start), r, c)
            provable = sum(v >= c for i, v in true.items()
                           if i != r["item_id"]) < run.k
            assert provable or not r["guaranteed"], (method, spec, r)
            flags[method].append((r["guaranteed"], provable))
            assert r["window_total"] == total
            assert r["pane_timing"] == "batch" and r["source"] == "batch"
        scores[method].append(
            precision([r["item_id"] for r in ranked], true, run.k))
    for method in APPROX:
        assert {key[1:] for key in windows if key[0] == method} == exact_keys
    return {m: (float(np.mean(s)), min(s),
                *np.mean(np.array(flags[m], float), axis=0).tolist())
            for m, s in scores.items()}


def test_ranked_windows_bounds_and_precision_at_default_budget(default_run,
                                                               capsys):
    scores = check_ranked_windows(default_run)
    with capsys.disabled():
        print(f"\nprecision@{default_run.k} (mean, min), share of rows "
              f"guaranteed, share in the top k whatever the tie rule, over "
              f"all windows, default budget, 30 items: {scores}")
    assert {m: s[:2] for m, s in scores.items()} == {
        m: (1.0, 1.0) for m in APPROX}
    # Nothing is dropped at this budget, so every bound is exact and an
    # item is flagged exactly when it is in the top k whatever the tie
    # rule (not when it ties with the (k+1)-th).
    assert all(0 < s[2] == s[3] < 1 for s in scores.values()), scores


def test_ranked_windows_bounds_hold_when_sketches_drop_items(
        small_budget_run, capsys):
    scores = check_ranked_windows(small_budget_run)
    with capsys.disabled():
        print(f"\nprecision@{small_budget_run.k} (mean, min), share "
              f"guaranteed, share in the top k whatever the tie rule, 2 KiB "
              f"budget, 3000 items: {scores}")
    assert set(scores) == set(APPROX)
    # Some flags, fewer than could be: the sketches really dropped items.
    assert all(0 < s[2] < s[3] for s in scores.values()), scores


@pytest.mark.parametrize("run_name", ["default_run", "small_budget_run"])
def test_sketches_table(run_name, request):
    run = request.getfixturevalue(run_name)
    seen = collections.defaultdict(set)
    stored = output_tables.dataset(run.output, "sketches").schema
    assert stored.names == [*schema.SKETCHES_SCHEMA.names, "date"], stored
    rows = read_table(run.output, "sketches")
    for r in rows:
        start = ms(r["slice_start"])
        size = WindowSpec.parse(r["slice_length"]).length_ms
        assert start % size == 0
        assert r["_partition"] == {"slice_length": r["slice_length"],
                                   "date": format_time(start)[:10]}
        assert r["nbytes"] == len(r["sketch"]) <= r["budget_bytes"] == (
            run.budget)
        sketch = sketches.sketch_from_bytes(r["sketch"])
        assert sketch.method == r["method"]
        assert sketch.total == r["total"] == run.truth.total(
            r["event_type"], start, start + size)
        key = (r["method"], r["slice_length"], r["event_type"], start)
        assert key not in seen[key[:2]], f"sketch {key} written twice"
        seen[key[:2]].add(key)
    # One sketch per method, length, event type (and '*') and slice with
    # events.
    for method in APPROX:
        for length in ("1m", "1h", "1d"):
            size = WindowSpec.parse(length).length_ms
            want = set()
            for t in [schema.ALL_TYPES, *run.truth.types]:
                for s in range(run.truth.first_ms // size * size,
                               run.truth.last_ms + 1, size):
                    if run.truth.total(t, s, s + size):
                        want.add((method, length, t, s))
            assert seen[(method, length)] == want


def random_ranges(truth: Truth, n: int, seed: int):
    rng = random.Random(seed)
    lo = truth.first_ms // MINUTE * MINUTE - 20 * MINUTE
    hi = truth.last_ms // MINUTE * MINUTE + 20 * MINUTE
    for _ in range(n):
        start = lo + rng.randrange((hi - lo) // MINUTE) * MINUTE
        end = min(start + rng.choice([1, 7, 59, 60, 61, 150, 1440, 3000])
                  * MINUTE, start + 30 * DAY)
        yield start, end, rng.choice([None, "play", "click"])


@pytest.mark.parametrize("run_name, seed", [("default_run", 1),
                                            ("small_budget_run", 2)])
def test_range_queries_contain_true_counts(run_name, seed, request, capsys):
    run = request.getfixturevalue(run_name)
    k = run.k
    scores = collections.defaultdict(list)
    for start, end, etype in random_ranges(run.truth, 12, seed):
        t = etype or schema.ALL_TYPES
        true = run.truth.counts(t, start, end)
        exact = query.topk(run.output, k, start, end, etype)
        assert [(r.item_id, r.count) for r in exact] == sorted(
            true.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
        for method in APPROX:
            got = query.topk_approx(run.output, k, start, end, method, etype)
            assert [r.rank for r in got] == list(range(1, len(got) + 1))
            for r in got:
                c = true.get(r.item_id, 0)
                assert r.lower_bound <= c <= r.upper_bound, (
                    method, format_time(start), format_time(end), etype, r, c)
                if r.guaranteed:  # at most k - 1 others reach its count
                    assert sum(v >= c for i, v in true.items()
                               if i != r.item_id) < k, r
            scores[method].append(precision([r.item_id for r in got], true,
                                            k))
    result = {m: (float(np.mean(s)), min(s)) for m, s in scores.items()}
    with capsys.disabled():
        print(f"\nrange queries, precision@{k} (mean, min), {run_name}: "
              f"{result}")
    if run_name == "default_run":
        assert result == {m: (1.0, 1.0) for m in APPROX}


def test_cli_query_methods(default_run, capsys):
    start = format_time(default_run.truth.first_ms // DAY * DAY)
    end = format_time(default_run.truth.first_ms // DAY * DAY + DAY)
    argv = ["query", "--output", default_run.output, "--k", "3", "--start",
            start, "--end", end]
    capsys.readouterr()
    assert cli.main(argv + ["--method", "cms", "--format", "json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert [r["rank"] for r in answer] == [1, 2, 3]
    assert all(set(r) == {"rank", "item_id", "count", "lower_bound",
                          "upper_bound", "guaranteed"} for r in answer)
    exact = query.topk(default_run.output, 3, start, end)
    assert [(r["item_id"], r["count"]) for r in answer] == [
        (r.item_id, r.count) for r in exact]
    assert cli.main(argv + ["--method", "frequent_items"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["rank", "item_id", "count", "lower", "upper",
                                "guaranteed"] and len(table) == 4
    assert cli.main(argv + ["--format", "json"]) == 0
    assert all(set(r) == {"rank", "item_id", "count"}
               for r in json.loads(capsys.readouterr().out))


def test_exact_output_unchanged_and_reruns(tmp_path):
    """The exact tables are the same whatever approximate methods run
    beside them; ``--method cms`` alone writes no exact table; reruns
    replace each method's files and nothing else."""
    config = generator.GeneratorConfig(
        events=1500, items=40, zipf=1.0, start="2024-05-01T23:20:00Z",
        rate=1500 / 3600, jitter_s=60, duplicate_share=0.1,
        malformed_share=0.02, seed=3, users=0)
    path = str(tmp_path / "events.jsonl")
    generator.write_json_lines(config, path)
    windows = "1m,1h,1h/1m,30d/1d"

    def snapshot(output):
        # "files": one name per table, partition and method written.
        files = sorted({
            "/".join([table, *(f"{k}={v}" for k, v in r["_partition"].items()),
                      "part-batch" + ("" if r.get("method", "exact") == "exact"
                                      else "-" + r["method"]) + ".parquet"])
            for table in ("ranked_windows", "slices", "sketches")
            for r in read_table(output, table)})
        rows = {}
        for table in ("ranked_windows", "slices", "dead_letters",
                      "sketches"):
            rows[table] = sorted(
                repr(sorted((k, v) for k, v in r.items()
                            if k not in ("emitted_at", "sketch",
                                         "_partition")))
                for r in read_table(output, table))
        return files, rows

    outs = {}
    for name, flags in [("default", []), ("exact", ["--method=exact"]),
                        ("all", ["--method=exact,cms,frequent_items"]),
                        ("cms", ["--method=cms"])]:
        outs[name] = str(tmp_path / name)
        run_batch(path, outs[name], *flags, k=3, windows=windows)
    default_files, default_rows = snapshot(outs["default"])
    assert snapshot(outs["exact"]) == (default_files, default_rows)
    all_files, all_rows = snapshot(outs["all"])
    assert [f for f in all_files if "sketches" not in f and "-cms" not in f
            and "-frequent_items" not in f] == default_files
    for table in ("slices", "dead_letters"):
        assert all_rows[table] == default_rows[table]
    assert [r for r in all_rows["ranked_windows"]
            if "'method', 'exact'" in r] == default_rows["ranked_windows"]

    cms_files, cms_rows = snapshot(outs["cms"])
    assert not os.path.exists(os.path.join(outs["cms"], "slices"))
    assert cms_files == [f for f in all_files if "-frequent_items" not in f
                         and "/part-batch.parquet" not in f]
    assert cms_rows["ranked_windows"] == [
        r for r in all_rows["ranked_windows"] if "'method', 'cms'" in r]

    # Rerun the full output with cms only: the same files, no duplicates
    # (the frequent_items and exact files of the first run stay).
    run_batch(path, outs["all"], "--method=cms", k=3, windows=windows)
    assert snapshot(outs["all"]) == (all_files, all_rows)


@pytest.mark.parametrize("argv, message", [
    (["query", "--output", "OUT", "--k", "3", "--start",
      "2024-05-01T00:00:00Z", "--end", "2024-05-01T01:00:00Z", "--method",
      "cms"], "has no cms sketches: run `topk batch --method cms`"),
    (["query", "--output", "OUT", "--k", "3", "--start",
      "2024-05-01T00:00:00Z", "--end", "2024-05-01T01:00:00Z", "--method",
      "bloom"], "argument --method: invalid choice: 'bloom'"),
    (["batch", "--input", "x", "--output", "OUT", "--method", "exact,bloom"],
     "unknown method 'bloom'; choose from exact, cms, frequent_items"),
    (["batch", "--input", "x", "--output", "OUT", "--sketch-budget-bytes",
      "64"], "cannot hold"),
    (["batch", "--input", "x", "--output", "OUT", "--sketch_budget_bytes",
      "lots"], "must be a positive integer number of bytes"),
])
def test_method_errors_are_one_line(argv, message, tmp_path, capsys):
    os.makedirs(tmp_path / "OUT")
    argv = [str(tmp_path / "OUT") if a == "OUT" else a for a in argv]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("topk: error: "), err
    assert message in err
