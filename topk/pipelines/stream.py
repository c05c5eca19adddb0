"""Kafka top-K: a topic's events -> ranked windows with panes, slices, archive.

    topk stream --bootstrap 127.0.0.1:9092 --topic events --output out/

**Unbounded** (the default) on Prism, the local streaming runner, or on
Flink/Dataflow with ``--runner``: Kafka (``topk.sources.kafka``) -> parse
and validate -> dead letters to ``--dead-letter-topic`` and the
``dead_letters`` table -> the raw archive (validated events, hourly Parquet
partitions, the input of ``topk batch --from-archive``) -> ``StreamTopK``:
de-duplication, exact slices, and every window's top-K as early panes
(every ``--early-firing-s`` while a window is open), one on-time pane when
the watermark passes its end and late panes within ``--allowed-lateness``;
events later than that go to the ``late_events`` table and the
``events_late`` counter. Pane tables are written per bundle; readers take
the latest row by ``emitted_at``.

A restart re-reads the topic from ``--read-from`` (Prism keeps no state
across processes): start early enough to cover the open windows (e.g. the
earliest retained offset, or a time one window length + lateness back).
Panes are accumulating and readers take the latest, so the replay rebuilds
the same counts and never double counts; archive copies are removed by the
batch de-duplication.

**Bounded** (``--bounded``): reads up to the end offsets present at start
and runs the same steps as ``topk batch`` (``batch.add_top_k_tables``), all
windows final, rows with ``source = stream``.
"""
import argparse
import collections
import glob
import logging
import os
import signal
import sys
import threading

import apache_beam as beam
from apache_beam.options.pipeline_options import (DebugOptions,
                                                  PipelineOptions,
                                                  PortableOptions,
                                                  PrismRunnerOptions,
                                                  StandardOptions)

from topk.connectors.kafka import (BROKER_CHECK_TIMEOUT_S,
                                  DEFAULT_KAFKA_CLIENT, KAFKA_CLIENTS,
                                  check_broker)
from topk.storage import layout as output_layout
from topk.pipelines.batch import (LOCAL_BATCH_RUNNER, add_top_k_tables,
                                  use_local_item_shards)
from topk.pipelines.options import (TopKOptions, check_output_writable,
                                    check_required, default_unless_given,
                                    reject_renamed, FlinkCheckpointOptions,
                                    reject_unknown, runner_name)
from topk.sinks.bigquery import (BIGQUERY, PARQUET, BigQuerySinkOptions,
                                 WriteBigQueryTables, parse_sinks)
from topk.sinks.bundle_files import WriteArchiveFiles, WriteTablesBuffered
from topk.sinks.kafka_topic import WriteDeadLettersToKafka
from topk.sources.kafka import ReadFromKafkaBatches
from topk.transforms.parse import DEAD_LETTERS, ParseEvents
from topk.transforms.stream_sketches import StreamSketchTopK
from topk.transforms.stream_topk import StreamTopK
from topk.approx import sketch_windows
from topk.core.windows import duration_ms, parse_windows
from topk.streaming.panes import DEFAULT_EARLY_FIRING_S

_LOG = logging.getLogger(__name__)

SOURCE = "stream"

#: The local runner for unbounded pipelines (the FnApiRunner cannot run an
#: unbounded source; see deploy/prism/README.md).
LOCAL_STREAM_RUNNER = "PrismRunner"

#: Prism experiment that stops it from splitting bundles in flight. Prism
#: 2.77 splits slow bundles of every stage, stateful ones included, and
#: hands the residual's keys back while the primary still holds elements of
#: the same keys: two bundles of one key then run at once, and the later
#: commit overwrites the other's state (apache/beam#35771). Measured here:
#: 24-1,002 of 10,000 duplicates admitted twice by the dedup stage over
#: 1M events; none with splitting off. Our Kafka source checkpoints by
#: itself every second, so nothing needs Prism's splits.
PRISM_NO_SPLITS = "prism_disable_sdf_split"

#: Item and dedup shards of an unbounded stream on Prism unless given. On
#: one machine every shard adds its own timer firings and state round trips
#: per minute of event time; parallelism past the cores buys nothing.
#: Measured (bench/kafka_throughput.py --parts profile, 1M events over
#: 72 min of event time): 8 shards 165 s, 2 shards 87 s, 1 shard 81 s.
LOCAL_STREAM_SHARDS = 2

_BEAM_JOB_SERVER_TIMEOUT = 300
#: Job service timeout of unbounded runs (10 days; pass --job_server_timeout
#: to choose another).
UNBOUNDED_JOB_SERVER_TIMEOUT_S = 10 * 24 * 3600

#: What ``topk stream --help`` says about the pipeline (plain text: the
#: module docstring is reStructuredText).
DESCRIPTION = (
    "Read a Kafka topic and write ranked windows as early panes (every "
    "--early-firing-s while a window is open), one on-time pane at the "
    "watermark and late panes within --allowed-lateness, plus exact slices, "
    "the raw-event archive, late events and dead letters (also to a Kafka "
    "topic). Runs until stopped, on Prism locally (built by "
    "deploy/prism/prism.sh install) or on --runner FlinkRunner / "
    "DataflowRunner. A restart re-reads the topic from --read-from: start "
    "early enough to cover the open windows. With --bounded, reads up to the "
    "end offsets present at start and writes the same tables as topk batch "
    "(source = stream).\n\n"
    "  topk stream --bootstrap 127.0.0.1:9092 --topic events --output out/")

#: Flags that were renamed: old -> new (``reject_renamed``). ``--start``
#: names the query range of ``topk query``.
RENAMED_FLAGS = {"--start": "--read-from"}


def _lateness(text: str) -> int:
    # A bare number is milliseconds: the parsed value, which is what Beam
    # ships to remote workers (--allowed_lateness=600000) and they re-parse.
    if text.strip().isdigit():
        return int(text)
    try:
        return duration_ms(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _seconds(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text}")
    return value


def _non_negative_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(
            f"must be a number of seconds >= 0: {text}")
    return value


class StreamOptions(PipelineOptions):
    """Options of ``topk stream`` besides the shared ``TopKOptions``."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument(
            "--bootstrap",
            help="Kafka bootstrap servers, host:port[,host:port].")
        parser.add_argument("--topic", help="Topic of JSON events to read.")
        parser.add_argument(
            "--read-from", "--read_from", dest="read_from",
            default="earliest",
            help="Kafka position to start reading from: earliest (default), "
            "latest, committed (the consumer group's offsets) or an RFC 3339 "
            "time / epoch ms (the first message stamped at or after it). "
            "After a restart, start early enough to cover the open windows: "
            "state is rebuilt by re-reading.")
        parser.add_argument(
            "--bounded", action="store_true",
            help="Stop at the end offsets present at start (backfills, "
            "tests): the batch steps, every window final. Default: run "
            "until stopped, with early, on-time and late panes.")
        parser.add_argument(
            "--kafka-client", "--kafka_client", dest="kafka_client",
            choices=KAFKA_CLIENTS, default=DEFAULT_KAFKA_CLIENT,
            help="Kafka client that reads the partitions: confluent "
            "(confluent-kafka, librdkafka; default, 3-4x faster per core) or "
            "kafka-python.")
        parser.add_argument(
            "--group", default=None,
            help="Consumer group, for --read-from committed and for "
            "--commit-offsets.")
        parser.add_argument(
            "--commit-offsets", "--commit_offsets", dest="commit_offsets",
            action="store_true",
            help="Commit the offsets read to --group (monitoring only: the "
            "runner, not the group, owns the read position).")
        parser.add_argument(
            "--allowed-lateness", "--allowed_lateness",
            dest="allowed_lateness", type=_lateness,
            default=10 * 60_000,
            help="How long after the watermark passes a window's end its "
            "events are still counted (late panes), e.g. 10m (default), 1h, "
            "0 (a bare number is milliseconds). Older events go to the "
            "late_events table.")
        parser.add_argument(
            "--early-firing-s", "--early_firing_s", dest="early_firing_s",
            type=_seconds,
            default=DEFAULT_EARLY_FIRING_S,
            help="Seconds of processing time between early panes of an open "
            f"window (default {DEFAULT_EARLY_FIRING_S:g}).")
        parser.add_argument(
            "--commit-interval-s", "--commit_interval_s",
            dest="commit_interval_s", type=_non_negative_seconds,
            default=1.0,
            help="Seconds of wall time between two commits of the output "
            "tables (default 1): every table's new rows are committed "
            "together. Shorter makes panes visible sooner; each commit "
            "costs tens of milliseconds whatever its size.")
        parser.add_argument(
            "--dead-letter-topic", "--dead_letter_topic",
            dest="dead_letter_topic", default=None,
            help="Kafka topic for records that fail validation (JSON with "
            "raw, reason, source); default <topic>-dead-letters. They also "
            "go to the dead_letters table.")
        parser.add_argument(
            "--idle-timeout-ms", "--idle_timeout_ms", dest="idle_timeout_ms",
            type=int, default=None,
            help="After this long without new messages, a partition's "
            "watermark follows the wall clock (default: the source's, 5 s). "
            "Use 0 to never do that (replays of old data).")
        parser.add_argument(
            "--broker-timeout-s", "--broker_timeout_s",
            dest="broker_timeout_s", type=_non_negative_seconds,
            default=BROKER_CHECK_TIMEOUT_S,
            help="Before the run, wait this long for --bootstrap to answer "
            "and check that --topic exists; an unreachable broker or a "
            "missing topic is then a one-line error (default "
            f"{BROKER_CHECK_TIMEOUT_S:g}). 0 skips the check (a launcher "
            "that cannot reach the brokers its workers can).")


def build(pipeline: beam.Pipeline, options: PipelineOptions):
    """Add the Kafka top-K steps to ``pipeline`` (bounded or unbounded by
    ``--bounded``)."""
    kafka = options.view_as(StreamOptions)
    read_args = {}
    if kafka.idle_timeout_ms is not None:
        read_args["idle_timeout_ms"] = kafka.idle_timeout_ms or None
    parsed = (
        pipeline
        | "ReadKafka" >> ReadFromKafkaBatches(
            kafka.bootstrap, kafka.topic, start=kafka.read_from,
            bounded=kafka.bounded, group_id=kafka.group,
            commit_offsets=kafka.commit_offsets,
            kafka_client=kafka.kafka_client, **read_args)
        | "ParseEvents" >> ParseEvents())
    if kafka.bounded:
        return add_top_k_tables(parsed, options, SOURCE,
                                output_layout.input_fingerprint(
                                    f"{kafka.bootstrap}/{kafka.topic}"))
    return _add_unbounded_tables(parsed, options)


def _add_unbounded_tables(parsed, options: PipelineOptions):
    kafka = options.view_as(StreamOptions)
    opts = options.view_as(TopKOptions)
    output = opts.output
    methods = sketch_windows.parse_methods(opts.method)
    approximate = sketch_windows.approximate_methods(methods)
    (parsed[DEAD_LETTERS]
     | "DeadLetterTopic" >> WriteDeadLettersToKafka(
         kafka.bootstrap,
         kafka.dead_letter_topic or f"{kafka.topic}-dead-letters"))
    (parsed.events
     | "WriteArchive" >> WriteArchiveFiles(output))
    specs = parse_windows(opts.windows)
    events = parsed.events
    outputs = collections.defaultdict(list)  # table -> PCollections
    if sketch_windows.EXACT in methods:
        exact = events | "StreamTopK" >> StreamTopK(
            specs, opts.k, item_shards=opts.item_shards,
            dedup_shards=opts.dedup_shards,
            allowed_lateness_ms=kafka.allowed_lateness,
            early_firing_s=kafka.early_firing_s)
        for name, pcoll in exact.items():
            outputs[name].append(pcoll)
    if approximate:
        # No de-duplication on this path: see topk.streaming.sketch_panes.
        sketched = events | "StreamSketchTopK" >> StreamSketchTopK(
            specs, opts.k, approximate,
            budget_bytes=opts.sketch_budget_bytes,
            allowed_lateness_ms=kafka.allowed_lateness,
            early_firing_s=kafka.early_firing_s)
        for name, pcoll in sketched.items():
            outputs[name].append(pcoll)
    tables = {name: pcolls[0] if len(pcolls) == 1 else
              pcolls | f"Flatten_{name}" >> beam.Flatten()
              for name, pcolls in outputs.items()}
    sinks = parse_sinks(options.view_as(BigQuerySinkOptions).sink)
    panes = {name: tables[name] for name in (output_layout.RANKED_WINDOWS,
                                             output_layout.SLICES,
                                             output_layout.SKETCHES)
             if name in tables}
    if BIGQUERY in sinks:
        panes | "WriteBigQuery" >> WriteBigQueryTables.from_options(
            options, panes)
    # Late events and counts, and dead letters, always go to the output:
    # they are the record of what was not counted.
    written = {name: pcoll for name, pcoll in tables.items()
               if PARQUET in sinks or name not in panes}
    written[output_layout.DEAD_LETTERS] = parsed[DEAD_LETTERS]
    (written
     | "WriteTables" >> WriteTablesBuffered(
         output, input_ids={
             output_layout.DEAD_LETTERS: output_layout.input_fingerprint(
                 f"{kafka.bootstrap}/{kafka.topic}")},
         commit_interval_s=kafka.commit_interval_s))


def prism_binary() -> str | None:
    """The Prism binary ``deploy/prism/prism.sh install`` built, if any
    (``$TOPK_PRISM`` wins)."""
    if os.environ.get("TOPK_PRISM"):
        return os.environ["TOPK_PRISM"]
    cache = os.environ.get("TOPK_PRISM_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
        "topk", "prism")
    version = beam.__version__
    path = os.path.join(cache, f"v{version}", "bin", "prism")
    if os.path.exists(path):
        return path
    found = sorted(glob.glob(os.path.join(cache, "v*", "bin", "prism")))
    return found[-1] if found else None


def use_prism_safely(options: PipelineOptions) -> PipelineOptions:
    """Options for Prism: the binary ``prism_binary`` finds unless one is
    given, and ``PRISM_NO_SPLITS``. Returns ``options``."""
    prism = options.view_as(PrismRunnerOptions)
    if not prism.prism_location:
        prism.prism_location = prism_binary()
        if not prism.prism_location:
            raise ValueError("Prism is not installed: run deploy/prism/"
                             "prism.sh install, or pass --prism_location")
    debug = options.view_as(DebugOptions)
    if PRISM_NO_SPLITS not in (debug.experiments or []):
        debug.add_experiment(PRISM_NO_SPLITS)
    return options


def _choose_runner(options: PipelineOptions) -> str:
    standard = options.view_as(StandardOptions)
    bounded = options.view_as(StreamOptions).bounded
    if not standard.runner:
        standard.runner = LOCAL_BATCH_RUNNER if bounded else LOCAL_STREAM_RUNNER
    if not bounded:
        standard.streaming = True
    runner = runner_name(options)
    if runner.endswith("PrismRunner"):
        use_prism_safely(options)
        if not bounded:
            default_unless_given(options, item_shards=LOCAL_STREAM_SHARDS,
                                 dedup_shards=LOCAL_STREAM_SHARDS)
    if bounded:
        use_local_item_shards(options)
    if runner.endswith("FlinkRunner") and not bounded:
        flink = options.view_as(FlinkCheckpointOptions)
        if flink.finish_bundle_before_checkpointing is None:
            flink.finish_bundle_before_checkpointing = True
    portable = options.view_as(PortableOptions)
    if not bounded and portable.job_server_timeout == _BEAM_JOB_SERVER_TIMEOUT:
        # Beam's default (300 s) is also how long the driver waits on the
        # job's state stream: an unbounded job would die after 5 minutes
        # with DEADLINE_EXCEEDED.
        portable.job_server_timeout = UNBOUNDED_JOB_SERVER_TIMEOUT_S
    return runner


def run(argv=None, wait: bool = True, on_result=None):
    """Run the Kafka pipeline; returns the Beam ``PipelineResult`` (an
    unbounded one runs until cancelled or the process stops).
    ``on_result(result)`` is called as soon as the runner hands the result
    back, while the job runs (the local bounded runner: at the end)."""
    reject_renamed(sys.argv[1:] if argv is None else argv, RENAMED_FLAGS)
    options = PipelineOptions(argv)
    reject_unknown(options)
    check_required(options, ["bootstrap", "topic", "output"])
    check_output_writable(options.view_as(TopKOptions).output)
    runner = _choose_runner(options)
    kafka = options.view_as(StreamOptions)
    _LOG.info("topk stream: runner %s, %s, topic %s at %s, output %s",
              runner, "bounded" if kafka.bounded else "unbounded",
              kafka.topic, kafka.bootstrap,
              options.view_as(TopKOptions).output)
    pipeline = beam.Pipeline(options=options)
    build(pipeline, options)
    if kafka.broker_timeout_s:
        # Before any work: otherwise the planner retries inside the job for
        # a minute and the runner reports it as a long traceback.
        check_broker(kafka.bootstrap, kafka.topic, kafka.broker_timeout_s)
    result = pipeline.run()
    if on_result is not None:
        on_result(result)
    if not wait:
        return result
    if kafka.bounded:
        result.wait_until_finish()
        return result
    # Runs until stopped: Ctrl-C or SIGTERM cancel the job (which also
    # stops a local Prism) instead of leaving it running without us.
    previous = _raise_on_sigterm()
    try:
        result.wait_until_finish()
    except KeyboardInterrupt:
        _LOG.info("topk stream: stopping")
        result.cancel()
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return result


def _raise_on_sigterm():
    if threading.current_thread() is not threading.main_thread():
        return None

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, interrupt)
