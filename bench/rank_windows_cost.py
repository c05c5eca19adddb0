"""Ranking sliding windows of minute sketches, Beam-free: the time of one
``CountMinTopK.rank_ranges`` call over every window of ``--windows``
minutes of generated minute sketches (what the sketch stage's firings and
the batch path's blocks spend on ranking), beside a baseline checkout's.

    .venv/bin/python bench/rank_windows_cost.py
    git worktree add /tmp/before HEAD~1
    .venv/bin/python bench/rank_windows_cost.py --baseline /tmp/before

Each minute holds ``--per-minute`` events over ``--items`` items (uniform,
or Zipf with ``--zipf`` > 1), one Count-Min sketch each at the default
budget. Every contender runs in its own process per repeat, the two
alternating (which goes first swaps every repeat); the medians are printed
with a digest of the ranked rows, which must be equal (the same answers,
computed two ways).
"""
import argparse
import hashlib
import json
import os
import statistics
import sys
import time

from checkouts import alternating, run_child

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def child(root: str, spec: dict) -> dict:
    """Times the ranking with the ``topk`` package under ``root``."""
    sys.path.insert(0, root)
    import numpy as np
    import pyarrow as pa
    from topk.approx import sketches
    from topk.approx.sketches.count_min import CountMinTopK

    rng = np.random.default_rng(spec["seed"])
    ids = np.array([f"item-{i:07d}" for i in range(spec["items"])])
    minutes = []
    for _ in range(spec["minutes"]):
        x = (rng.zipf(spec["zipf"], spec["per_minute"]) % spec["items"]
             if spec["zipf"] > 1 else
             rng.integers(0, spec["items"], spec["per_minute"]))
        item, count = np.unique(x, return_counts=True)
        minutes.append(sketches.new_sketch("cms").update(
            pa.array(ids[item]), count))
    out = {"exact_minutes": sum(m.exact for m in minutes), "windows": {}}
    for length in spec["windows"]:
        ranges = [(a, a + length)
                  for a in range(spec["minutes"] - length + 1)]
        t0 = time.perf_counter()
        rows, totals = CountMinTopK.rank_ranges(minutes, ranges, spec["k"])
        seconds = time.perf_counter() - t0
        digest = hashlib.sha1(repr((rows.to_pylist(), totals.tolist()))
                              .encode()).hexdigest()[:12]
        out["windows"][str(length)] = {"seconds": seconds,
                                       "rows": rows.num_rows,
                                       "digest": digest}
    return out


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=int, default=300,
                   help="minute sketches (default 300)")
    p.add_argument("--per-minute", type=int, default=1400,
                   help="events per minute (default 1400: 2M a day)")
    p.add_argument("--items", type=int, default=10_000,
                   help="distinct items (default 10k)")
    p.add_argument("--zipf", type=float, default=0,
                   help="Zipf exponent of the items (> 1), or 0 for "
                   "uniform (default)")
    p.add_argument("--windows", default="1,60",
                   help="window lengths in minutes, comma-separated "
                   "(default 1,60: the 1m and 1h/1m specs)")
    p.add_argument("--k", type=int, default=100, help="top K (default 100)")
    p.add_argument("--repeat", type=int, default=5,
                   help="runs of each contender (default 5)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--baseline", metavar="DIR",
                   help="another checkout whose topk package to time "
                   "alternately (e.g. a worktree of the commit before)")
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], json.loads(args.child[1]))))
        return
    spec = {"minutes": args.minutes, "per_minute": args.per_minute,
            "items": args.items, "zipf": args.zipf, "k": args.k,
            "seed": args.seed,
            "windows": [int(w) for w in args.windows.split(",")]}
    if not 0 < max(spec["windows"]) <= args.minutes:
        p.error("--windows must be between 1 and --minutes")
    contenders = {"this checkout": REPO}
    if args.baseline:
        contenders["baseline"] = os.path.abspath(args.baseline)
    runs = {name: [] for name in contenders}
    for i, name, root in alternating(list(contenders.items()), args.repeat):
        runs[name].append(run_child(__file__, root, spec))
        print(f"run {i + 1} {name}: " + ", ".join(
            f"{w} min {r['seconds']:.3f} s"
            for w, r in runs[name][-1]["windows"].items()),
            file=sys.stderr, flush=True)
    first = runs["this checkout"][0]
    print(f"{args.minutes} minutes of {args.per_minute:,} events over "
          f"{args.items:,} items ({'Zipf ' + str(args.zipf) if args.zipf > 1 else 'uniform'}), "
          f"{first['exact_minutes']} exact sketches; k={args.k}; medians of "
          f"{args.repeat}\n")
    print("| window | contender | windows ranked | seconds | rows digest |")
    print("| ---: | --- | ---: | ---: | --- |")
    medians = {}
    for w in first["windows"]:
        for name in contenders:
            seconds = statistics.median(r["windows"][w]["seconds"]
                                        for r in runs[name])
            medians[(w, name)] = seconds
            result = runs[name][0]["windows"][w]
            print(f"| {w} min | {name} | {args.minutes - int(w) + 1:,} | "
                  f"{seconds:.3f} | {result['digest']} |")
    if args.baseline:
        print()
        for w in first["windows"]:
            same = (runs["this checkout"][0]["windows"][w]["digest"]
                    == runs["baseline"][0]["windows"][w]["digest"])
            print(f"- {w} min: this checkout / baseline "
                  f"{medians[(w, 'this checkout')] / medians[(w, 'baseline')]:.2f}x"
                  f" the time; answers {'equal' if same else 'DIFFER'}")


if __name__ == "__main__":
    main()
