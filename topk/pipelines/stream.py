"""Kafka top-K, bounded mode: a topic's events -> ranked windows and slices.

    topk stream --bootstrap 127.0.0.1:9092 --topic events --output out/ --bounded

Reads the topic from ``--start`` up to the end offsets present at start
(``--bounded``, for backfills and tests) with the pure-Python Kafka source
(``topk.sources.kafka``), then runs the same transforms as ``topk batch``
(``batch.add_top_k_tables``): parse and validate, de-duplicate by
``event_id``, exact slices and/or sketches per ``--method``, every window's
top-K, Parquet. Rows are written with ``source = stream``.

Unbounded streaming (early, on-time and late panes while windows are open)
is not built yet: without ``--bounded`` the command says so and exits.
"""
import logging

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from topk import output_layout
from topk.pipelines.batch import LOCAL_BATCH_RUNNER, add_top_k_tables
from topk.pipelines.options import check_required
from topk.sources.kafka import ReadFromKafkaBatches
from topk.transforms.parse import ParseEvents

_LOG = logging.getLogger(__name__)

SOURCE = "stream"


class StreamOptions(PipelineOptions):
    """Options of ``topk stream`` besides the shared ``TopKOptions``."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument(
            "--bootstrap",
            help="Kafka bootstrap servers, host:port[,host:port].")
        parser.add_argument("--topic", help="Topic of JSON events to read.")
        parser.add_argument(
            "--start", default="earliest",
            help="Where to start: earliest (default), latest, committed (the "
            "consumer group's offsets) or an RFC 3339 time / epoch ms.")
        parser.add_argument(
            "--bounded", action="store_true",
            help="Stop at the end offsets present at start (backfills, "
            "tests). Required for now: unbounded streaming is not built yet.")
        parser.add_argument(
            "--group", default=None,
            help="Consumer group, for --start committed and for "
            "--commit-offsets.")
        parser.add_argument(
            "--commit_offsets", "--commit-offsets", action="store_true",
            help="Commit the offsets read to --group (monitoring only: the "
            "runner, not the group, owns the read position).")


def build(pipeline: beam.Pipeline, options: PipelineOptions):
    """Add the bounded Kafka top-K steps to ``pipeline``; returns the
    written paths."""
    kafka = options.view_as(StreamOptions)
    parsed = (
        pipeline
        | "ReadKafka" >> ReadFromKafkaBatches(
            kafka.bootstrap, kafka.topic, start=kafka.start, bounded=True,
            group_id=kafka.group, commit_offsets=kafka.commit_offsets)
        | "ParseEvents" >> ParseEvents())
    return add_top_k_tables(parsed, options, SOURCE,
                            output_layout.input_fingerprint(
                                f"{kafka.bootstrap}/{kafka.topic}"))


def run(argv=None):
    """Run the bounded Kafka pipeline; returns the Beam ``PipelineResult``."""
    options = PipelineOptions(argv)
    check_required(options, ["bootstrap", "topic", "output"])
    if not options.view_as(StreamOptions).bounded:
        raise ValueError("unbounded streaming is not built yet; use "
                         "--bounded to read up to the current end offsets")
    standard = options.view_as(StandardOptions)
    if not standard.runner:
        standard.runner = LOCAL_BATCH_RUNNER  # runs bounded reads
    _LOG.info("topk stream: runner %s", standard.runner)
    pipeline = beam.Pipeline(options=options)
    build(pipeline, options)
    result = pipeline.run()
    result.wait_until_finish()
    return result
