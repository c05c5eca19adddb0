"""Batch throughput: ``topk batch --windows all`` against the in-process
floors, at the sizes of issue 12, measured side by side in one run.

    .venv/bin/python bench/batch_throughput.py                 # full sizes
    .venv/bin/python bench/batch_throughput.py --scale 0.05 --repeat 1

Three inputs (generated JSON lines, 1% duplicates, cached under ``--dir``;
``--scale`` multiplies the event counts, the spans stay):

* (a) 20M events over 1 day, 10k items;
* (b) 10M events over 365 days, 20k items;
* (c) the same 10M events over 30 days.

Contenders over each input, each in its own process (so peak RSS is its
own), repeated and the median reported:

* ``pipeline``: ``topk batch --windows all --k 100`` on the local runner:
  parse + validate + de-duplicate + exact slices + every window's top-K +
  output tables.
* ``floor_arrow``: no Beam; ``pyarrow.json`` reads the file, Arrow group-by
  counts (event_type, minute, item).
* ``floor_duckdb``: no Beam; DuckDB's ``read_json`` + the same group-by.
* ``naive`` (with ``--naive-events N``): the textbook one-element-per-event
  Beam pipeline on the first N events of (a).
* ``write_floor``: the seconds pyarrow alone takes to write the ranked rows
  the pipeline wrote for the input, once: a sliding ``1h/1m`` window every
  minute of a year is tens of rows per event, and no engine writes them
  faster than this.

The targets are printed beside the figures: >= 1M events/s on (a), >= 500k
on (b), peak RSS <= 2 GB on (a) and (b), and peak RSS of (b) / (c) <= 1.2
(cost follows the window, not the span). The machine is noisy: read the
ratios.
"""
import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

DAY_S = 86_400

#: name -> (events at scale 1, items, days of event time)
INPUTS = {
    "a": (20_000_000, 10_000, 1),
    "b": (10_000_000, 20_000, 365),
    "c": (10_000_000, 20_000, 30),
}
TARGET_RATE = {"a": 1_000_000, "b": 500_000}
TARGET_PEAK_MB = {"a": 2048, "b": 2048}
TARGET_SPAN_RSS_RATIO = 1.2  # peak RSS (b) / (c)


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

def output_of(path: str, workdir: str) -> str:
    """The pipeline's output directory for one input (one per input, so
    runs on different inputs never share committed slices)."""
    return os.path.join(workdir, "out-" + os.path.basename(path))


def run_pipeline(path: str, workdir: str, method: str = "exact") -> int:
    from topk.pipelines import batch
    out = output_of(path, workdir)
    shutil.rmtree(out, ignore_errors=True)
    result = batch.run([f"--input={path}", f"--output={out}",
                        "--windows=all", "--k=100", f"--method={method}"])
    counters = {r.key.metric.name: r.committed
                for r in result.metrics().query()["counters"]}
    return counters["events_valid"]


def run_write_floor(path: str, workdir: str) -> dict:
    """The output's own floor: the seconds pyarrow alone takes to write the
    ranked rows the pipeline wrote for this input (read back from its
    output; only the writes are timed) once, as one zstd Parquet file.
    Any engine that writes those rows pays at least this."""
    import pyarrow.parquet as pq
    from topk.storage import layout, tables
    rows = tables.dataset(output_of(path, workdir), layout.RANKED_WINDOWS)
    target = os.path.join(workdir, "write-floor.parquet")
    written, seconds = 0, 0.0
    with pq.ParquetWriter(target, rows.schema, compression="zstd") as out:
        for batch in rows.to_batches(batch_size=1 << 16):
            started = time.perf_counter()
            out.write_batch(batch)
            seconds += time.perf_counter() - started
            written += batch.num_rows
        started = time.perf_counter()
    seconds += time.perf_counter() - started  # the footer, on close
    os.remove(target)
    with open(path, "rb") as f:
        events = sum(1 for _ in f)
    return {"events": events, "write_seconds": seconds, "rows": written}


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


def run_floor_duckdb(path: str, workdir: str) -> int:
    import duckdb
    con = duckdb.connect()
    [(rows, events)] = con.sql(
        "SELECT count(*), sum(n) FROM (SELECT event_type, "
        "ts - ts % 60000 AS minute, item_id, count(*) AS n FROM read_json("
        "?, format='newline_delimited', columns={event_id: 'VARCHAR', "
        "item_id: 'VARCHAR', event_type: 'VARCHAR', ts: 'BIGINT', "
        "user_id: 'VARCHAR'}) GROUP BY ALL)", params=[path]).fetchall()
    assert rows > 0
    return int(events)


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


CONTENDERS = {"pipeline": run_pipeline, "floor": run_floor,
              "floor_arrow": run_floor, "floor_duckdb": run_floor_duckdb,
              "naive": run_naive, "write_floor": run_write_floor}


def measure(name: str, path: str, workdir: str, script: str = __file__,
            timeout: float | None = None) -> dict:
    """Run one contender in a fresh process (``script --run name path
    workdir``, which calls ``child_main``); seconds, CPU seconds (all
    threads), events, events/s, peak RSS."""
    started = time.perf_counter()
    out = subprocess.run(
        [sys.executable, script, "--run", name, path, workdir],
        check=True, capture_output=True, text=True, timeout=timeout).stdout
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


def _verdict(ok: bool) -> str:
    return "MET" if ok else "MISSED"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=1.0,
                        help="Multiplies the event counts of (a), (b), (c) "
                        "(default 1: 20M, 10M, 10M); the spans stay.")
    parser.add_argument("--inputs", default="a,b,c",
                        help="Which inputs to run (default a,b,c).")
    parser.add_argument("--contenders",
                        default="pipeline,floor_arrow,floor_duckdb,"
                        "write_floor",
                        help="Which contenders to run on each input "
                        "(write_floor reads the output of pipeline, so it "
                        "comes after it).")
    parser.add_argument("--naive-events", type=int, default=0,
                        help="Also run the naive pipeline on this many "
                        "events of (a) (default 0: skip; it is ~1000x "
                        "slower).")
    parser.add_argument("--timeout", type=float, default=1800,
                        help="Seconds one run may take before it counts as "
                        "failed (default 1800).")
    add_run_options(parser)
    args = parser.parse_args()
    if args.run:
        child_main(*args.run)
        return

    os.makedirs(args.dir, exist_ok=True)
    names = [n.strip() for n in args.inputs.split(",") if n.strip()]
    contenders = [c.strip() for c in args.contenders.split(",") if c.strip()]
    paths, sizes = {}, {}
    for name in names:
        events, items, days = INPUTS[name]
        n = max(1000, int(events * args.scale))
        path = os.path.join(args.dir, f"events-{n}-{items}i-{days}d.jsonl")
        started = time.perf_counter()
        cached = os.path.exists(path)
        generate(path, n, seed=1, items=items, rate=n / (days * DAY_S))
        print(f"input ({name}): {n:,} events, {items:,} items, {days} days -> "
              f"{path} (" + ("cached" if cached else "generated in "
                             f"{time.perf_counter() - started:.1f} s") + ")",
              flush=True)
        paths[name] = path
        sizes[name] = os.path.getsize(path) / 1e6
        print(f"  {sizes[name]:,.0f} MB of JSON lines", flush=True)
    jobs = [(name, c, paths[name]) for name in names for c in contenders]
    if args.naive_events and "a" in paths:
        small = paths["a"][:-len(".jsonl")] + f"-head{args.naive_events}.jsonl"
        head(paths["a"], small, args.naive_events)
        jobs.append(("a", "naive", small))

    results = {}
    # Round-robin over the repeats, so that drift of the machine's speed
    # spreads over every contender alike.
    runs = {(name, c): [] for name, c, _ in jobs}
    for i in range(args.repeat):
        for name, c, path in jobs:
            try:
                r = measure(c, path, args.dir, timeout=args.timeout)
            except (subprocess.CalledProcessError,
                    subprocess.TimeoutExpired) as e:
                print(f"  ({name}) {c} run {i + 1}: FAILED "
                      f"({type(e).__name__})", flush=True)
                continue
            runs[(name, c)].append(r)
            print_run(f"({name}) {c}", i, r)
    for key, rs in runs.items():
        if rs:
            results[key] = medians(rs)
            if "write_seconds" in rs[0]:
                results[key]["write_seconds"] = statistics.median(
                    r["write_seconds"] for r in rs)
                results[key]["rows"] = rs[0]["rows"]

    print()
    print(f"windows: all 7 specs, k=100; scale {args.scale}; median of "
          f"{args.repeat}")
    print(f"{'input':<6} {'contender':<13} {'events':>12} {'seconds':>9} "
          f"{'events/s':>12} {'peak MB':>9}  target")
    for (name, c), r in results.items():
        if c == "write_floor":  # reported below, as seconds of writing
            continue
        target = ""
        if c == "pipeline" and name in TARGET_RATE:
            target = (f">= {TARGET_RATE[name]:,}/s: "
                      f"{_verdict(r['rate'] >= TARGET_RATE[name])}; "
                      f"<= {TARGET_PEAK_MB[name]:,} MB: "
                      f"{_verdict(r['peak_mb'] <= TARGET_PEAK_MB[name])}")
        print(f"{name:<6} {c:<13} {r['events']:>12,} {r['seconds']:>9.1f} "
              f"{r['rate']:>12,.0f} {r['peak_mb']:>9,.0f}  {target}")
    pipe = {name: results.get((name, "pipeline")) for name in names}
    for name in names:
        floor = results.get((name, "write_floor"))
        if floor:
            # What the target would leave for writing the output once.
            budget = floor["events"] / TARGET_RATE.get(name, float("inf"))
            print(f"({name}) output: {floor['rows']:,} ranked rows "
                  f"({floor['rows'] / floor['events']:,.1f} per event); "
                  f"writing them once with pyarrow alone: "
                  f"{floor['write_seconds']:.1f} s"
                  + (f" (the events/s target leaves {budget:.1f} s for "
                     "the whole run)" if name in TARGET_RATE else ""))
    for name in names:
        for floor in ("floor_arrow", "floor_duckdb"):
            if pipe[name] and results.get((name, floor)):
                print(f"({name}) pipeline / {floor}: "
                      f"{pipe[name]['rate'] / results[(name, floor)]['rate']:.2f}")
    if pipe.get("b") and pipe.get("c"):
        ratio = pipe["b"]["peak_mb"] / pipe["c"]["peak_mb"]
        print(f"peak RSS (b) / (c): {ratio:.2f} (target <= "
              f"{TARGET_SPAN_RSS_RATIO}): "
              f"{_verdict(ratio <= TARGET_SPAN_RSS_RATIO)}")
    if pipe.get("a") and results.get(("a", "naive")):
        print(f"(a) pipeline / naive: "
              f"{pipe['a']['rate'] / results[('a', 'naive')]['rate']:,.0f}x")


if __name__ == "__main__":
    main()
