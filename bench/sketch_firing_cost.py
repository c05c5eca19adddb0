"""The approximate stream's catch-up firings, Beam-free: the time
``SketchPanes.fire`` spends on a replay of what the sketch stage of
``topk stream --method cms`` gets while it catches up a topic, beside a
baseline checkout's.

    .venv/bin/python bench/sketch_firing_cost.py
    git worktree add /tmp/before HEAD~1
    .venv/bin/python bench/sketch_firing_cost.py --baseline /tmp/before

The replay: ``--events`` generated events (Zipf over ``--items``, over
``--hours`` of event time) are read in ``--rounds`` rounds of
``--partitions`` batches (each partition every n-th event, a round the
next stretch of each), as the Kafka source hands them on; each batch
becomes minute partials (``counting.count_slices``).
After each round the stage's close timer fires as ``on_close`` does
(``close_after_batch`` per batch, ``close_after_firing`` after a firing,
``coarse_close`` steps) up to the input watermark, which is the previous
round's newest event (aligned watermarks confirm a round at the next);
after the last round the watermark passes the end and the remaining
windows close. Early firings are left out (a catch-up defers them).

Every contender runs in its own process per repeat, the two alternating
(which goes first swaps every repeat); the medians are printed with a
digest of the ranked rows (all but ``emitted_at``), which must be equal.
"""
import argparse
import cProfile
import hashlib
import io
import json
import os
import pstats
import statistics
import sys
import time

from checkouts import alternating, run_child

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def child(root: str, spec: dict) -> dict:
    """Times the replay with the ``topk`` package under ``root``."""
    sys.path.insert(0, root)
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from topk.approx.sketches.common import DEFAULT_BUDGET_BYTES
    from topk.connectors.kafka.watermarks import ALLOWED_SKEW_MS
    from topk.core import arrow_ipc, counting, windows
    from topk.loadgen.generator import GeneratorConfig, generate_events
    from topk.streaming import panes as stream_panes
    from topk.streaming import sketch_panes
    from topk.streaming.sketch_panes import SketchPanes

    if not hasattr(sketch_panes, "close_after_batch"):
        # The replay closes as the stage does, by the stage's own rules.
        raise SystemExit(f"{root}: predates sketch_panes.close_after_batch "
                         "and SketchPanes.close_after_firing, which this "
                         "replay needs")
    events = generate_events(GeneratorConfig(
        events=spec["events"], items=spec["items"], zipf=spec["zipf"],
        rate=spec["events"] / (spec["hours"] * 3600), seed=spec["seed"],
        **({"burst_item": "hot-item", "burst_share": spec["burst_share"]}
           if spec.get("burst_share") else {})))
    # Each partition holds every n-th event in emission order; a round
    # reads the next stretch of every partition.
    stretches = [np.array_split(np.arange(p, events.num_rows,
                                          spec["partitions"]),
                                spec["rounds"])
                 for p in range(spec["partitions"])]
    rounds = [[events.take(pa.array(part[r])) for part in stretches]
              for r in range(spec["rounds"])]
    panes = SketchPanes(windows.parse_windows(spec["windows"]), spec["k"],
                        ["cms"], DEFAULT_BUDGET_BYTES, 0)
    clock = [pc.max(events["ts"]).as_py() + 3_600_000]  # processing time, ms

    def now() -> int:
        clock[0] += 1
        return clock[0]

    digest, rows, firings = hashlib.sha1(), 0, 0
    seconds = 0.0
    # Only around the firings, as the timing: the rest is the replay's.
    profiler = cProfile.Profile() if spec.get("profile") else None
    close, seen, pending, ahead = None, stream_panes.NO_WATERMARK, [], []
    watermark = stream_panes.NO_WATERMARK
    for r in range(spec["rounds"] + 1):
        if r < spec["rounds"]:
            for batch in rounds[r]:
                # The read stage's work, not the firings': not timed.
                partials = counting.count_slices(batch)
                pending.append(partials)
                starts = np.unique(partials["slice_start"].to_numpy())
                seen = stream_panes.newest_seen(seen, starts, now())
                due = sketch_panes.close_after_batch(
                    panes.specs, starts, panes.watermark_ms, close)
                if due is not None:
                    close = due
        # The input watermark: the round before's newest event (the last
        # round's end passes every window).
        if r >= 1:
            newest = max(pc.max(t["ts"]).as_py() for t in rounds[r - 1])
            watermark = (newest - ALLOWED_SKEW_MS if r < spec["rounds"]
                         else newest + 86_400_000)
        while close is not None and close <= watermark:
            t0 = time.perf_counter()
            if profiler:
                profiler.enable()
            firing = panes.fire(pending, now(), close, ahead=ahead)
            pending, ahead = [], ([firing.ahead] if firing.ahead.num_rows
                                  else [])
            close = panes.close_after_firing(firing.ahead, seen,
                                             ALLOWED_SKEW_MS)
            if profiler:
                profiler.disable()
            seconds += time.perf_counter() - t0
            firings += 1
            ranked = firing.ranked.drop_columns(["emitted_at"])
            rows += ranked.num_rows
            digest.update(arrow_ipc.to_bytes(ranked.sort_by([
                (c, "ascending") for c in ranked.column_names])
                .combine_chunks()))
    out = {"seconds": seconds, "firings": firings, "rows": rows,
           "digest": digest.hexdigest()[:12]}
    if profiler:
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats(
            "cumulative").print_stats(spec["profile"])
        out["profile"] = text.getvalue()
    return out


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=2_000_000,
                   help="events replayed (default 2M, the #13 topic)")
    p.add_argument("--items", type=int, default=100_000,
                   help="distinct items (default 100k, as the #13 topic)")
    p.add_argument("--zipf", type=float, default=1.1,
                   help="popularity exponent (default 1.1; 0 is uniform)")
    p.add_argument("--hours", type=float, default=24.0,
                   help="event time the events span (default 24)")
    p.add_argument("--burst-share", type=float, default=0.0,
                   help="a hot item ('hot-item') takes this share of the "
                   "events of ten minutes in the middle of the span "
                   "(default 0: no burst)")
    p.add_argument("--rounds", type=int, default=3,
                   help="read rounds the topic is caught up in (default 3)")
    p.add_argument("--partitions", type=int, default=4,
                   help="batches per round (default 4)")
    p.add_argument("--windows", default="1m,1h,1h/1m",
                   help="window specs (default 1m,1h,1h/1m)")
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeat", type=int, default=3,
                   help="runs per contender; medians are printed "
                   "(default 3)")
    p.add_argument("--baseline", metavar="DIR",
                   help="a checkout of the code to compare with (its own "
                   "topk package, with sketch_panes.close_after_batch); "
                   "runs alternate with this one's")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="after the timed runs, replay once more with this "
                   "checkout under cProfile (the firings only) and print "
                   "the N functions with the most cumulative time; that "
                   "run is not in the table (cProfile slows Python calls)")
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], json.loads(args.child[1]))))
        return
    if args.baseline and not os.path.isdir(
            os.path.join(args.baseline, "topk")):
        p.error(f"--baseline {args.baseline}: no topk package there")
    spec = {k: getattr(args, k) for k in ("events", "items", "zipf", "hours",
                                          "burst_share", "rounds",
                                          "partitions", "windows", "k",
                                          "seed")}
    roots = [("this checkout", REPO)]
    if args.baseline:
        roots.append(("baseline", os.path.abspath(args.baseline)))
    burst = (f", a hot item {args.burst_share:g} of ten minutes"
             if args.burst_share else "")
    print(f"replaying {args.events:,} events over {args.items:,} items "
          f"(Zipf {args.zipf:g}{burst}), {args.hours:g} h, "
          f"{args.rounds} rounds of {args.partitions} batches, "
          f"windows {args.windows}, "
          f"k={args.k}", flush=True)
    results = {name: [] for name, _ in roots}
    for i, name, root in alternating(roots, args.repeat):
        out = run_child(__file__, root, spec)
        results[name].append(out)
        print(f"  {name} run {i + 1}: {out['seconds']:.2f} s, "
              f"{out['firings']} firings, {out['rows']:,} rows, "
              f"digest {out['digest']}", flush=True)
    print("\n| contender | firings | ranked rows | seconds (median) | ratio |"
          "\n| --- | ---: | ---: | ---: | ---: |")
    base = statistics.median(r["seconds"] for r in results[roots[0][0]])
    for name, _ in roots:
        runs = results[name]
        median = statistics.median(r["seconds"] for r in runs)
        print(f"| {name} | {runs[0]['firings']} | {runs[0]['rows']:,} | "
              f"{median:.2f} | {median / base:.2f} |")
    digests = {r["digest"] for runs in results.values() for r in runs}
    print("\nranked rows: " + ("the same in every run" if len(digests) == 1
                               else f"DIFFER: {sorted(digests)}"))
    if args.profile:
        out = run_child(__file__, REPO, {**spec, "profile": args.profile})
        print(f"\nthis checkout under cProfile ({out['seconds']:.2f} s of "
              f"firings):\n{out['profile']}")
    if len(digests) != 1:
        sys.exit(1)


if __name__ == "__main__":
    main()
