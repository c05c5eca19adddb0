"""Batch top-K: event files -> ranked windows, slices and sketches in Parquet.

The precise path's reprocessing job: it reads JSON-lines or Parquet event
files, de-duplicates by ``event_id`` over the whole input, counts exact
one-minute slices and ranks every window of the chosen specs::

    topk batch --input 'events/*.jsonl' --output out/ --windows 1h,1h/1m --k 10

With ``--method cms`` and/or ``frequent_items`` (``exact`` is the default;
several may be given, comma-separated), the de-duplicated minute counts also
feed fixed-size sketches: per-slice sketches (the sketches table) and ranked
windows with lower and upper bounds, one set per method.

With ``--from-archive OUTPUT --archive-start D --archive-end D`` it reads
the raw event archive that the stream keeps (``OUTPUT/archive``) instead of
``--input`` and rebuilds the exact results of those whole UTC days
(``topk.storage.reprocess``)::

    topk batch --from-archive out/ --archive-start 2024-05-01 \
        --archive-end 2024-05-02 --output out/

It uses the same transforms as the streaming pipeline.
"""
import logging
import sys

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import (DirectOptions,
                                                  PipelineOptions,
                                                  StandardOptions)

from topk.core.progress import READ_PROGRESS
from topk.storage import reprocess
from topk.storage import layout as output_layout
from topk.storage import tables as output_tables
from topk.approx import sketch_windows
from topk.pipelines.options import (TopKOptions, check_output_writable,
                                    check_required, default_unless_given,
                                    reject_renamed, reject_unknown,
                                    runner_name)
from topk.sinks.bigquery import (BIGQUERY, PARQUET, BigQuerySinkOptions,
                                 WriteBigQueryTables, parse_sinks)
from topk.sinks.parquet import WriteOutputTables, new_run_id
from topk.sources.files import (ReadEventFiles, event_file_sizes,
                                matching_file_sizes, matching_files)
from topk.transforms.exact import (DedupSliceCounts,
                                   ItemShardCounts)
from topk.transforms.parse import DEAD_LETTERS, ParseEvents
from topk.transforms.rank import RankWindows, SliceTables
from topk.transforms.approximate_windows import (ApproximateSlices,
                                            ApproximateWindows, SketchTables)
from topk.core.windows import parse_windows

_LOG = logging.getLogger(__name__)

#: The staging subdirectory of a run's spilled raw events (not a table:
#: the commit never reads it, and removes it with the rest).
SPILL = "_spill"

#: The local runner for batch. The DirectRunner would first try to download
#: Prism (impossible offline) before falling back; the FnApiRunner is what it
#: falls back to for batch pipelines anyway.
LOCAL_BATCH_RUNNER = "FnApiRunner"

#: Item shards on the in-process local runner unless ``--item-shards`` is
#: given. That runner ranks the shards one after the other in one worker,
#: so a shard adds only top-k candidates for the merge of shards to rank
#: again: with one, ``topk batch --windows all`` took 0.76-0.83x the wall
#: time of 8 over a day and over a year, with lower peaks, and the same
#: answers (docs/benchmarks.md, "One item shard on the in-process runner").
LOCAL_ITEM_SHARDS = 1

#: What ``topk batch --help`` says about the pipeline (plain text: the
#: module docstring is reStructuredText).
DESCRIPTION = (
    "Exact top-K of every window over JSON-lines or Parquet event files: "
    "de-duplicates by event_id over the whole input, counts exact one-minute "
    "slices and ranks every window of --windows, written as Parquet tables "
    "under --output. With --method cms and/or frequent_items the minute "
    "counts also feed fixed-size sketches: per-slice sketches and ranked "
    "windows with lower and upper bounds. With --from-archive OUTPUT "
    "--archive-start D --archive-end D it reads the raw event archive the "
    "stream keeps instead of --input and rebuilds the exact results of "
    "those whole UTC days.\n\n"
    "  topk batch --input 'events/*.jsonl' --output out/ --windows 1h,1h/1m "
    "--k 10\n"
    "  topk batch --from-archive out/ --archive-start 2024-05-01 "
    "--archive-end 2024-05-02 --output out/")

#: Flags that were renamed: old -> new (``reject_renamed``). ``--start`` /
#: ``--end`` were rewritten silently before; they name the query range of
#: ``topk query``, so the archive range has its own names.
RENAMED_FLAGS = {"--start": "--archive-start", "--end": "--archive-end"}


class BatchOptions(PipelineOptions):
    """Options of ``topk batch`` besides the shared ``TopKOptions``."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument(
            "--input",
            help="Glob of event files: .json/.jsonl/.ndjson (optionally "
            ".gz), one JSON event per line, or .parquet with columns "
            "event_id, item_id, event_type, ts[, user_id, weight].")
        parser.add_argument(
            "--from-archive", "--from_archive", dest="from_archive",
            help="Instead of --input, reprocess the raw event archive of "
            "this output directory (OUTPUT/archive, or the archive directory "
            "itself) between --archive-start and --archive-end, rounded out "
            "to whole UTC "
            "days: rebuilds every slice of those days and every window "
            "inside them, as batch rows that supersede the stream's.")
        parser.add_argument(
            "--archive-start", "--archive_start", dest="archive_start",
            help="With --from-archive: first day (2024-05-01) or time (RFC "
            "3339; rounded down to its day).")
        parser.add_argument(
            "--archive-end", "--archive_end", dest="archive_end",
            help="With --from-archive: end day (exclusive) or time (rounded "
            "up to the next midnight UTC).")
        parser.add_argument(
            "--replace-span", "--replace_span", dest="replace_span",
            action="store_true",
            help="Let this run replace committed batch counts in its event-"
            "time span that its input lacks events of (a corrected input "
            "that supersedes an earlier run's). Without it such a run "
            "commits nothing and exits 2: the inputs share minutes, and "
            "committing would lose the earlier run's events.")


def archive_range(options: PipelineOptions) -> tuple[int, int] | None:
    """``[start, end)`` epoch ms (whole days) of a ``--from-archive`` run,
    ``None`` for an ``--input`` run; ``ValueError`` on a missing or bad
    range."""
    batch = options.view_as(BatchOptions)
    if not batch.from_archive:
        if batch.archive_start or batch.archive_end:
            raise ValueError("--archive-start/--archive-end need "
                             "--from-archive")
        return None
    if not (batch.archive_start and batch.archive_end):
        raise ValueError("--from-archive needs --archive-start and "
                         "--archive-end")
    return reprocess.day_range(batch.archive_start, batch.archive_end)


def build(pipeline: beam.Pipeline, options: PipelineOptions):
    """Add the batch top-K steps to ``pipeline``; returns the written paths."""
    batch = options.view_as(BatchOptions)
    days = archive_range(options)
    if days is None:
        raw = pipeline | "ReadFiles" >> ReadEventFiles(batch.input)
        # Dead letters are keyed by the files read, not how they were
        # spelled (remote inputs: by the pattern, not listed at build time).
        input_name = (output_layout.input_fingerprint(batch.input)
                      if "://" in batch.input else output_tables.input_id(
                          matching_files(batch.input)))
    else:
        start_ms, end_ms = days
        raw = (
            [pipeline | f"ReadArchive{i}" >> ReadEventFiles(glob)
             for i, glob in enumerate(reprocess.archive_day_globs(
                 batch.from_archive, start_ms, end_ms))]
            | "AllArchiveDays" >> beam.Flatten()
            | "KeepRange" >> beam.MapTuple(
                lambda source, events: (source, reprocess.events_within(
                    events, start_ms, end_ms))))
        input_name = output_layout.input_fingerprint(
            f"{batch.from_archive}@{start_ms}-{end_ms}")
    parsed = raw | "ParseEvents" >> ParseEvents()
    return add_top_k_tables(parsed, options, "batch", input_name,
                            window_range=days)


def add_top_k_tables(parsed, options: PipelineOptions, source: str,
                     input_name: str, window_range=None):
    """The steps after ``ParseEvents`` shared by ``topk batch`` and ``topk
    stream``: de-duplicated minute partials, then for each ``--method`` the
    ranked windows and slice tables, all written under ``--output`` with
    ``source`` in the rows and file names; dead letters go to
    ``dead_letters/part-<source>-<input_name>.parquet``. With
    ``window_range = (start_ms, end_ms)``, only the windows inside it are
    written (reprocessing). Returns the paths written."""
    opts = options.view_as(TopKOptions)
    specs = parse_windows(opts.windows)
    methods = sketch_windows.parse_methods(opts.method)
    approximate = sketch_windows.approximate_methods(methods)
    # The raw events spill under the run's staging directory, which its
    # commit removes (the dead letters' commit, when Parquet is no sink).
    run_id = new_run_id()
    # Every method starts from the same de-duplicated minute partials.
    partials = parsed.events | "DedupSlices" >> DedupSliceCounts(
        dedup_shards=opts.dedup_shards,
        spill_dir=output_tables.staging_dir(opts.output, run_id, SPILL))
    ranked, tables = [], {}
    if sketch_windows.EXACT in methods:
        counts = partials | "ItemShards" >> ItemShardCounts(
            item_shards=opts.item_shards)
        ranked.append(counts | "RankWindows" >> RankWindows(
            specs, opts.k, source=source))
        tables[output_layout.SLICES] = counts | "SliceTables" >> SliceTables(
            source=source)
    if approximate:
        sketched = partials | "ApproximateSlices" >> ApproximateSlices(
            approximate, opts.sketch_budget_bytes)
        tables[output_layout.SKETCHES] = (
            sketched | "SketchTables" >> SketchTables(source=source))
        ranked.extend(sketched | "ApproximateWindows" >> ApproximateWindows(
            specs, opts.k, source=source))
    if window_range is not None:
        ranked = [part | f"WholeWindowsOnly[{i}]" >> beam.Map(
            reprocess.windows_within, *window_range)
            for i, part in enumerate(ranked)]
    # Not flattened: the Parquet sink stages each part where it is made (a
    # local runner would hold and re-encode a flattened table).
    tables[output_layout.RANKED_WINDOWS] = tuple(ranked)
    sinks = parse_sinks(options.view_as(BigQuerySinkOptions).sink)
    written = []
    if PARQUET in sinks:
        # One commit for the run: tables and dead letters appear together.
        written.append(
            {**tables, output_layout.DEAD_LETTERS: parsed[DEAD_LETTERS]}
            | "WriteOutput" >> WriteOutputTables(
                opts.output, source=source, methods=methods,
                input_id=input_name, window_range=window_range,
                specs=specs, k=opts.k, run_id=run_id,
                replace_span=options.view_as(BatchOptions).replace_span))
    else:
        # The dead letters still go to --output, in a commit of their own.
        written.append(
            {output_layout.DEAD_LETTERS: parsed[DEAD_LETTERS]}
            | "WriteDeadLetters" >> WriteOutputTables(
                opts.output, source=source, methods=(), input_id=input_name,
                run_id=run_id))
    if BIGQUERY in sinks:
        whole = {table: parts | f"All_{table}" >> beam.Flatten()
                 if isinstance(parts, tuple) else parts
                 for table, parts in tables.items()}
        written.append(whole | "WriteBigQuery" >> (
            WriteBigQueryTables.from_options(options, whole)))
    written = written[0] if len(written) == 1 else (
        tuple(written) | "AllSinks" >> beam.Flatten())
    return written


def runs_in_process(options: PipelineOptions) -> bool:
    """Whether the run's runner is the local batch runner working in this
    process (not its multi-processing mode)."""
    return runner_name(options).endswith(LOCAL_BATCH_RUNNER) and (
        options.view_as(DirectOptions).direct_running_mode
        != "multi_processing")


def choose_runner(options: PipelineOptions) -> None:
    """The local batch runner unless ``--runner`` is given, with
    ``LOCAL_ITEM_SHARDS`` when it runs in this process."""
    standard = options.view_as(StandardOptions)
    if not standard.runner:
        standard.runner = LOCAL_BATCH_RUNNER
    use_local_item_shards(options)


def use_local_item_shards(options: PipelineOptions) -> None:
    """``LOCAL_ITEM_SHARDS`` for a run in this process, unless given."""
    if runs_in_process(options):
        default_unless_given(options, item_shards=LOCAL_ITEM_SHARDS)


def check_archive(path: str, start_ms: int, end_ms: int) -> None:
    """``ValueError`` unless the archive holds event files in the range."""
    globs = reprocess.archive_day_globs(path, start_ms, end_ms)
    if not any(r.metadata_list for r in FileSystems.match(globs)):
        raise ValueError(
            f"no archived events in {reprocess.archive_output(path)}/"
            f"{output_layout.ARCHIVE} for "
            f"[{reprocess.describe_range(start_ms, end_ms)})")


def parse_args(argv: list[str]) -> PipelineOptions:
    """The pipeline options of ``argv``, checked without touching any file:
    ``ValueError`` with a one-line reason."""
    reject_renamed(argv, RENAMED_FLAGS)
    options = PipelineOptions(argv)
    reject_unknown(options)
    check_required(options, ["output"])
    batch = options.view_as(BatchOptions)
    if not (batch.input or batch.from_archive):
        raise ValueError("missing required option(s): --input (or "
                         "--from-archive)")
    if batch.input and batch.from_archive:
        raise ValueError("--input and --from-archive exclude each other")
    archive_range(options)
    return options


def run(argv=None, on_result=None):
    """Run the batch pipeline; returns the Beam ``PipelineResult``.
    ``on_result(result)`` is called as soon as the runner hands it back,
    before waiting for the end (the local runner hands it back at the end;
    portable ones while the job runs)."""
    options = parse_args(sys.argv[1:] if argv is None else argv)
    batch = options.view_as(BatchOptions)
    days = archive_range(options)
    if days is None:
        # Fails fast, with the pattern, on no input; the sizes are what the
        # read progress counts towards.
        sizes = matching_file_sizes(batch.input)
        what = f"input {batch.input}"
    else:
        check_archive(batch.from_archive, *days)
        sizes = event_file_sizes(reprocess.archive_day_globs(
            batch.from_archive, *days))
        what = (f"archive {batch.from_archive} "
                f"[{reprocess.describe_range(*days)})")
    check_output_writable(options.view_as(TopKOptions).output)
    choose_runner(options)
    # The file source counts what it reads in READ_PROGRESS, which the CLI
    # shows; only the in-process local runner reads in this process.
    READ_PROGRESS.start(sum(sizes.values()), len(sizes),
                        runs_in_process(options))
    _LOG.info("topk batch: runner %s, %s, output %s",
              options.view_as(StandardOptions).runner, what,
              options.view_as(TopKOptions).output)
    pipeline = beam.Pipeline(options=options)
    build(pipeline, options)
    result = pipeline.run()
    if on_result is not None:
        on_result(result)
    result.wait_until_finish()
    return result


if __name__ == "__main__":
    logging.getLogger().setLevel(logging.INFO)
    run()
