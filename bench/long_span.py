"""Memory and time of the per-shard exact ranking over a long event-time span.

    python bench/long_span.py                       # 300k events, 2 years, 4000 items
    python bench/long_span.py --events 1000000 --years 1 --windows 1h/1m

Events come from the generator (Zipf items, two event types) spread over
``--years`` of event time; they are counted into one-minute slices
(``counting.count_slices``) and split into ``--shards`` item shards as the
pipeline does. For every window spec a fresh child process (capped with
``RLIMIT_AS`` at ``--cap-gb``) runs ``ranking.shard_top_k`` on each shard in
turn (``iter_shard_top_k``, consumed a chunk at a time as ``RankWindows``
does, when the module has it) and reports wall and CPU time and the child's
peak RSS above the counts themselves (``ru_maxrss`` minus the RSS once the
counts are loaded). ``--impl old.py`` times another ranking module instead.
"""
import argparse
import os
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

YEAR_S = 365 * 86400


def counts_path(args) -> str:
    return os.path.join(args.tmp, f"counts-{args.events}-{args.items}-"
                        f"{args.years}.parquet")


def build_counts(args) -> str:
    import pyarrow.parquet as pq
    from topk.core import counting
    from topk.loadgen import generator
    path = counts_path(args)
    if not os.path.exists(path):
        os.makedirs(args.tmp, exist_ok=True)
        cfg = generator.GeneratorConfig(
            events=args.events, items=args.items,
            rate=args.events / (args.years * YEAR_S), seed=args.seed)
        counts = counting.count_slices(generator.generate_events(cfg))
        pq.write_table(counts, path)
    return path


def child(args) -> None:
    import pyarrow.parquet as pq
    from topk.core import ranking, sharding
    from topk.core.windows import WindowSpec
    cap = int(args.cap_gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    counts = pq.read_table(args.child_counts)
    shard = sharding.shard_of(counts["item_id"], args.shards)
    shards = [rows for _, rows in sharding.split_by_shard(counts, shard,
                                                          args.shards)]
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    spec = WindowSpec.parse(args.child_spec)
    if args.child_impl:
        # Another ranking module (e.g. an older revision), same interface.
        import importlib.util
        loader = importlib.util.spec_from_file_location("ranking_impl",
                                                        args.child_impl)
        ranking = importlib.util.module_from_spec(loader)
        loader.loader.exec_module(ranking)
    t0, c0 = time.perf_counter(), time.process_time()
    rows = 0
    for rows_of_shard in shards:
        if hasattr(ranking, "iter_shard_top_k"):
            # Consumed a chunk at a time, as RankWindows does.
            for _, _, top in ranking.iter_shard_top_k(rows_of_shard, [spec],
                                                      args.k):
                rows += top.candidates.num_rows
        else:
            top = ranking.shard_top_k(rows_of_shard, [spec], args.k)[spec]
            rows += top.candidates.num_rows
    elapsed = time.perf_counter() - t0
    cpu = time.process_time() - c0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"{spec.name}\t{counts.num_rows}\t{rows}\t{elapsed:.2f}\t"
          f"{cpu:.2f}\t{base / 1024:.0f}\t{(peak - base) / 1024:.0f}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=300_000)
    p.add_argument("--items", type=int, default=4000)
    p.add_argument("--years", type=float, default=2.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shards", type=int, default=8)
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--windows", default="all")
    p.add_argument("--cap-gb", type=float, default=8.0)
    p.add_argument("--tmp", default="/tmp/topk-long-span")
    p.add_argument("--impl", help="path of another ranking module to time "
                   "(e.g. `git show REV:topk/core/ranking.py > old.py`)")
    p.add_argument("--child-spec", help=argparse.SUPPRESS)
    p.add_argument("--child-impl", help=argparse.SUPPRESS)
    p.add_argument("--child-counts", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child_spec:
        return child(args)
    from topk.core.windows import parse_windows
    path = build_counts(args)
    print(f"# {args.events} events, {args.items} items, {args.years} years, "
          f"{args.shards} shards, k={args.k}, cap {args.cap_gb} GB")
    print("spec\tcount_rows\tcandidates\twall_s\tcpu_s\tbase_rss_mb\t"
          "extra_peak_mb")
    for spec in parse_windows(args.windows):
        r = subprocess.run(
            [sys.executable, __file__, "--child-spec", spec.name,
             "--child-counts", path, "--shards", str(args.shards),
             "--k", str(args.k), "--cap-gb", str(args.cap_gb)]
            + (["--child-impl", args.impl] if args.impl else []),
            capture_output=True, text=True)
        if r.returncode:
            tail = (r.stderr.strip().splitlines() or ["?"])[-1]
            print(f"{spec.name}\tFAILED ({tail})")
        else:
            print(r.stdout.strip(), flush=True)


if __name__ == "__main__":
    main()
