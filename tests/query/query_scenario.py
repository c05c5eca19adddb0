"""One data set for both query backends, written the way the pipelines
write it (the fixtures in ``conftest.py`` load it).

``SCENARIO`` holds the true events (``oracle.Event``) and the runs that
wrote the ``slices`` and ``sketches`` tables from them:

- days 1 and 2: a batch run (the truth), then a rerun of day 2 (the same
  rows again, later ``emitted_at``);
- day 1 also has a *stale* stream run, written after the batch run: panes of
  some of day 1's events with items renamed and weights doubled, and some as
  a type (``view``) the batch never saw there; the batch rows of those
  slices win, so it never shows;
- day 3: stream only, two accumulating panes (the second written later):
  the first pane holds the slices of a prefix of day 3's events; the second
  holds, for ``slices``, only the rows that changed since (a stream writes
  the dirty rows of each pane, each with its full count so far) and, for
  ``sketches``, every slice's sketch of all the events; plus an ``insertAll``
  retry: some of pane 2's rows once more, same ``emitted_at``.

Each run's rows are committed to the output's Delta tables through
``topk.storage.tables`` and, for the BigQuery backend, go into the
emulator's tables. The answers are then compared with ``oracle.topk`` over the true events.
"""
import collections
import random

import pyarrow as pa

import oracle
from topk.approx import sketch_windows, sketches
from topk.core import counting, schema
from topk.core.windows import parse_time
from topk.storage import layout as output_layout
from topk.storage import tables as output_tables

T0 = parse_time("2024-05-01T00:00:00Z")
M, H, D = schema.MINUTE_MS, schema.HOUR_MS, schema.DAY_MS
#: Small sketches: the tables stay small, and bounds can be loose.
BUDGET = 4096
LENGTHS = (("1m", M), ("1h", H), ("1d", D))
#: emitted_at of the runs, in the order they were written.
BATCH_AT, STALE_AT, PANE1_AT, PANE2_AT, RERUN_AT = (
    T0 + 4 * D + i * H for i in range(5))


# --- Rows as the pipelines write them --------------------------------------

def slice_rows(events, source: str, emitted_at: int) -> pa.Table:
    """Events -> ``slices`` rows (1m, 1h, 1d), by ``topk.core.counting``."""
    if not events:
        return schema.SLICES_SCHEMA.empty_table()
    counts = counting.merge_counts([pa.table({
        "event_type": [e.event_type for e in events],
        "slice_start": [e.ts - e.ts % M for e in events],
        "item_id": [e.item_id for e in events],
        "count": [e.weight for e in events]},
        schema=schema.SLICE_COUNTS_SCHEMA)])
    return pa.concat_tables(
        counting.to_slices_table(counting.rollup(counts, ms), name, source,
                                 emitted_at) for name, ms in LENGTHS)


def sketch_rows(events, method: str, source: str, emitted_at: int,
                budget: int = BUDGET) -> pa.Table:
    """Events -> ``sketches`` rows of ``method``: a sketch per minute and
    event type (and over all types), hours and days merged from them, as
    ``ApproximateSlices`` rolls them up."""
    minutes = collections.defaultdict(collections.Counter)
    for e in events:
        for etype in (e.event_type, schema.ALL_TYPES):
            minutes[(etype, e.ts - e.ts % M)][e.item_id] += e.weight
    level = {key: sketches.new_sketch(method, budget).update(
        list(c), list(c.values())) for key, c in minutes.items()}
    tables = []
    for name, ms in LENGTHS:
        if name != "1m":
            groups = collections.defaultdict(list)
            for (etype, start), s in level.items():
                groups[(etype, start - start % ms)].append(s)
            level = {key: sketches.merge_many(group)
                     for key, group in groups.items()}
        tables.append(sketch_windows.sketches_table(
            [sketch_windows.sketch_row(method, etype, start, s)
             for (etype, start), s in sorted(level.items())],
            name, source, emitted_at))
    return pa.concat_tables(tables)


def changed_rows(before: pa.Table, after: pa.Table) -> pa.Table:
    """The rows of ``after`` whose count differs from ``before``'s (the
    dirty rows a stream pane writes)."""
    key = ("slice_length", "slice_start", "event_type", "item_id", "count")
    old = {tuple(r[c] for c in key) for r in before.to_pylist()}
    keep = [tuple(r[c] for c in key) not in old for r in after.to_pylist()]
    return after.filter(pa.array(keep))


# --- The scenario ----------------------------------------------------------

def _events(rng, n, first_ms, hours, prefix, items):
    out = []
    for i in range(n):
        hour = rng.choice(hours)
        ts = first_ms + hour * H + rng.randrange(H)
        out.append(oracle.Event(
            f"{prefix}{i}", rng.choice(items),
            rng.choice(("click", "click", "play")), ts, None,
            rng.choice((1, 1, 1, 2, 5))))
    return out


def make_scenario(seed: int = 11):
    rng = random.Random(seed)
    # Few hot hours, so minutes, hours and days all hold several items;
    # "Z" < "a": ties rank by code point.
    items = ["a", "b", "c", "d", "e", "f", "g", "h", "Z", "item-10"]
    batch = (_events(rng, 160, T0, (0, 1, 5, 9, 13, 23), "b1-", items)
             + _events(rng, 120, T0 + D, (0, 3, 4, 17), "b2-", items))
    # A tie of three items in one minute, and across the day.
    tie = T0 + 5 * H + 7 * M
    batch += [oracle.Event(f"tie-{item}-{i}", item, "click", tie + i, None, 1)
              for item in ("t3", "t1", "t2") for i in range(4)]
    stream = _events(rng, 120, T0 + 2 * D, (0, 2, 5, 11, 22), "s-", items)
    rng.shuffle(stream)  # arrival order
    prefix = stream[:70]
    stale = [e._replace(item_id=f"ghost-{e.item_id}", weight=2 * e.weight)
             for e in rng.sample(batch[:160], 40)]
    # Stale rows of a type the batch never saw in those slices: the batch
    # still owns the slices, so they must not count either.
    stale += [e._replace(event_id=f"view-{e.event_id}", event_type="view",
                         item_id=f"ghost-{e.item_id}")
              for e in rng.sample(batch[:160], 10)]
    return {"events": batch + stream, "batch": batch, "stream": stream,
            "prefix": prefix, "stale": stale,
            "day2": [e for e in batch if e.ts >= T0 + D]}


SCENARIO = make_scenario()


def runs(scenario=SCENARIO):
    """``[(table, file name, rows)]`` of every run, in write order."""
    out = []
    pane1 = slice_rows(scenario["prefix"], "stream", PANE1_AT)
    pane2 = changed_rows(
        slice_rows(scenario["prefix"], "stream", PANE2_AT),
        slice_rows(scenario["stream"], "stream", PANE2_AT))
    out += [(output_layout.SLICES, "part-batch",
             slice_rows(scenario["batch"], "batch", BATCH_AT)),
            (output_layout.SLICES, "part-stream-stale",
             slice_rows(scenario["stale"], "stream", STALE_AT)),
            (output_layout.SLICES, "part-stream-1", pane1),
            (output_layout.SLICES, "part-stream-2", pane2),
            (output_layout.SLICES, "part-stream-2-retry", pane2.slice(0, 25)),
            (output_layout.SLICES, "part-batch-rerun",
             slice_rows(scenario["day2"], "batch", RERUN_AT))]
    for method in sketches.METHODS:
        sketch_runs = [
            ("part-batch", scenario["batch"], "batch", BATCH_AT),
            ("part-stream-stale", scenario["stale"], "stream", STALE_AT),
            ("part-stream-1", scenario["prefix"], "stream", PANE1_AT),
            ("part-stream-2", scenario["stream"], "stream", PANE2_AT),
            ("part-batch-rerun", scenario["day2"], "batch", RERUN_AT)]
        out += [(output_layout.SKETCHES,
                 output_layout.method_file_name(name, method),
                 sketch_rows(events, method, source, at))
                for name, events, source, at in sketch_runs]
    return out


def write_parquet(output: str, table: str, name: str, rows: pa.Table
                  ) -> None:
    """One run's rows of ``table``, committed to the output's Delta tables
    the way the pipelines commit them (``topk.storage.tables``): a batch
    run replaces the rows it owns (its methods' rows of its time span), a
    stream run appends."""
    source = rows["source"][0].as_py() if rows.num_rows else "stream"
    if source != "batch":
        output_tables.append(output, table, rows, source=source)
        return
    methods = (set(rows["method"].to_pylist())
               if "method" in rows.column_names else {output_layout.EXACT})
    predicate = output_tables.batch_predicates(
        output_tables.minute_span([rows]), methods, name).get(table)
    output_tables.commit(output, [output_tables.Change(
        table, output_tables.prepare(table, rows), predicate)], "batch")


def load_bigquery(client, target, table: str, rows: pa.Table) -> None:
    """Append rows to a BigQuery table (streaming inserts, as the sink's
    ``STREAMING_INSERTS`` method does)."""
    bq_table = client.get_table(target.table_id(table))
    pylist = rows.to_pylist()
    for i in range(0, len(pylist), 500):
        assert not client.insert_rows(bq_table, pylist[i:i + 500])
