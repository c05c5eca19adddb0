"""The ``topk`` command: generate events, run pipelines, query results.

    topk demo                      # synthetic day -> batch pipeline -> queries
    topk generate --events N --out PATH [--seed S] ...
    topk batch --input GLOB --output DIR [--windows ...] [--k K] [beam options]
    topk stream --bootstrap HOST:PORT --topic T --output DIR --bounded [...]
    topk produce --bootstrap HOST:PORT --topic T --events N [...]
    topk query --output DIR --k K --start T --end T [--event-type E]
               [--method exact|cms|frequent_items] [--format table|json]
    topk query --backend bigquery --bq-dataset D --k K --start T --end T ...

Bad input exits with status 2 and a one-line reason on stderr.
"""
import argparse
import json
import logging
import os
import sys
import time

from topk.core import windows

EXIT_USAGE = 2


class CliError(Exception):
    """A user error: printed as one line, exit status 2."""


def _add_generate(sub):
    from topk.loadgen.generator import GeneratorConfig
    d = GeneratorConfig()
    p = sub.add_parser(
        "generate", help="Write synthetic click/play events (JSON lines or "
        "Parquet).", description="Write seedable synthetic events: Zipf "
        "item popularity, out-of-order event times, duplicates, malformed "
        "records and hot-item bursts. The format follows --out's suffix: "
        ".jsonl/.json/.ndjson (optionally .gz) or .parquet.")
    p.add_argument("--events", type=int, required=True,
                   help="Number of valid, distinct events.")
    p.add_argument("--out", required=True, help="File to write.")
    p.add_argument("--rate", type=float, default=d.rate,
                   help=f"Events per second of event time (default {d.rate:g}"
                   "); the span is events / rate.")
    _add_event_shape_options(p, d)
    p.add_argument("--burst-item", default=None,
                   help="Item that bursts (hot-item burst); off by default.")
    p.add_argument("--burst-share", type=float, default=0.5,
                   help="Share of events inside the burst that go to the "
                   "burst item (default 0.5).")
    p.add_argument("--burst-start", default=None,
                   help="Burst start, RFC 3339 (default: middle of the span).")
    p.add_argument("--burst-duration", type=float, default=d.burst_duration_s,
                   help=f"Burst length in seconds (default "
                   f"{d.burst_duration_s:g}).")
    p.set_defaults(func=cmd_generate)


def _add_event_shape_options(p, d, start_help: str = "") -> None:
    """Options shared by ``generate`` and ``produce``: what the synthetic
    events look like (``d``: the generator's defaults)."""
    p.add_argument("--seed", type=int, default=d.seed,
                   help=f"Random seed (default {d.seed}); same seed, same "
                   "events.")
    p.add_argument("--items", type=int, default=d.items,
                   help=f"Catalogue size (default {d.items}).")
    p.add_argument("--zipf", type=float, default=d.zipf,
                   help=f"Popularity exponent s, P(rank r) ~ 1/r^s "
                   f"(default {d.zipf}).")
    p.add_argument("--start", default=d.start,
                   help=f"First event time, RFC 3339{start_help} (default "
                   f"{d.start}).")
    p.add_argument("--jitter", type=float, default=d.jitter_s,
                   help=f"Out-of-order jitter in seconds (default "
                   f"{d.jitter_s:g}).")
    p.add_argument("--duplicates", type=float, default=d.duplicate_share,
                   help="Share of extra re-deliveries of earlier events "
                   f"(default {d.duplicate_share:g}).")
    p.add_argument("--malformed", type=float, default=d.malformed_share,
                   help="Share of extra malformed records (default "
                   f"{d.malformed_share:g}).")
    p.add_argument("--ts-format", choices=("ms", "rfc3339", "mixed"),
                   default=d.ts_format,
                   help=f"How ts is written (default {d.ts_format}).")


def cmd_generate(args) -> int:
    from topk.loadgen import generator
    if args.events < 1:
        raise CliError("--events must be at least 1")
    config = generator.GeneratorConfig(
        events=args.events, items=args.items, zipf=args.zipf,
        start=args.start, rate=args.rate, jitter_s=args.jitter,
        duplicate_share=args.duplicates, malformed_share=args.malformed,
        ts_format=args.ts_format, seed=args.seed,
        burst_item=args.burst_item,
        burst_share=args.burst_share if args.burst_item else 0.0,
        burst_start=args.burst_start, burst_duration_s=args.burst_duration)
    _make_parent(args.out)
    started = time.perf_counter()
    try:
        if args.out.lower().endswith((".parquet", ".pq")):
            summary = generator.write_parquet(config, args.out)
        else:
            summary = generator.write_json_lines(config, args.out)
    except ValueError as e:
        raise CliError(str(e)) from None
    took = time.perf_counter() - started
    print(f"wrote {summary.path}: {summary.valid_events} events, "
          f"{summary.duplicates} duplicates, {summary.malformed} malformed, "
          f"{windows.format_time(summary.first_ts_ms)} .. "
          f"{windows.format_time(summary.last_ts_ms)}, "
          f"{summary.bytes / 1e6:.1f} MB in {took:.1f} s")
    return 0


def _add_pipeline(sub, name: str, help_text: str, description: str, func):
    # Pipeline commands parse their own options (and pass Beam's through)
    # in ``_run_pipeline``, so argparse only sees -h here.
    p = sub.add_parser(name, help=help_text, description=description,
                       add_help=False)
    p.add_argument("-h", "--help", action="store_true",
                   help="Show this help and the pipeline options.")
    p.set_defaults(func=func, takes_beam_args=True)


def _add_batch(sub):
    _add_pipeline(
        sub, "batch", "Run the batch pipeline over event files.",
        "Exact (and, with --method, approximate) top-K of every window over "
        "JSON-lines or Parquet event files, written as Parquet tables under "
        "--output. Any other option is passed to Apache Beam (e.g. --runner "
        "FlinkRunner).", cmd_batch)


def cmd_batch(args, beam_args) -> int:
    from topk.pipelines import batch
    return _run_pipeline(args, beam_args, "topk batch", batch,
                         [batch.BatchOptions], ("output",))


def _add_stream(sub):
    _add_pipeline(
        sub, "stream", "Rank the events of a Kafka topic as they arrive.",
        "Read a Kafka topic and write ranked windows as early panes (every "
        "--early_firing_s while a window is open), one on-time pane at the "
        "watermark and late panes within --allowed_lateness, plus exact "
        "slices, the raw-event archive, late events and dead letters (also "
        "to a Kafka topic). Runs until stopped, on Prism locally (built by "
        "deploy/prism/prism.sh install) or on --runner FlinkRunner / "
        "DataflowRunner. With --bounded, reads up to the current end "
        "offsets and writes the same tables as `topk batch` (source = "
        "stream).", cmd_stream)


def cmd_stream(args, beam_args) -> int:
    from topk.pipelines import stream
    return _run_pipeline(args, beam_args, "topk stream", stream,
                         [stream.StreamOptions],
                         ("bootstrap", "topic", "output"))


def _run_pipeline(args, beam_args, prog, module, options_classes,
                  required) -> int:
    from topk.pipelines.options import TopKOptions
    from topk.sinks.bigquery import BigQuerySinkOptions
    parser = options_parser(prog, module, [*options_classes, TopKOptions,
                                           BigQuerySinkOptions],
                            required=required)
    if args.help:
        parser.print_help()
        return 0
    parser.parse_known_args(beam_args)  # our options' errors, in one line
    started = time.perf_counter()
    try:
        result = module.run(beam_args)
    except ValueError as e:
        raise CliError(str(e)) from None
    _print_run_summary(result, time.perf_counter() - started)
    return 0


def _print_run_summary(result, seconds: float) -> None:
    counters = {r.key.metric.name: r.committed
                for r in result.metrics().query()["counters"]}
    valid = counters.get("events_valid", 0)
    unique = counters.get("events_unique", 0)
    dead = counters.get("events_dead_letter", 0)
    late = counters.get("events_late", 0)
    rate = (valid + dead) / seconds if seconds else 0
    runner = type(result).__module__.rsplit(".", 1)[-1]
    print(f"done in {seconds:.1f} s on {runner} ({rate:,.0f} records/s): "
          f"{valid} valid events, {unique} unique events counted, "
          f"{valid - unique - late} duplicates dropped, {dead} dead letters"
          + (f", {late} late events not counted" if late else ""))


class _OptionsParser(argparse.ArgumentParser):
    """Parses a pipeline's own options; errors become one-line CliErrors."""

    def error(self, message):
        raise CliError(f"{self.prog}: {message} (see {self.prog} --help)")


def options_parser(prog: str, pipeline_module, options_classes,
                   required=()) -> argparse.ArgumentParser:
    """An argparse parser with the project's own pipeline options (not
    Beam's hundreds of generic ones), for help and one-line errors."""
    parser = _OptionsParser(
        prog=prog, description=pipeline_module.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Any Apache Beam pipeline option is accepted too, e.g. "
        "--runner, --flink_master, --temp_location.")
    for cls in options_classes:
        cls._add_argparse_args(parser)
    for action in parser._actions:
        if action.dest in required:
            action.required = True
    return parser


def _add_query(sub):
    from topk.connectors.bigquery import client as bigquery_client
    p = sub.add_parser(
        "query", help="Top-K of any minute-aligned range up to 30 days.",
        description="Answer topk(k, start, end) from the output tables: the "
        "range is covered by the fewest aligned day/hour/minute slices. "
        "Exact (default): their counts are summed in one DuckDB statement "
        "over the slices table (--backend bigquery: one BigQuery statement, "
        "same answers). cms / frequent_items: their sketches are merged, and "
        "every count comes with lower and upper bounds.")
    p.add_argument("--output",
                   help="Output directory of `topk batch` / `topk stream` "
                   "(--backend duckdb).")
    p.add_argument("--backend", choices=("duckdb", "bigquery"),
                   default="duckdb",
                   help="duckdb (default): the Parquet tables under --output; "
                   "bigquery: the tables of --bq-dataset (written with --sink "
                   "bigquery), with Application Default Credentials.")
    bigquery_client.add_arguments(p)
    p.add_argument("--k", type=int, required=True, help="How many items.")
    p.add_argument("--start", required=True,
                   help="Range start (inclusive), RFC 3339 UTC, whole minute.")
    p.add_argument("--end", required=True,
                   help="Range end (exclusive), RFC 3339 UTC, whole minute.")
    p.add_argument("--event-type", default=None,
                   help="Only this event type (default: all types).")
    p.add_argument("--method", choices=("exact", "cms", "frequent_items"),
                   default="exact",
                   help="exact (default; the slices table) or an approximate "
                   "method whose sketches the pipeline wrote (--method of "
                   "`topk batch`).")
    p.add_argument("--format", choices=("table", "json"), default="table",
                   help="table (default) or json: a list of objects with "
                   "rank, item_id, count, and for approximate methods "
                   "lower_bound, upper_bound and guaranteed (certainly in "
                   "the true top k).")
    p.set_defaults(func=cmd_query)


def cmd_query(args) -> int:
    from topk.connectors.bigquery import client as bigquery_client
    from topk import query
    if args.backend == "duckdb" and not args.output:
        raise CliError("--output is required with --backend duckdb")
    try:
        backend, where = query, (args.output,)
        if args.backend == "bigquery":
            from topk.query import bigquery as backend
            where = bigquery_client.connect(
                args.bq_project, args.bq_dataset, args.bq_table_prefix,
                args.bq_endpoint, args.bq_location)
        if args.method == "exact":
            rows = backend.topk(*where, args.k, args.start, args.end,
                                args.event_type)
        else:
            rows = backend.topk_approx(*where, args.k, args.start, args.end,
                                       args.method, args.event_type)
    except (query.QueryError, bigquery_client.BigQueryError) as e:
        raise CliError(str(e)) from None
    approximate = args.method != "exact"
    if args.format == "json":
        print(json.dumps([_json_row(r, approximate) for r in rows]))
    else:
        print(format_table(rows, approximate))
    return 0


def _json_row(r, approximate: bool) -> dict:
    row = {"rank": r.rank, "item_id": r.item_id, "count": r.count}
    if approximate:
        row.update(lower_bound=r.lower_bound, upper_bound=r.upper_bound,
                   guaranteed=r.guaranteed)
    return row


def format_table(rows, approximate: bool = False) -> str:
    if not rows:
        return "(no events in range)"
    width = max(len("item_id"), *(len(r.item_id) for r in rows))
    head = f"{'rank':>4}  {'item_id':<{width}}  {'count':>10}"
    if approximate:
        head += f"  {'lower':>10}  {'upper':>10}  guaranteed"
    lines = [head]
    for r in rows:
        line = f"{r.rank:>4}  {r.item_id:<{width}}  {r.count:>10}"
        if approximate:
            line += (f"  {r.lower_bound:>10}  {r.upper_bound:>10}  "
                     f"{'yes' if r.guaranteed else 'no'}")
        lines.append(line)
    return "\n".join(lines)


def _add_demo(sub):
    p = sub.add_parser(
        "demo", help="Generate a synthetic day, run the batch pipeline "
        "locally and print top-10 answers.",
        description="The embedded default: no external services. Writes "
        "events and results under --dir.")
    p.add_argument("--dir", default="demo-output",
                   help="Working directory (default demo-output).")
    p.add_argument("--events", type=int, default=500_000,
                   help="Events to generate (default 500000).")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args) -> int:
    from topk.loadgen import generator
    from topk import query
    from topk.pipelines import batch
    events_path = os.path.join(args.dir, "events", "events.jsonl")
    output = os.path.join(args.dir, "output")
    config = generator.GeneratorConfig(
        events=args.events, items=20_000, zipf=1.1,
        start="2024-05-01T00:00:00Z", rate=args.events / 86_400,
        duplicate_share=0.01, malformed_share=0.001, seed=42,
        burst_item="item-019999", burst_share=0.5,
        burst_start="2024-05-01T18:00:00Z", burst_duration_s=1800)
    _make_parent(events_path)
    print(f"1/3 generating {args.events} events over one day -> "
          f"{events_path}")
    generator.write_json_lines(config, events_path)
    print("2/3 running the batch pipeline (local runner) -> " + output)
    started = time.perf_counter()
    result = batch.run([f"--input={events_path}", f"--output={output}",
                        "--windows=1h,1d,1h/1m", "--k=10"])
    _print_run_summary(result, time.perf_counter() - started)
    print("3/3 queries (exact, from the slices table):")
    for title, start, end, etype in [
            ("top 10 of the whole day", "2024-05-01T00:00:00Z",
             "2024-05-02T00:00:00Z", None),
            ("top 10 plays 18:00-18:30 (the burst)", "2024-05-01T18:00:00Z",
             "2024-05-01T18:30:00Z", "play"),
            ("top 10 clicks 09:17-13:42", "2024-05-01T09:17:00Z",
             "2024-05-01T13:42:00Z", "click")]:
        print(f"\n{title} [{start} .. {end})")
        print(format_table(query.topk(output, 10, start, end, etype)))
    print(f"\nTry: topk query --output {output} --k 5 "
          "--start 2024-05-01T12:00:00Z --end 2024-05-01T13:00:00Z")
    return 0


def _add_produce(sub):
    from topk.loadgen.generator import GeneratorConfig
    d = GeneratorConfig()
    p = sub.add_parser(
        "produce", help="Send synthetic events to a Kafka topic.",
        description="Generate seedable synthetic events (as `topk generate` "
        "does) and send them to a Kafka topic with kafka-python, at a target "
        "rate or as fast as possible, printing progress. Creates the topic "
        "if it does not exist. Each message carries --events-per-message "
        "newline-delimited events and, by default, its newest event time as "
        "its Kafka timestamp.")
    p.add_argument("--bootstrap", required=True,
                   help="Kafka bootstrap servers, host:port[,host:port].")
    p.add_argument("--topic", required=True, help="Topic to write.")
    p.add_argument("--events", type=int, required=True,
                   help="Number of valid, distinct events (duplicates and "
                   "malformed records come on top).")
    p.add_argument("--events-per-message", type=int, default=1,
                   help="Events packed into one message, newline-delimited "
                   "(default 1).")
    p.add_argument("--rate", type=float, default=None,
                   help="Target events per second sent (default: as fast as "
                   "possible).")
    p.add_argument("--partitions", type=int, default=4,
                   help="Partitions of the topic if it is created (default "
                   "4).")
    p.add_argument("--acks", choices=("0", "1", "all"), default="1",
                   help="Producer acks (default 1: the leader wrote it).")
    p.add_argument("--linger-ms", type=int, default=None,
                   help="Producer linger.ms (default tuned: 20).")
    p.add_argument("--batch-size", type=int, default=None,
                   help="Producer batch.size in bytes (default tuned: 1 MB).")
    p.add_argument("--timestamps", choices=("event", "now"), default="event",
                   help="Kafka timestamp of a message: its newest event time "
                   "(default) or the producer's clock.")
    p.add_argument("--retention-ms", type=int, default=-1,
                   help="retention.ms of a topic this command creates "
                   "(default -1, forever: time retention looks at message "
                   "timestamps, which may be old event times).")
    p.add_argument("--progress-every", type=float, default=5.0,
                   help="Seconds between progress lines (default 5).")
    p.add_argument("--event-rate", type=float, default=None,
                   help="Events per second of event time (default: --rate "
                   f"if given, else {d.rate:g}).")
    _add_event_shape_options(p, d, start_help=" or 'now'")
    p.set_defaults(func=cmd_produce)


def cmd_produce(args) -> int:
    from topk.loadgen import generator, producer
    if args.events < 1:
        raise CliError("--events must be at least 1")
    if args.events_per_message < 1:
        raise CliError("--events-per-message must be at least 1")
    if args.rate is not None and args.rate <= 0:
        raise CliError("--rate must be positive")
    try:
        start = producer.resolve_start(args.start)
        config = generator.GeneratorConfig(
            events=args.events, items=args.items, zipf=args.zipf,
            start=start, rate=args.event_rate or args.rate or
            generator.GeneratorConfig.rate, jitter_s=args.jitter,
            duplicate_share=args.duplicates, malformed_share=args.malformed,
            ts_format=args.ts_format, seed=args.seed)
        tuned = {}
        if args.linger_ms is not None:
            tuned["linger_ms"] = args.linger_ms
        if args.batch_size is not None:
            tuned["batch_size"] = args.batch_size
        summary = producer.produce(
            args.bootstrap, args.topic, config,
            events_per_message=args.events_per_message, rate=args.rate,
            partitions=args.partitions,
            acks="all" if args.acks == "all" else int(args.acks),
            timestamps=args.timestamps, retention_ms=args.retention_ms,
            progress=lambda line: print(line, flush=True),
            progress_every_s=args.progress_every, **tuned)
    except ValueError as e:
        raise CliError(str(e)) from None
    return 1 if summary.failed_messages else 0


def _make_parent(path: str) -> None:
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="topk", description="Exact and approximate top-K (heavy "
        "hitters) over 1-minute to 30-day windows with Apache Beam.")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="Log pipeline progress (INFO).")
    # A command's argument errors (bad choice, missing option) are one
    # line too, like every other user error.
    sub = parser.add_subparsers(dest="command", metavar="COMMAND",
                                parser_class=_OptionsParser)
    sub.required = True
    _add_demo(sub)
    _add_generate(sub)
    _add_batch(sub)
    _add_stream(sub)
    _add_query(sub)
    _add_produce(sub)
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    try:
        args, rest = parser.parse_known_args(argv)
    except CliError as e:
        print(f"topk: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if getattr(args, "takes_beam_args", False):
            return args.func(args, rest)
        if rest:
            raise CliError(f"unrecognized arguments: {' '.join(rest)}")
        return args.func(args)
    except CliError as e:
        print(f"topk: error: {e}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
