"""What one early firing of the stream's window stages costs, against how
much of its windows they hold (issue #13, latency).

An unbounded ``topk stream`` fires every ``--early-firing-s``: each exact
item shard absorbs the batch that arrived since the last firing and emits
the panes of every open window it changed
(``topk.streaming.panes.ShardPanes``); the approximate stage does the same
with one sketch per minute (``topk.streaming.sketch_panes.SketchPanes``,
``--method cms``).
This times that step alone, Beam-free, for a one-second batch arriving after
``minutes`` of one-minute counts of ``items`` distinct items each are held
(Zipf-drawn ids), every minute but the newest closed by the watermark as
live, for windows ``--windows``; the median of ``--repeat`` firings. A live
stream reaches every held size up to its longest window, so the firing time
at the longest window's length is what each second must pay once the stream
has run that long. (Sliding windows keep their closed minutes' part between
firings, ``topk.streaming.closed_parts``: the first firing after a minute
closes makes it, the median is the firings after.)

    .venv/bin/python bench/early_firing_cost.py
    .venv/bin/python bench/early_firing_cost.py --items 5000,20000 --minutes 1,15,45

``--dedup-held`` also times the exact stream's de-duplication of one batch
(``SeenIds.admit``, 50k events, 1% copies) against the ids it already holds
(a live stream holds its lateness worth: 10 minutes at 50k events/s is 30M).

Each shape also times the minute's end, ``--repeat`` minutes in a row: the
on-time firing as the watermark passes the newest minute, and the first
early firing of the next minute, which changes every sliding window at once
(the median of each).

``--catch-up-hours`` also times a catch-up's firing: a stream reading a
backlog gets hours of minute counts before its first watermark, then one
event-time firing closes them all and emits every window they hold once
(the on-time panes). Its time per window ranked is what a catch-up pays
per window of its backlog, whatever the events per message.

    .venv/bin/python bench/early_firing_cost.py --methods exact,cms \
        --items 1400 --minutes 1 --catch-up-hours 1,12
"""
import argparse
import cProfile
import io
import pstats
import statistics
import time

import numpy as np
import pyarrow as pa

from topk.approx import sketches
from topk.core import schema
from topk.core.windows import parse_windows
from topk.streaming.dedup import SEEN_SCHEMA, SeenIds
from topk.streaming.panes import ShardPanes
from topk.streaming.sketch_panes import SketchPanes

T0 = 1_796_432_400_000  # an hour boundary, 2026-12-04T09:00Z


def minute_counts(rng, minute: int, items: int, types=("play",)
                  ) -> pa.Table:
    """Counts of ``items`` distinct items in minute ``minute`` after T0,
    each of one of ``types`` (drawn uniformly)."""
    ids = np.unique(rng.zipf(1.1, items * 4) % 1_000_000)[:items]
    return pa.table({
        "event_type": pa.array(np.asarray(types)[
            rng.integers(0, len(types), len(ids))]),
        "slice_start": pa.array(np.full(len(ids), T0 + minute * 60_000),
                                pa.int64()),
        "item_id": [f"item-{i}" for i in ids],
        "count": pa.array(rng.integers(1, 50, len(ids)), pa.int64())},
        schema=schema.SLICE_COUNTS_SCHEMA)


def held_panes(method: str, windows: str, k: int, rng, minutes: int,
               items: int, types=("play",)):
    specs, lateness = parse_windows(windows), 5 * 60_000
    panes = (ShardPanes(specs, k, lateness) if method == "exact" else
             SketchPanes(specs, k, [method], sketches.DEFAULT_BUDGET_BYTES,
                         lateness))
    # Live, every minute but the newest has had its on-time firing.
    panes.fire([minute_counts(rng, m, items, types)
                for m in range(minutes)],
               T0 + minutes * 60_000, T0 + (minutes - 1) * 60_000)
    return panes


def time_firings(panes, batch: pa.Table, minutes: int,
                 repeat: int) -> list[float]:
    seconds = []
    for r in range(repeat):
        t = time.perf_counter()
        panes.fire([batch], T0 + minutes * 60_000 + 1000 * (r + 1))
        seconds.append(time.perf_counter() - t)
    return seconds


def time_minute_ends(panes, rng, minutes: int, items: int, types,
                     repeat: int) -> tuple[list[float], list[float]]:
    """Seconds of what each minute's end costs, ``repeat`` minutes in a
    row after ``minutes`` held: the on-time firing as the watermark passes
    the newest minute, and the first early firing of the next one (a new
    open minute: every sliding window holding it changes at once)."""
    on_time, first = [], []
    for r in range(repeat):
        newest = minutes - 1 + r
        t = time.perf_counter()
        panes.fire([], T0 + (newest + 1) * 60_000 + 500,
                   T0 + (newest + 1) * 60_000)
        on_time.append(time.perf_counter() - t)
        batch = minute_counts(rng, newest + 1, max(1, items // 30), types)
        t = time.perf_counter()
        panes.fire([batch], T0 + (newest + 1) * 60_000 + 1500)
        first.append(time.perf_counter() - t)
    return on_time, first


def time_catch_up(method: str, windows: str, k: int, rng, hours: int,
                  items: int, types=("play",)) -> tuple[float, int]:
    """Seconds of one event-time firing that closes ``hours`` of minute
    counts at once, and how many windows it ranks (event types
    included)."""
    specs = parse_windows(windows)
    panes = (ShardPanes(specs, k, 5 * 60_000) if method == "exact" else
             SketchPanes(specs, k, [method], sketches.DEFAULT_BUDGET_BYTES,
                         5 * 60_000))
    counts = [minute_counts(rng, m, items, types) for m in range(hours * 60)]
    end = T0 + hours * 3_600_000
    t = time.perf_counter()
    firing = panes.fire(counts, end + 1000, end)
    seconds = time.perf_counter() - t
    if method == "exact":
        windows_ranked = sum(top.totals.num_rows
                             for _, _, top in firing.windows)
    else:
        windows_ranked = len(set(zip(
            firing.ranked["window_length"].to_pylist(),
            firing.ranked["slide"].to_pylist(),
            firing.ranked["event_type"].to_pylist(),
            firing.ranked["window_start"].to_pylist())))
    return seconds, windows_ranked


def time_dedup(rng, held: int, repeat: int, batch: int = 50_000
               ) -> list[float]:
    """Seconds of ``SeenIds.admit`` for batches of ``batch`` new events (1%
    copies within each) after ``held`` ids are held."""
    seen = SeenIds([pa.table({
        "minute": pa.array(np.full(held, T0), pa.int64()),
        "id_hash": pa.array(rng.integers(0, 2**63, held, dtype=np.uint64))})
        .cast(SEEN_SCHEMA)])
    seconds = []
    for r in range(repeat):
        ids = [f"e{r}-{i}" for i in range(batch)]
        ids[: batch // 100] = ids[batch // 100: batch // 50]
        events = pa.table({
            "event_id": ids, "item_id": ["a"] * batch,
            "event_type": ["play"] * batch,
            "ts": pa.array(np.full(batch, T0 + 60_000), pa.int64()),
            "weight": pa.array(np.ones(batch, np.int64))})
        t = time.perf_counter()
        seen.admit(events, T0)
        seconds.append(time.perf_counter() - t)
    return seconds


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--windows", default="1m,1h,1h/1m",
                        help="Window specs (default 1m,1h,1h/1m).")
    parser.add_argument("--k", type=int, default=100, help="K (default 100).")
    parser.add_argument("--methods", default="exact,cms",
                        help="Stages to time: exact (ShardPanes) and/or an "
                        "approximate method (SketchPanes); default exact,cms.")
    parser.add_argument("--items", default="5000,20000",
                        help="Distinct items per held minute, comma-separated "
                        "(default 5000,20000).")
    parser.add_argument("--minutes", default="1,15,45",
                        help="Minutes held before the timed firings, "
                        "comma-separated (default 1,15,45).")
    parser.add_argument("--event-types", default="play",
                        help="Event types the items are spread over, "
                        "comma-separated (default play). Each type is a "
                        "ranked window and, for a sketch method, a sketch "
                        "per slice: a live stream has several (the latency "
                        "bench: play, click and its markers).")
    parser.add_argument("--repeat", type=int, default=5,
                        help="Timed firings per shape; the median is shown "
                        "(default 5).")
    parser.add_argument("--dedup-held", default="",
                        help="Also time de-duplicating a 50k-event batch "
                        "against these many held ids, comma-separated "
                        "(e.g. 1000000,30000000; default: not timed).")
    parser.add_argument("--catch-up-hours", default="",
                        help="Also time a catch-up's firing that closes "
                        "these many hours at once, comma-separated (e.g. "
                        "1,12; default: not timed).")
    parser.add_argument("--profile", action="store_true",
                        help="Also print where the largest shape's firings "
                        "spend their time (cProfile, cumulative).")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    items_list = [int(x) for x in args.items.split(",")]
    minutes_list = [int(x) for x in args.minutes.split(",")]
    types = tuple(args.event_types.split(","))
    print(f"windows {args.windows}, k={args.k}, event types "
          f"{args.event_types}; one early firing after a "
          "one-second batch (1/30 of a minute's items), median of "
          f"{args.repeat}")
    print("| method | items per minute | minutes held | firing ms | "
          "vs 1 minute held | at the minute's end: on-time firing ms | "
          "then the next minute's first early firing ms |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for method in args.methods.split(","):
        for items in items_list:
            base = None
            for minutes in minutes_list:
                panes = held_panes(method, args.windows, args.k, rng,
                                   minutes, items, types)
                batch = minute_counts(rng, minutes - 1, max(1, items // 30),
                                      types)
                ms = 1000 * statistics.median(
                    time_firings(panes, batch, minutes, args.repeat))
                base = base or ms
                on_time, first = time_minute_ends(panes, rng, minutes, items,
                                                  types, args.repeat)
                print(f"| {method} | {items:,} | {minutes} | {ms:,.1f} | "
                      f"{ms / base:.1f}x | "
                      f"{1000 * statistics.median(on_time):,.1f} | "
                      f"{1000 * statistics.median(first):,.1f} |",
                      flush=True)
    if args.dedup_held:
        print("\n| held ids | de-duplication of 50k events, ms |")
        print("| ---: | ---: |")
        for held in (int(x) for x in args.dedup_held.split(",")):
            ms = 1000 * statistics.median(time_dedup(rng, held, args.repeat))
            print(f"| {held:,} | {ms:,.1f} |", flush=True)
    if args.catch_up_hours:
        print("\n| method | items per minute | hours closed at once | "
              "firing s | windows ranked | ms per window |")
        print("| --- | ---: | ---: | ---: | ---: | ---: |")
        for method in args.methods.split(","):
            for items in items_list:
                for hours in (int(x) for x in args.catch_up_hours.split(",")):
                    seconds, n = time_catch_up(method, args.windows, args.k,
                                               rng, hours, items, types)
                    print(f"| {method} | {items:,} | {hours} | "
                          f"{seconds:,.2f} | {n:,} | "
                          f"{1000 * seconds / max(n, 1):,.2f} |", flush=True)
    if args.profile:
        items, minutes = max(items_list), max(minutes_list)
        panes = held_panes(args.methods.split(",")[0], args.windows, args.k,
                           rng, minutes, items, types)
        batch = minute_counts(rng, minutes - 1, max(1, items // 30), types)
        profiler = cProfile.Profile()
        profiler.enable()
        time_firings(panes, batch, minutes, args.repeat)
        profiler.disable()
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats(
            "cumulative").print_stats(15)
        print(out.getvalue())


if __name__ == "__main__":
    main()
