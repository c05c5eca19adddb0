"""Batch top-K: event files -> ranked windows, slices and sketches in Parquet.

The precise path's reprocessing job: it reads JSON-lines or Parquet event
files, de-duplicates by ``event_id`` over the whole input, counts exact
one-minute slices and ranks every window of the chosen specs::

    topk batch --input 'events/*.jsonl' --output out/ --windows 1h,1h/1m --k 10

With ``--method cms`` and/or ``frequent_items`` (``exact`` is the default;
several may be given, comma-separated), the de-duplicated minute counts also
feed fixed-size sketches: per-slice sketches (the sketches table) and ranked
windows with lower and upper bounds, one set per method.

It uses the same transforms as the streaming pipeline.
"""
import logging

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from topk import output_layout, sketch_windows
from topk.pipelines.options import TopKOptions, check_required
from topk.sinks.parquet import WriteOutputTables, WriteParquetTable
from topk.sources.files import ReadEventFiles, matching_files
from topk.transforms.exact import (DedupSliceCounts,
                                   ItemShardCounts)
from topk.transforms.parse import DEAD_LETTERS, ParseEvents
from topk.transforms.rank import RankWindows, SliceTables
from topk.transforms.sketch_windows import (ApproximateSlices,
                                            ApproximateWindows, SketchTables)
from topk.windows import parse_windows

_LOG = logging.getLogger(__name__)

#: The local runner for batch. The DirectRunner would first try to download
#: Prism (impossible offline) before falling back; the FnApiRunner is what it
#: falls back to for batch pipelines anyway.
LOCAL_BATCH_RUNNER = "FnApiRunner"


class BatchOptions(PipelineOptions):
    """Options of ``topk batch`` besides the shared ``TopKOptions``."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument(
            "--input",
            help="Glob of event files: .json/.jsonl/.ndjson (optionally "
            ".gz), one JSON event per line, or .parquet with columns "
            "event_id, item_id, event_type, ts[, user_id, weight].")


def build(pipeline: beam.Pipeline, options: PipelineOptions):
    """Add the batch top-K steps to ``pipeline``; returns the written paths."""
    inputs = options.view_as(BatchOptions).input
    parsed = (
        pipeline
        | "ReadFiles" >> ReadEventFiles(inputs)
        | "ParseEvents" >> ParseEvents())
    return add_top_k_tables(parsed, options, "batch",
                            output_layout.input_fingerprint(inputs))


def add_top_k_tables(parsed, options: PipelineOptions, source: str,
                     input_name: str):
    """The steps after ``ParseEvents`` shared by ``topk batch`` and ``topk
    stream``: de-duplicated minute partials, then for each ``--method`` the
    ranked windows and slice tables, all written under ``--output`` with
    ``source`` in the rows and file names; dead letters go to
    ``dead_letters/part-<source>-<input_name>.parquet``. Returns the paths
    written."""
    opts = options.view_as(TopKOptions)
    specs = parse_windows(opts.windows)
    methods = sketch_windows.parse_methods(opts.method)
    approximate = sketch_windows.approximate_methods(methods)
    # Every method starts from the same de-duplicated minute partials.
    partials = parsed.events | "DedupSlices" >> DedupSliceCounts(
        dedup_shards=opts.dedup_shards)
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
        ranked.append(sketched | "ApproximateWindows" >> ApproximateWindows(
            specs, opts.k, source=source))
    tables[output_layout.RANKED_WINDOWS] = ranked[0] if len(ranked) == 1 else (
        ranked | "AllRankedWindows" >> beam.Flatten())
    written = tables | "WriteOutput" >> WriteOutputTables(opts.output,
                                                          source=source)
    (parsed[DEAD_LETTERS]
     | "WriteDeadLetters" >> WriteParquetTable(
         opts.output, output_layout.DEAD_LETTERS,
         lambda t: [((), t)], f"part-{source}-{input_name}",
         ["source", "raw"]))
    return written


def run(argv=None):
    """Run the batch pipeline; returns the Beam ``PipelineResult``."""
    options = PipelineOptions(argv)
    check_required(options, ["input", "output"])
    inputs = options.view_as(BatchOptions).input
    matching_files(inputs)  # fail fast, with the pattern, on no input
    standard = options.view_as(StandardOptions)
    if not standard.runner:
        standard.runner = LOCAL_BATCH_RUNNER
    _LOG.info("topk batch: runner %s, input %s, output %s", standard.runner,
              inputs, options.view_as(TopKOptions).output)
    pipeline = beam.Pipeline(options=options)
    build(pipeline, options)
    result = pipeline.run()
    result.wait_until_finish()
    return result


if __name__ == "__main__":
    logging.getLogger().setLevel(logging.INFO)
    run()
