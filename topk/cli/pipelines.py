"""``topk batch``, ``topk stream`` and ``topk demo``: the Beam pipelines.

The pipeline commands parse their own options twice: argparse here (for
help and one-line errors, with the project's options only), then Beam's
``PipelineOptions`` in the pipeline module, which also takes every Apache
Beam option (``--runner``, ``--flink_master``, ...) as Beam spells it.
"""
import argparse
import os
import time

from topk.cli import progress
from topk.cli.common import (CliError, CommandParser, add_renamed,
                             format_table, make_parent, port_number)

#: Said once in the help of the pipeline commands, whose options are shown
#: by their hyphenated spelling only.
PIPELINE_EPILOG = (
    "Every option above also parses with underscores (--item_shards for "
    "--item-shards): Beam ships pipeline options to remote workers (Flink, "
    "Dataflow) as --<name>=value with underscores. Any Apache Beam pipeline "
    "option is accepted too, spelled as Beam spells it, e.g. --runner, "
    "--flink_master, --temp_location.")


def _add_pipeline(sub, name: str, help_text: str, func) -> None:
    # Pipeline commands parse their own options (and pass Beam's through)
    # in ``_run_pipeline``, so argparse only sees -h here.
    p = sub.add_parser(name, help=help_text, add_help=False,
                       description=help_text)
    p.add_argument("-h", "--help", action="store_true",
                   help="Show this help and the pipeline options.")
    p.set_defaults(func=func, takes_beam_args=True)


def add_batch(sub) -> None:
    _add_pipeline(sub, "batch", "Run the batch pipeline over event files.",
                  cmd_batch)


def cmd_batch(args, beam_args) -> int:
    from topk.pipelines import batch
    return _run_pipeline(args, beam_args, "topk batch", batch,
                         [batch.BatchOptions], ("output",))


def add_stream(sub) -> None:
    _add_pipeline(sub, "stream",
                  "Rank the events of a Kafka topic as they arrive.",
                  cmd_stream)


def cmd_stream(args, beam_args) -> int:
    from topk.pipelines import stream
    return _run_pipeline(args, beam_args, "topk stream", stream,
                         [stream.StreamOptions],
                         ("bootstrap", "topic", "output"))


#: Commands that show read progress (``add_progress_options``).
_PROGRESS_COMMANDS = ("topk batch",)
#: Commands that export their counters (``add_metrics_option``).
_METRICS_COMMANDS = ("topk batch", "topk stream")


def add_progress_options(parser) -> None:
    """``--progress`` / ``--no-progress`` and ``--progress-every``: options
    of the command, not of the pipeline (they never reach Beam)."""
    parser.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=None,
        help="Show progress on stderr: bytes read (with % and ETA, from the "
        "input files' sizes), records read, records/s, elapsed time. On a "
        "terminal one line refreshed every second is the default "
        "(--no-progress turns it off); elsewhere --progress prints a plain "
        "line every --progress-every seconds. Counts what the local runner "
        "reads in this process; on remote runners (Flink, Dataflow) "
        "progress is the runner's UI.")
    parser.add_argument(
        "--progress-every", "--progress_every", dest="progress_every",
        type=_positive_seconds, default=progress.PLAIN_EVERY_S,
        help="Seconds between plain progress lines (default "
        f"{progress.PLAIN_EVERY_S:g}).")


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(
            f"must be a positive number of seconds: {text}")
    return value


def add_metrics_option(parser) -> None:
    """``--metrics-port``: an option of the command, not of the pipeline
    (it never reaches Beam)."""
    parser.add_argument(
        "--metrics-port", "--metrics_port", dest="metrics_port",
        type=port_number, default=None,
        help="Serve the pipeline's counters (events read, valid, dead "
        "letters, duplicates, late, Kafka lag, ...) in Prometheus text "
        "format at http://HOST:PORT/metrics, on all interfaces, from before "
        "the run until the process exits (the final values once the run is "
        "over). 0 picks a free port; the URL is printed first. See "
        "docs/metrics.md.")


def _split_command_options(prog, beam_args):
    """``(the command's own options, the rest)``: Beam must not see ours."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    if prog in _PROGRESS_COMMANDS:
        add_progress_options(parser)
    add_metrics_option(parser)
    return parser.parse_known_args(beam_args)


def _start_exporter(port):
    """The ``--metrics-port`` endpoint, or ``None`` without one."""
    if port is None:
        return None
    from topk.pipelines import metrics_export
    try:
        return metrics_export.start(port)
    except OSError as e:
        raise CliError(f"--metrics-port {port}: cannot listen: "
                       f"{e.strerror or e}") from None


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
    # Our options' errors, in one line.
    options = parser.parse_known_args(beam_args)[0]
    reporter = progress.Reporter(False, None)  # silent
    shown, beam_args = _split_command_options(prog, beam_args)
    if prog in _PROGRESS_COMMANDS:
        reporter = progress.reporter_for(shown.progress, shown.progress_every)
    # Before the pipeline: a port in use is a one-line error.
    exporter = _start_exporter(shown.metrics_port)
    started = time.perf_counter()
    started_wall = time.time()
    try:
        if exporter:
            exporter.started()
        with reporter:
            result = module.run(
                beam_args, on_result=exporter.watch if exporter else None)
    except ValueError as e:
        if exporter:
            exporter.close()
        raise CliError(str(e)) from None
    except BaseException:
        if exporter:
            exporter.close()
        raise
    finally:
        if exporter:
            exporter.note_read_progress()
        progress.READ_PROGRESS.stop()
    if exporter:
        # The final values, the summary's, stay until the process exits.
        exporter.finish(result)
    counters = print_run_summary(result, time.perf_counter() - started)
    print_committed(options, started_wall)
    check_dead_letter_ratio(counters, options.max_dead_letter_ratio)
    return 0


def print_committed(options, since: float) -> None:
    """The run summary's second line: what the run committed where."""
    from topk.sinks.bigquery import BIGQUERY, parse_sinks
    output = options.output
    what = None
    try:
        what = progress.committed(output, since)
    except Exception as e:  # a summary must not fail a finished run
        what = f"(cannot read its manifest: {type(e).__name__})"
    line = f"output {output}" + (f": {what}" if what else "")
    if BIGQUERY in parse_sinks(options.sink):
        line += (f"; BigQuery tables {options.bq_table_prefix or ''}* in "
                 f"dataset {options.bq_dataset}")
    print(line)


def check_dead_letter_ratio(counters: dict, max_ratio: float) -> None:
    """``CliError`` when more than ``max_ratio`` of the records read were
    dead letters (an empty input is no error: a quiet hour is normal)."""
    dead = counters.get("events_dead_letter", 0)
    read = counters.get("events_valid", 0) + dead
    if not read or dead / read <= max_ratio:
        return
    raise CliError(f"{dead} of {read} records ({dead / read:.0%}) were "
                   f"dead letters, more than --max-dead-letter-ratio "
                   f"{max_ratio:g}: is the input in the event format? (the "
                   "dead_letters table says why each was rejected)")


def options_parser(prog: str, pipeline_module, options_classes,
                   required=()) -> argparse.ArgumentParser:
    """An argparse parser with the project's own pipeline options (not
    Beam's hundreds of generic ones), for help and one-line errors; its
    description is the module's plain-text ``DESCRIPTION``."""
    parser = CommandParser(prog=prog,
                           description=pipeline_module.DESCRIPTION,
                           epilog=PIPELINE_EPILOG)
    for cls in options_classes:
        cls._add_argparse_args(parser)
    if prog in _PROGRESS_COMMANDS:
        add_progress_options(parser)
    if prog in _METRICS_COMMANDS:
        add_metrics_option(parser)
    add_renamed(parser, getattr(pipeline_module, "RENAMED_FLAGS", {}))
    for action in parser._actions:
        if action.dest in required:
            action.required = True
    return parser


def print_run_summary(result, seconds: float) -> dict:
    """One line from the pipeline's counters; returns the counters."""
    from topk.pipelines.metrics_export import counter_totals, duplicates
    # Summed over the steps that count them; committed values, or the
    # attempted ones where the runner has no others (Flink).
    counters = counter_totals(result.metrics())
    valid = counters.get("events_valid", 0)
    dead = counters.get("events_dead_letter", 0)
    late = counters.get("events_late", 0)
    refused = counters.get("late_counts_refused", 0)
    dropped = duplicates(counters)
    rate = (valid + dead) / seconds if seconds else 0
    runner = type(result).__module__.rsplit(".", 1)[-1]
    counted = ("" if dropped is None else
               f"{counters['events_unique']} unique events counted, "
               f"{dropped} duplicates dropped, ")
    print(f"done in {seconds:.1f} s on {runner} ({rate:,.0f} records/s): "
          f"{valid} valid events, {counted}{dead} dead letters"
          + (f", {late} late events not counted" if late else "")
          + (f", {refused} of late weight refused by window stages"
             if refused else ""))
    return counters


def add_demo(sub) -> None:
    p = sub.add_parser(
        "demo", help="Generate a synthetic day, run the batch pipeline "
        "locally and print top-10 answers.",
        description="The embedded default: no external services. Writes "
        "events and results under --dir.")
    p.add_argument("--dir", default="demo-output",
                   help="Working directory (default demo-output).")
    p.add_argument("--events", type=int, default=500_000,
                   help="Events to generate (default 500000).")
    p.add_argument("--serve", action="store_true",
                   help="Then serve the demo's output (`topk serve`): the "
                   "API and the live leaderboard page, until interrupted.")
    p.add_argument("--port", type=port_number, default=8080,
                   help="Port of --serve (default 8080; 0: a free port, "
                   "printed).")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args) -> int:
    from topk import query
    from topk.loadgen import generator
    from topk.pipelines import batch
    if args.events < 1:
        raise CliError("--events must be at least 1")
    events_path = os.path.join(args.dir, "events", "events.jsonl")
    output = os.path.join(args.dir, "output")
    config = generator.GeneratorConfig(
        events=args.events, items=20_000, zipf=1.1,
        start="2024-05-01T00:00:00Z", rate=args.events / 86_400,
        duplicate_share=0.01, malformed_share=0.001, seed=42,
        burst_item="item-019999", burst_share=0.5,
        burst_start="2024-05-01T18:00:00Z", burst_duration_s=1800)
    make_parent(events_path)
    print(f"1/3 generating {args.events} events over one day -> "
          f"{events_path}")
    generator.write_json_lines(config, events_path)
    print("2/3 running the batch pipeline (local runner) -> " + output)
    started = time.perf_counter()
    try:
        with progress.reporter_for(None):  # a live line on a terminal only
            result = batch.run([f"--input={events_path}", f"--output={output}",
                                "--windows=1h,1d,1h/1m", "--k=10"])
    finally:
        progress.READ_PROGRESS.stop()
    print_run_summary(result, time.perf_counter() - started)
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
    if args.serve:
        from topk.cli.serve import serve
        return serve(output, port=args.port)
    return 0
