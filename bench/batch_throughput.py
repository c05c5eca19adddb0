"""Batch throughput: the columnar pipeline against the naive Beam pipeline
and the in-process floor, measured side by side in one run.

    .venv/bin/python bench/batch_throughput.py            # 20M events
    .venv/bin/python bench/batch_throughput.py --events 2000000 --repeat 1

Three contenders over the same generated JSON-lines events:

* pipeline: ``topk batch`` (all windows, k=100) on the local runner, parse +
  validate + de-duplicate + exact slices + every window's top-K + Parquet.
* naive: the textbook Beam pipeline, one element per event:
  ``ReadFromText | Map(json.loads) | WindowInto | Count.PerElement |
  Top.Of`` for every window spec, on a subset (it is ~1000x slower).
* floor: no Beam; read the same file with ``pyarrow.json`` and group-by
  count (event_type, minute, item) with Arrow, in one process.

Each contender runs in its own process (so peak memory is its own); each is
repeated and the median reported. The machine is noisy: read the ratios.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

TARGET_EVENTS_PER_S = 1_000_000
TARGET_VS_NAIVE = 100
TARGET_VS_FLOOR = 1 / 3


def generate(path: str, events: int, seed: int, items: int = 100_000,
             rate: float | None = None) -> None:
    """Cached synthetic input: ``events`` over one day unless ``rate``
    (events per second of event time) says otherwise."""
    from topk.loadgen import generator
    if os.path.exists(path):
        return
    config = generator.GeneratorConfig(
        events=events, items=items, zipf=1.1,
        rate=events / 86_400 if rate is None else rate,
        duplicate_share=0.01, malformed_share=0.0, ts_format="ms", seed=seed)
    tmp = path + ".tmp"
    generator.write_json_lines(config, tmp)
    os.replace(tmp, path)


def head(path: str, out: str, lines: int) -> None:
    if os.path.exists(out):
        return
    with open(path, "rb") as src, open(out + ".tmp", "wb") as dst:
        for i, line in enumerate(src):
            if i >= lines:
                break
            dst.write(line)
    os.replace(out + ".tmp", out)


# --- contenders, each run in a child process: `bench ... --run NAME PATH` ---

def run_pipeline(path: str, workdir: str, method: str = "exact") -> int:
    from topk.pipelines import batch
    result = batch.run([f"--input={path}", f"--output={workdir}/out",
                        "--windows=all", "--k=100", f"--method={method}"])
    counters = {r.key.metric.name: r.committed
                for r in result.metrics().query()["counters"]}
    return counters["events_valid"]


def run_floor(path: str, workdir: str) -> int:
    import pyarrow as pa
    import pyarrow.json as pa_json
    table = pa_json.read_json(path)
    ts = table["ts"].to_numpy()
    minute = pa.array(ts - ts % 60_000)
    counts = pa.table({"event_type": table["event_type"], "minute": minute,
                       "item_id": table["item_id"]}).group_by(
        ["event_type", "minute", "item_id"]).aggregate([([], "count_all")])
    assert counts.num_rows > 0
    return table.num_rows


def run_naive(path: str, workdir: str) -> int:
    import apache_beam as beam

    events = 0
    with open(path, "rb") as f:
        events = sum(1 for _ in f)
    with beam.Pipeline(runner="FnApiRunner") as p:
        naive_top_k(p | beam.io.ReadFromText(path), "all")
    return events


def naive_top_k(lines, windows: str = "all", k: int = 100) -> None:
    """The textbook per-element steps after a source of JSON lines (one
    Beam element per event): ``Map(json.loads) | WindowInto |
    Count.PerElement | Top.Of`` for every window spec of ``windows``.
    Also used by ``kafka_throughput.py`` behind the Kafka source."""
    import apache_beam as beam
    from apache_beam.transforms import window as beam_window

    from topk.core.windows import parse_windows
    parsed = (lines | "Parse" >> beam.Map(json.loads)
              | "Stamp" >> beam.Map(lambda e: beam_window.TimestampedValue(
                  (e["event_type"], e["item_id"]), e["ts"] / 1000)))
    for spec in parse_windows(windows):
        if spec.slide_ms is None:
            wfn = beam_window.FixedWindows(spec.length_ms / 1000)
        else:
            wfn = beam_window.SlidingWindows(spec.length_ms / 1000,
                                             spec.slide_ms / 1000)
        (parsed
         | f"Window {spec.name}" >> beam.WindowInto(wfn)
         | f"Item {spec.name}" >> beam.Map(lambda e: e[1])
         | f"Count {spec.name}" >> beam.combiners.Count.PerElement()
         | f"Top {spec.name}" >> beam.combiners.Top.Of(
             k, key=lambda kv: kv[1]).without_defaults())


CONTENDERS = {"pipeline": run_pipeline, "floor": run_floor, "naive": run_naive}


def measure(name: str, path: str, workdir: str, script: str = __file__
            ) -> dict:
    """Run one contender in a fresh process (``script --run name path
    workdir``, which calls ``child_main``); seconds, CPU seconds (all
    threads), events, events/s, peak RSS."""
    started = time.perf_counter()
    out = subprocess.run(
        [sys.executable, script, "--run", name, path, workdir],
        check=True, capture_output=True, text=True).stdout
    seconds = time.perf_counter() - started
    child = json.loads(out.strip().splitlines()[-1])
    # Keys a contender returned besides its event count pass through.
    return {**child, "wall_with_startup": seconds,
            "rate": child["events"] / child["seconds"]}


def print_run(name: str, i: int, r: dict) -> None:
    print(f"  {name} run {i + 1}: {r['events']:,} events in "
          f"{r['seconds']:.1f} s ({r['cpu_seconds']:.1f} s CPU) = "
          f"{r['rate']:,.0f} events/s, peak {r['peak_mb']:,.0f} MB",
          flush=True)


def medians(runs: list[dict]) -> dict:
    """Median seconds and events/s of a contender's runs, peak RSS max."""
    return {
        "rate": statistics.median(r["rate"] for r in runs),
        "seconds": statistics.median(r["seconds"] for r in runs),
        "cpu_seconds": statistics.median(r["cpu_seconds"] for r in runs),
        "peak_mb": max(r["peak_mb"] for r in runs),
        "events": runs[0]["events"],
    }


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def child_main(name: str, path: str, workdir: str,
               contenders: dict = CONTENDERS) -> None:
    """Run one contender; print one JSON line: seconds, CPU seconds, peak
    RSS and what it returned (an event count, or a dict with ``events``
    and anything else worth reporting)."""
    started, cpu_started = time.perf_counter(), _cpu_seconds()
    result = contenders[name](path, workdir)
    seconds = time.perf_counter() - started
    cpu_seconds = _cpu_seconds() - cpu_started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    extra = result if isinstance(result, dict) else {"events": result}
    print(json.dumps({"seconds": seconds, "cpu_seconds": cpu_seconds,
                      "peak_mb": peak_mb, **extra}))


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """``--repeat``, ``--dir`` and the hidden ``--run NAME PATH WORKDIR``
    (how ``measure`` starts a contender) of a benchmark script."""
    parser.add_argument("--repeat", type=int, default=3,
                        help="Runs per contender; the median is reported.")
    parser.add_argument("--dir", default="/tmp/topk-bench",
                        help="Work directory (the generated input is cached).")
    parser.add_argument("--run", nargs=3, help=argparse.SUPPRESS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000_000,
                        help="Events to generate (default 20M).")
    parser.add_argument("--naive-events", type=int, default=50_000,
                        help="Subset size for the naive pipeline (default 50k).")
    add_run_options(parser)
    args = parser.parse_args()
    if args.run:
        child_main(*args.run)
        return

    os.makedirs(args.dir, exist_ok=True)
    path = os.path.join(args.dir, f"events-{args.events}.jsonl")
    small = os.path.join(args.dir, f"events-{args.events}-head"
                         f"{args.naive_events}.jsonl")
    started = time.perf_counter()
    cached = os.path.exists(path)
    generate(path, args.events, seed=1)
    print(f"input: {args.events:,} events -> {path} ("
          + ("cached" if cached else
             f"generated in {time.perf_counter() - started:.1f} s") + ")")
    head(path, small, args.naive_events)
    size_mb = os.path.getsize(path) / 1e6

    results = {}
    for name, source in (("pipeline", path), ("floor", path),
                         ("naive", small)):
        runs = []
        for i in range(args.repeat):
            runs.append(measure(name, source, args.dir))
            print_run(name, i, runs[-1])
        results[name] = medians(runs)

    pipe, floor, naive = (results[n] for n in ("pipeline", "floor", "naive"))
    print()
    print(f"input: {args.events:,} events, {size_mb:,.0f} MB JSON lines; "
          f"windows: all 7 specs, k=100; median of {args.repeat}")
    print(f"{'contender':<10} {'events':>12} {'seconds':>9} {'events/s':>12} "
          f"{'peak MB':>9}")
    for name, r in results.items():
        print(f"{name:<10} {r['events']:>12,} {r['seconds']:>9.1f} "
              f"{r['rate']:>12,.0f} {r['peak_mb']:>9,.0f}")
    vs_naive = pipe["rate"] / naive["rate"]
    vs_floor = pipe["rate"] / floor["rate"]
    print()
    print(f"pipeline events/s: {pipe['rate']:,.0f} (target >= "
          f"{TARGET_EVENTS_PER_S:,}): {'MET' if pipe['rate'] >= TARGET_EVENTS_PER_S else 'MISSED'}")
    print(f"pipeline / naive:  {vs_naive:,.0f}x (target >= {TARGET_VS_NAIVE}x): "
          f"{'MET' if vs_naive >= TARGET_VS_NAIVE else 'MISSED'}")
    print(f"pipeline / floor:  {vs_floor:.2f} (target >= {TARGET_VS_FLOOR:.2f},"
          f" i.e. within 3x): {'MET' if vs_floor >= TARGET_VS_FLOOR else 'MISSED'}")


if __name__ == "__main__":
    main()
