"""``--metrics-port``: a pipeline's own counters in Prometheus text format.

``MetricsExporter`` serves ``/metrics`` (any path answers) on a port of this
process, from before the pipeline starts until the process exits. What it
serves is a snapshot, never a call into the pipeline: a scrape cannot slow
or fail the run, and a failing poll only leaves the last values in place.

Where the values come from:

- While a job runs on a portable runner (Prism, Flink's job server), a
  thread asks the job service for the job's metrics every
  ``POLL_EVERY_S`` (``GetJobMetrics``; Beam's ``PipelineResult.metrics()``
  caches its first answer, so it is not used while running). Prism 2.77
  answers with moving values while an unbounded job runs (as committed
  values). Beam's Java job server (Flink) answers with the metrics of a job
  only once it has ended, unless the job was submitted detached; its
  values are attempted ones. A counter's value is its committed value when
  the runner has one, else the attempted one, summed over the steps that
  count it (``counter_totals``, which the run summary uses too); a poll
  never takes a counter back.
- The local batch runner (FnApiRunner) returns its result only when the run
  is over: until then the counters are unknown, and what moves is the read
  progress of this process (``topk_read_records_total``,
  ``topk_read_bytes_total``, from ``topk.core.progress``).
- At the end (``finish``), the final values from the result, the same
  numbers the run summary prints; they stay until the process exits.

Metric names: every counter of the ``topk`` namespace as
``topk_<name>_total`` (``topk_events_valid_total``, ...), plus
``topk_events_read_total`` (valid + dead letters), ``topk_events_duplicate``
(valid - unique - late, as the run summary computes it), the Kafka source's
lag per partition ``topk_kafka_lag_messages{partition="N"}`` and
``topk_pipeline_running``. docs/metrics.md lists them.
"""
import logging
import re
import threading

from topk.core.progress import READ_PROGRESS

_LOG = logging.getLogger(__name__)

#: Namespace of the pipeline's Beam metrics and prefix of the exported ones.
NAMESPACE = "topk"
#: Seconds between polls of a running job's metrics.
POLL_EVERY_S = 1.0
#: Seconds a poll may take before it counts as failed.
POLL_TIMEOUT_S = 10.0
#: The Kafka source's per-partition lag gauges: ``kafka_lag_messages_p<N>``.
LAG_GAUGE = re.compile(r"^kafka_lag_messages_p(\d+)$")
#: Counters exported from the start (0 until the runner reports them), so
#: their series exist before the first event.
CORE_COUNTERS = ("events_valid", "events_dead_letter", "events_unique",
                 "events_late")
#: Exported help of the pipeline's counters (others get a generic one).
COUNTER_HELP = {
    "events_valid": "Records parsed into valid events.",
    "events_dead_letter": "Records rejected by validation (dead letters).",
    "events_unique": "Valid events counted after de-duplication.",
    "events_late": "Events older than the allowed lateness, not counted "
    "(the de-duplication stages).",
    "late_counts_refused": "Weight of partial counts a window stage "
    "refused as late (events a stage passed before it knew the watermark).",
    "panes_refused_expired": "Panes not written: their window had expired.",
    "kafka_messages": "Kafka messages read.",
    "kafka_batches": "Kafka poll batches read.",
    "kafka_bytes": "Bytes of Kafka message values read.",
    "kafka_retries": "Kafka reads retried after an error.",
    "kafka_offsets_lost_to_retention":
        "Kafka offsets deleted by retention before they were read.",
    "kafka_readers_reopened": "Kafka partition readers closed and opened "
    "anew after delivering nothing while the broker held more messages.",
}


def metric_value(result):
    """A ``MetricResult`` 's value: committed when the runner has it, else
    attempted (Flink reports attempted values only)."""
    return result.committed if result.committed is not None else (
        result.attempted)


def counter_totals(metrics) -> dict:
    """``{name: total}`` of the ``topk`` counters of a ``MetricResults``,
    summed over the steps that count them."""
    totals = {}
    for r in metrics.query()["counters"]:
        if r.key.metric.namespace != NAMESPACE:
            continue
        value = metric_value(r)
        if value is not None:
            totals[r.key.metric.name] = totals.get(r.key.metric.name, 0) + (
                value)
    return totals


def duplicates(counters: dict) -> int | None:
    """Valid events neither counted nor late: duplicates dropped; ``None``
    when nothing de-duplicated (yet): the approximate stream counts
    without de-duplication (``events_unique`` comes from the dedup
    stages only)."""
    if "events_unique" not in counters:
        return None
    return (counters.get("events_valid", 0) - counters["events_unique"]
            - counters.get("events_late", 0))


class _Snapshot:
    """What the last poll found."""

    def __init__(self, counters=None, distributions=None, gauges=None):
        self.counters = counters or {}
        self.distributions = distributions or {}  # name -> (count, sum)
        self.gauges = gauges or {}  # name -> int


def _snapshot(metrics) -> _Snapshot:
    query = metrics.query()
    distributions, gauges, stamps = {}, {}, {}
    for r in query["distributions"]:
        value = metric_value(r)
        if r.key.metric.namespace == NAMESPACE and value is not None:
            count, total = distributions.get(r.key.metric.name, (0, 0))
            distributions[r.key.metric.name] = (count + value.count,
                                                total + value.sum)
    for r in query["gauges"]:
        value = metric_value(r)
        if r.key.metric.namespace != NAMESPACE or value is None:
            continue
        name = r.key.metric.name
        # A gauge reported by several steps or workers: the latest wins.
        if value.value is not None and (
                name not in stamps or value.timestamp >= stamps[name]):
            gauges[name], stamps[name] = value.value, value.timestamp
    return _Snapshot(counter_totals(metrics), distributions, gauges)


def poll_metrics(result):
    """The job's metrics now. Beam's portable ``PipelineResult.metrics()``
    keeps its first answer (and the run summary must not get a stale one),
    so a portable job's service is asked directly."""
    service = getattr(result, "_job_service", None)
    job_id = getattr(result, "_job_id", None)
    if service is None or job_id is None:
        return result.metrics()
    from apache_beam.portability.api import beam_job_api_pb2
    from apache_beam.runners.portability.portable_runner import (
        PortableMetrics)
    return PortableMetrics(service.GetJobMetrics(
        beam_job_api_pb2.GetJobMetricsRequest(job_id=job_id),
        timeout=POLL_TIMEOUT_S))


class MetricsExporter:
    """The ``/metrics`` endpoint of one pipeline run. ``OSError`` when the
    port cannot be bound (in use, no permission)."""

    def __init__(self, port: int, addr: str = "0.0.0.0"):
        from prometheus_client import CollectorRegistry, start_http_server
        self._lock = threading.Lock()
        self._snapshot = _Snapshot()
        self._read = (0, 0)  # records, bytes: the largest seen
        self._running = 0
        self._poll_errors = 0
        self._result = None
        self._stop = threading.Event()
        self._poller = None
        registry = CollectorRegistry(auto_describe=False)
        registry.register(self)
        self._server, _ = start_http_server(port, addr=addr,
                                            registry=registry)
        self.port = self._server.server_port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/metrics"

    # -- the run ---------------------------------------------------------

    def started(self) -> None:
        """The pipeline is being built and run."""
        with self._lock:
            self._running = 1

    def note_read_progress(self) -> None:
        """Keep what the file source has read in this process so far (call
        before ``READ_PROGRESS.stop()``: the final values)."""
        self._take_read_progress()

    def _take_read_progress(self) -> None:
        snap = READ_PROGRESS.snapshot()
        if snap.active:
            with self._lock:
                self._read = (max(self._read[0], snap.records),
                              max(self._read[1], snap.bytes))

    def watch(self, result) -> None:
        """Poll ``result`` (a running job) until ``finish``."""
        with self._lock:
            self._result = result
            self._running = 1
        if self._poller is None:
            self._poller = threading.Thread(
                target=self._poll_loop, name="topk-metrics-poll", daemon=True)
            self._poller.start()

    def finish(self, result=None) -> None:
        """The run is over: final values from ``result`` (none: keep the
        last polled ones)."""
        self._stop.set()
        if self._poller is not None:
            self._poller.join(POLL_TIMEOUT_S + 1)
        snapshot = None
        if result is not None:
            try:
                snapshot = _snapshot(result.metrics())
            except Exception as e:  # noqa: BLE001 (a summary of a finished
                # run: keep the last values rather than fail it)
                self._note_error(e)
        with self._lock:
            if snapshot is not None:
                self._snapshot = snapshot
            self._running = 0

    def close(self) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()

    def _poll_loop(self) -> None:
        while not self._stop.wait(POLL_EVERY_S):
            self.poll_once()

    def poll_once(self) -> None:
        """Ask the running job for its metrics once (errors are counted,
        never raised)."""
        result = self._result
        if result is None:
            return
        try:
            snapshot = _snapshot(poll_metrics(result))
        except Exception as e:  # noqa: BLE001 (never fail the pipeline)
            self._note_error(e)
            return
        with self._lock:
            if not self._stop.is_set():
                # A poll never takes a counter back (a job service that
                # answers with less, e.g. nothing, while the job restarts).
                old = self._snapshot.counters
                snapshot.counters = {
                    name: max(value, old.get(name, value))
                    for name, value in {**old, **snapshot.counters}.items()}
                self._snapshot = snapshot

    def _note_error(self, error) -> None:
        with self._lock:
            self._poll_errors += 1
            first = self._poll_errors == 1
        if first:
            _LOG.warning("metrics export: cannot read the job's metrics: %r",
                         error)

    # -- prometheus_client Collector -------------------------------------

    def collect(self):
        from prometheus_client.core import (CounterMetricFamily,
                                            GaugeMetricFamily,
                                            SummaryMetricFamily)
        self._take_read_progress()
        with self._lock:
            s, read, running = self._snapshot, self._read, self._running
            errors = self._poll_errors
        counters = s.counters
        yield GaugeMetricFamily(
            f"{NAMESPACE}_pipeline_running",
            "1 while the pipeline runs, 0 once it is over (the values are "
            "then final).", value=running)
        yield CounterMetricFamily(
            f"{NAMESPACE}_metrics_poll_errors",
            "Failed polls of the job's metrics (values stay at the last "
            "poll).", value=errors)
        if read != (0, 0):
            yield CounterMetricFamily(
                f"{NAMESPACE}_read_records",
                "Records the file source read in this process (local "
                "runner).", value=read[0])
            yield CounterMetricFamily(
                f"{NAMESPACE}_read_bytes",
                "Bytes of input the file source read in this process "
                "(local runner).", value=read[1])
        dropped = duplicates(counters)
        # The core counters always, 0 until the runner reports them.
        counters = {**dict.fromkeys(CORE_COUNTERS, 0), **counters}
        yield CounterMetricFamily(
            f"{NAMESPACE}_events_read",
            "Records parsed: valid events plus dead letters.",
            value=counters["events_valid"] + counters["events_dead_letter"])
        if dropped is not None:
            yield GaugeMetricFamily(
                f"{NAMESPACE}_events_duplicate",
                "Duplicates dropped: valid - unique - late (exact once the "
                "pipeline has caught up; events in flight count here until "
                "they are de-duplicated).", value=max(0, dropped))
        for name in sorted(counters):
            yield CounterMetricFamily(
                f"{NAMESPACE}_{name}",
                COUNTER_HELP.get(name, f"The pipeline's {name} counter."),
                value=counters[name])
        for name in sorted(s.distributions):
            count, total = s.distributions[name]
            yield SummaryMetricFamily(
                f"{NAMESPACE}_{name}", f"The pipeline's {name} distribution.",
                count_value=count, sum_value=total)
        lag = GaugeMetricFamily(
            f"{NAMESPACE}_kafka_lag_messages",
            "Messages of a Kafka partition not read yet (end offset minus "
            "the reader's position, as of its last read).",
            labels=["partition"])
        other = []
        for name in sorted(s.gauges):
            match = LAG_GAUGE.match(name)
            if match:
                lag.add_metric([match.group(1)], s.gauges[name])
            else:
                other.append(name)
        if lag.samples:
            yield lag
        for name in other:
            yield GaugeMetricFamily(
                f"{NAMESPACE}_{name}", f"The pipeline's {name} gauge.",
                value=s.gauges[name])


def start(port: int) -> MetricsExporter:
    """An exporter on ``port`` (0: a free one); prints its URL. ``OSError``
    when the port cannot be bound."""
    exporter = MetricsExporter(port)
    print(f"metrics at {exporter.url}", flush=True)
    return exporter
