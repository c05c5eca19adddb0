"""Range-query latency of ``topk query`` over a generated day of events.

    .venv/bin/python bench/query_latency.py [--events 500000] [--repeat 7]

Generates a day of events, runs ``topk batch`` once into a work directory
(cached), then times ``topk.query.topk`` in process (median of --repeat) and
the ``topk query`` command as a fresh process (Python start-up included), for
a whole day, an unaligned 4h25m range and a 30-day range.
"""
import argparse
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from topk.loadgen import generator  # noqa: E402
from topk import query
from topk.pipelines import batch  # noqa: E402

RANGES = [("2024-05-01T00:00:00Z", "2024-05-02T00:00:00Z"),
          ("2024-05-01T09:17:00Z", "2024-05-01T13:42:00Z"),
          ("2024-04-20T00:03:00Z", "2024-05-19T23:59:00Z")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=500_000,
                        help="Events over the day (default 500k).")
    parser.add_argument("--repeat", type=int, default=7,
                        help="In-process runs per range (median reported).")
    parser.add_argument("--dir", default="/tmp/topk-query-bench",
                        help="Work directory (input and output are cached).")
    args = parser.parse_args()
    events = os.path.join(args.dir, f"events-{args.events}.jsonl")
    output = os.path.join(args.dir, f"out-{args.events}")
    if not os.path.exists(output):
        os.makedirs(args.dir, exist_ok=True)
        generator.write_json_lines(generator.GeneratorConfig(
            events=args.events, items=20_000, rate=args.events / 86_400,
            seed=3), events)
        batch.run([f"--input={events}", f"--output={output}",
                   "--windows=1h", "--k=10"])
    print(f"{args.events:,} events over one day -> {output}")
    print(f"{'range':<45} {'in process (median)':>20} {'CLI process':>12}")
    for start, end in RANGES:
        runs = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            query.topk(output, 10, start, end)
            runs.append(time.perf_counter() - t)
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "topk.cli", "query", "--output",
                        output, "--k", "10", "--start", start, "--end", end,
                        "--format", "json"], check=True, capture_output=True,
                       cwd=os.path.dirname(os.path.dirname(
                           os.path.abspath(__file__))))
        cli_s = time.perf_counter() - t
        print(f"{start + ' .. ' + end:<45} "
              f"{statistics.median(runs) * 1000:>17.1f} ms {cli_s:>10.2f} s")


if __name__ == "__main__":
    main()
