"""Cost per event of the approximate path against the exact path, measured
side by side in one run over the same input.

    .venv/bin/python bench/approximate_cost.py                    # 2M events, 2.2 h
    .venv/bin/python bench/approximate_cost.py --rate 23.15       # 2M events, 1 day

Contenders, each ``topk batch --windows all --k 100`` on the local runner
over the same generated JSON lines (``batch_throughput.generate``), each in
a fresh process, interleaved, repeated, medians reported:

* ``exact``, ``cms``, ``frequent_items``: ``--method`` that one method;
* ``shared``: only the steps every method shares (read, parse, validate,
  de-duplicate, exact minute partials), so that each method's own path can
  be isolated: ``path = seconds - shared seconds``.

It prints seconds, events/s and the ratio to exact of both the whole run
and the method's own path, in wall-clock and in CPU seconds (the process's
own CPU time, which load from other processes on a shared machine
disturbs less than wall-clock time). The approximate path's work grows with the
number of windows (every sliding window is a merge of sketches), the exact
path's with the number of distinct (item, minute) rows, so the ratio depends
on the event-time rate: ``--rate`` (events per second of event time;
default 250, 2M events over 2.2 hours as in the issue's measurement).
"""
import argparse
import functools
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import batch_throughput as bt  # noqa: E402

METHODS = ("exact", "cms", "frequent_items")


def run_shared(path: str, workdir: str) -> int:
    """Read, parse and de-duplicate into minute partials, then nothing: the
    part of ``topk batch`` every method shares."""
    import apache_beam as beam
    from apache_beam.metrics import Metrics

    from topk.pipelines.batch import LOCAL_BATCH_RUNNER
    from topk.sources.files import ReadEventFiles
    from topk.transforms.exact import DedupSliceCounts
    from topk.transforms.parse import ParseEvents

    rows = Metrics.counter("bench", "partial_rows")
    pipeline = beam.Pipeline(runner=LOCAL_BATCH_RUNNER)
    parsed = pipeline | ReadEventFiles(path) | ParseEvents()
    # A consumer, so the partials are surely computed.
    _ = (parsed.events | DedupSliceCounts()
         | beam.Map(lambda kv: rows.inc(kv[1].num_rows)))
    result = pipeline.run()
    result.wait_until_finish()
    counters = {r.key.metric.name: r.committed
                for r in result.metrics().query()["counters"]}
    assert counters["partial_rows"] > 0
    return counters["events_valid"]


CONTENDERS = {"shared": run_shared, **{
    m: functools.partial(bt.run_pipeline, method=m) for m in METHODS}}


def count_pickles(name: str, path: str, workdir: str) -> None:
    """Run one contender in this process with ``pickle.dumps`` and
    ``pickle.loads`` counted by the type of what they pickle, and print
    the counts: what the runner's ``PickleCoder`` (which looks both up
    when a pipeline runs) moves between stages. The timings include the
    counting's own small cost."""
    import collections
    import pickle
    import time

    stats = collections.defaultdict(lambda: [0, 0, 0.0, 0])
    dumps, loads = pickle.dumps, pickle.loads

    def counted(fn, obj_of, slot):
        def wrapper(value, *args, **kwargs):
            started = time.perf_counter()
            out = fn(value, *args, **kwargs)
            entry = stats[type(obj_of(value, out)).__name__]
            entry[slot] += 1
            entry[2] += time.perf_counter() - started
            entry[3] += len(out if slot == 0 else value)
            return out
        return wrapper

    pickle.dumps = counted(dumps, lambda value, _: value, 0)
    pickle.loads = counted(loads, lambda _, out: out, 1)
    started = time.perf_counter()
    try:
        CONTENDERS[name](path, workdir)
    finally:
        pickle.dumps, pickle.loads = dumps, loads
    print(f"{name}: {time.perf_counter() - started:.1f} s; pickled, by "
          "type (seconds and MB both ways):")
    print(f"{'type':<28} {'dumps':>9} {'loads':>9} {'seconds':>8} "
          f"{'MB':>8}")
    for kind, (n_dumps, n_loads, seconds, size) in sorted(
            stats.items(), key=lambda kv: -kv[1][2])[:12]:
        print(f"{kind:<28} {n_dumps:>9,} {n_loads:>9,} {seconds:>8.2f} "
              f"{size / 1e6:>8.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=2_000_000,
                        help="Events to generate (default 2M).")
    parser.add_argument("--rate", type=float, default=250,
                        help="Events per second of event time (default 250: "
                        "2M events span 2.2 hours).")
    parser.add_argument("--items", type=int, default=10_000,
                        help="Distinct items (default 10k).")
    parser.add_argument("--methods", default=",".join(METHODS[1:]),
                        help="Approximate methods to run beside shared and "
                        "exact (default: cms,frequent_items).")
    parser.add_argument("--pickles", metavar="CONTENDER",
                        help="instead of timing, run CONTENDER once and "
                        "count what is pickled, by type")
    bt.add_run_options(parser)
    args = parser.parse_args()
    if args.run:
        bt.child_main(*args.run, contenders=CONTENDERS)
        return

    os.makedirs(args.dir, exist_ok=True)
    path = os.path.join(args.dir, f"events-{args.events}-{args.items}items-"
                        f"{args.rate:g}per_s.jsonl")
    bt.generate(path, args.events, seed=1, items=args.items, rate=args.rate)
    hours = args.events / args.rate / 3600
    print(f"input: {args.events:,} events over {hours:.1f} h of event time, "
          f"{args.items:,} items -> {path}")
    if args.pickles:
        if args.pickles not in CONTENDERS:
            parser.error(f"--pickles: choose from {', '.join(CONTENDERS)}")
        count_pickles(args.pickles, path, args.dir)
        return

    methods = [m for m in args.methods.split(",") if m]
    unknown = set(methods) - set(METHODS[1:])
    if unknown:
        parser.error(f"unknown method(s) {', '.join(sorted(unknown))}")
    names = ("shared", "exact", *methods)
    runs = {name: [] for name in names}
    # Interleaved, so that load from elsewhere on the machine hits every
    # contender alike.
    for i in range(args.repeat):
        for name in names:
            runs[name].append(bt.measure(name, path, args.dir,
                                         script=__file__))
            bt.print_run(name, i, runs[name][-1])
    results = {name: bt.medians(r) for name, r in runs.items()}

    print()
    print(f"windows: all 7 specs, k=100; median of {args.repeat}; a path = "
          "the contender minus shared (read, parse, de-duplicate)")
    print(f"{'contender':<15} {'seconds':>8} {'events/s':>11} {'vs exact':>9}"
          f" {'path s':>7} {'path vs exact':>14} {'CPU s':>7} "
          f"{'CPU path vs exact':>18} {'peak MB':>8}")
    ratios = {}
    for name in names:
        r = results[name]
        line = (f"{name:<15} {r['seconds']:>8.2f} {r['rate']:>11,.0f} "
                f"{r['seconds'] / results['exact']['seconds']:>8.2f}x")
        path = {key: r[key] - results["shared"][key]
                for key in ("seconds", "cpu_seconds")}
        ratios[name] = {key: path[key] / (results["exact"][key]
                                          - results["shared"][key])
                        for key in path}
        if name == "shared":
            line += f" {'':>7} {'':>14} {r['cpu_seconds']:>7.2f} {'':>18}"
        else:
            line += (f" {path['seconds']:>7.2f} "
                     f"{ratios[name]['seconds']:>13.2f}x "
                     f"{r['cpu_seconds']:>7.2f} "
                     f"{ratios[name]['cpu_seconds']:>17.2f}x")
        print(line + f" {r['peak_mb']:>8,.0f}")
    print()
    for m in methods:
        wall, cpu = ratios[m]["seconds"], ratios[m]["cpu_seconds"]
        print(f"{m} path per event vs exact path: {wall:.2f}x wall, "
              f"{cpu:.2f}x CPU (target <= 1.00x): "
              f"{'MET' if max(wall, cpu) <= 1 else 'MISSED'}")


if __name__ == "__main__":
    main()
