"""What the exact stream's de-duplication costs per batch as the ids it
holds grow (issue #13, exact latency and flat cost).

A live ``topk stream --method exact`` keeps every admitted id for its
allowed lateness plus a retention margin (``topk.streaming.dedup``): at
50,000 events/s that is about 240M ids per hour and a half. ``SeenIds``
keeps them in sorted runs merged as a binary counter, so now and then one
admit merges runs as big as half of everything held: a stall of the whole
single-process stream. Partitioning the ids by hash (``PARTITION_BITS``)
bounds a merge to one partition.

This admits batches of fresh events (1% copies of held ids) into one
``SeenIds`` per layout, Beam-free, until ``--held`` ids are held, and
prints per layout the median, p99 and worst time of one admit and the
total, for the partitioned layout and the single counter
(``partition_bits=0``, the layout before) side by side, in one run. The
layouts alternate batch by batch, so machine noise hits both alike.

    .venv/bin/python bench/dedup_ids.py
    .venv/bin/python bench/dedup_ids.py --held 60000000 --batch 12500
"""
import argparse
import statistics
import time

import numpy as np
import pyarrow as pa

from topk.streaming import dedup

T0 = 1_714_521_600_000  # 2024-05-01T00:00:00Z


def batches(total: int, size: int, seed: int):
    """Event tables of ``size`` rows: ids ``e<n>`` in arrival order, 1%
    copies of earlier ids, one minute of event time per 3M events."""
    rng = np.random.default_rng(seed)
    for first in range(0, total, size):
        n = min(size, total - first)
        ids = np.arange(first, first + n)
        copies = rng.random(n) < 0.01
        ids[copies] = rng.integers(0, max(first, 1), copies.sum())
        ts = T0 + (first // 3_000_000) * 60_000 + rng.integers(0, 60_000, n)
        yield pa.table({
            "event_id": pa.array([f"e{i}" for i in ids.tolist()]),
            "item_id": pa.array(["a"] * n), "event_type": ["play"] * n,
            "ts": pa.array(ts, pa.int64()), "weight": pa.array(
                np.ones(n, np.int64))})


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--held", type=int, default=30_000_000,
                        help="Ids to admit in all (default 30M: ten "
                        "minutes at 50,000 events/s).")
    parser.add_argument("--batch", type=int, default=12_500,
                        help="Events per admit (default 12,500: a 0.25 s "
                        "read at 50,000 events/s).")
    parser.add_argument("--bits", default=f"0,{dedup.PARTITION_BITS}",
                        help="Partition bits to compare (default "
                        f"0,{dedup.PARTITION_BITS}).")
    args = parser.parse_args(argv)
    layouts = {int(b): dedup.SeenIds(partition_bits=int(b))
               for b in args.bits.split(",")}
    times = {b: [] for b in layouts}
    started = time.perf_counter()
    for i, events in enumerate(batches(args.held, args.batch, seed=1)):
        for bits, seen in layouts.items():
            t = time.perf_counter()
            seen.admit(events, horizon_ms=T0)
            times[bits].append(time.perf_counter() - t)
        if i % 400 == 0:
            held = len(next(iter(layouts.values())))
            print(f"  {held / 1e6:.1f}M ids held, "
                  f"{time.perf_counter() - started:.0f} s", flush=True)
    print(f"\n{args.held / 1e6:.0f}M ids admitted in batches of "
          f"{args.batch:,} (ms per admit):")
    print(f"{'partition bits':>15} {'median':>8} {'p99':>8} {'worst':>8} "
          f"{'total s':>8}")
    for bits, ts in times.items():
        ms = sorted(t * 1000 for t in ts)
        print(f"{bits:>15} {statistics.median(ms):>8.1f} "
              f"{ms[int(len(ms) * 0.99)]:>8.1f} {ms[-1]:>8.1f} "
              f"{sum(ms) / 1000:>8.1f}")


if __name__ == "__main__":
    main()
