"""BigQuery sink: the ranked windows, slices and sketches tables through
Beam's ``WriteToBigQuery``.

``--sink bigquery`` (or ``parquet,bigquery`` for both) on ``topk batch`` and
``topk stream``. ``WriteBigQueryTables.from_options`` checks the
configuration and creates the tables up front, before the pipeline runs
(``topk.connectors.bigquery.tables``: daily partitions, clustering, retention), so a
missing dataset or unusable credentials fail at once, in one line. The
transform then appends every row batch to its table:

- ``FILE_LOADS`` (default for bounded runs): rows go to Avro files under
  ``--temp_location`` (``gs://...`` for real BigQuery; a local directory
  works with the emulator), then load jobs append them. Loads are free and
  atomic, but each table takes a limited number of load jobs per day: use
  them for batch runs and backfills.
- ``STREAMING_INSERTS`` (default with ``--streaming``): ``insertAll`` calls,
  rows queryable within seconds, billed per GB; for unbounded streaming,
  where panes must be visible while the window is open. A row BigQuery
  rejects fails the pipeline (nothing is dropped silently).

Appends never overwrite, so idempotency lives in the readers:
``topk.query.bigquery`` reads, per slice, the batch rows when there are
some, else the latest ``emitted_at`` (a rerun or a replay appends newer
copies that replace the older ones in every answer).

Local emulator: ``--bq-endpoint http://127.0.0.1:9050`` (or
``BIGQUERY_EMULATOR_HOST``) points both of Beam's BigQuery clients at it, in
this process (``_point_beam_at``): use an in-process runner (the default
FnApiRunner). See ``deploy/bigquery/README.md``.
"""
import os

import apache_beam as beam
import pyarrow as pa
from apache_beam.options.pipeline_options import (GoogleCloudOptions,
                                                  PipelineOptions,
                                                  StandardOptions)

from topk.connectors.bigquery import client as bigquery_client
from topk.connectors.bigquery import tables as bigquery_tables
from topk.storage import retention
from topk.storage import layout as output_layout

PARQUET = "parquet"
BIGQUERY = "bigquery"
SINKS = (PARQUET, BIGQUERY)
FILE_LOADS = "FILE_LOADS"
STREAMING_INSERTS = "STREAMING_INSERTS"
WRITE_METHODS = (FILE_LOADS, STREAMING_INSERTS)

#: Beam's own BigQuery API base URL (restored when no endpoint is given).
_GOOGLE_BASE_URL = f"{bigquery_client.GOOGLE_ENDPOINT}/bigquery/v2/"

#: Step label of each table's write.
_LABELS = {
    output_layout.RANKED_WINDOWS: "RankedWindows",
    output_layout.SLICES: "Slices",
    output_layout.SKETCHES: "Sketches",
}


class BigQuerySinkOptions(PipelineOptions):
    """Where the output tables go (``--sink``) and the BigQuery settings."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument(
            "--sink", default=PARQUET,
            help="Comma-separated sinks of the ranked_windows, slices and "
            "sketches tables: parquet (default; under --output) and/or "
            "bigquery (--bq-dataset). Dead letters always go to --output.")
        bigquery_client.add_arguments(parser)
        parser.add_argument(
            "--bq-write-method", "--bq_write_method", dest="bq_write_method",
            default=None,
            help="FILE_LOADS (default for bounded runs; needs "
            "--temp_location, gs:// for real BigQuery) or STREAMING_INSERTS "
            "(default with --streaming).")
        parser.add_argument(
            "--retention", default="",
            help="Retention tiers, e.g. 1m=7d,1h=90d,1d=730d: with every tier "
            "given, the BigQuery tables' partitions expire after the longest "
            "one (shorter tiers: topk retention). Default: keep everything.")


def parse_sinks(text: str) -> list[str]:
    """``"parquet,bigquery"`` -> ``["parquet", "bigquery"]``."""
    names = [n.strip() for n in (text or "").split(",") if n.strip()]
    if not names or any(n not in SINKS for n in names):
        raise ValueError(f"bad --sink {text!r}: choose one or more of "
                         f"{', '.join(SINKS)}, comma-separated")
    return list(dict.fromkeys(names))


class WriteBigQueryTables(beam.PTransform):
    """Append the ranked windows, exact slices and sketches of one run to
    their BigQuery tables (which must exist: ``from_options`` creates them).

    Takes the same dict as ``topk.sinks.parquet.WriteOutputTables``
    (``{"ranked_windows": PCollection[pa.Table], ...}``, any may be absent).
    Yields the destination table of every load job (``FILE_LOADS``); with
    ``STREAMING_INSERTS`` nothing, and a rejected row fails the pipeline.
    """

    def __init__(self, target: bigquery_client.Target,
                 method: str = FILE_LOADS):
        super().__init__()
        if method not in WRITE_METHODS:
            raise ValueError(f"bad BigQuery write method {method!r}: choose "
                             f"{' or '.join(WRITE_METHODS)}")
        self._target = target
        self._method = method
        # File loads write Avro (raw bytes, datetimes); insertAll takes JSON.
        self._rows = (pa.Table.to_pylist if method == FILE_LOADS
                      else bigquery_tables.json_rows)

    @classmethod
    def from_options(cls, options: PipelineOptions, tables
                     ) -> "WriteBigQueryTables":
        """Check the BigQuery options, connect (Application Default
        Credentials), create the ``tables`` (names) that are missing and
        point Beam at ``--bq-endpoint``; ``ValueError`` on any problem."""
        opts = options.view_as(BigQuerySinkOptions)
        streaming = options.view_as(StandardOptions).streaming
        method = (opts.bq_write_method or (
            STREAMING_INSERTS if streaming else FILE_LOADS)).upper()
        if method not in WRITE_METHODS:
            raise ValueError(f"bad --bq-write-method {opts.bq_write_method!r}"
                             f": choose {' or '.join(WRITE_METHODS)}")
        policy = retention.parse_retention(opts.retention)
        gcp = options.view_as(GoogleCloudOptions)
        project = opts.bq_project or gcp.project
        client, target = bigquery_client.connect(
            project, opts.bq_dataset, opts.bq_table_prefix, opts.bq_endpoint,
            opts.bq_location)
        if method == FILE_LOADS:
            temp = gcp.temp_location
            if not temp:
                raise ValueError("--bq-write-method FILE_LOADS needs "
                                 "--temp_location (gs://bucket/path; a local "
                                 "directory with the emulator)")
            if target.endpoint is None and not temp.startswith("gs://"):
                raise ValueError(
                    "BigQuery loads files from Cloud Storage only: "
                    f"--temp_location {temp} must be gs://...")
        bigquery_tables.ensure_tables(client, target, list(tables),
                                      policy if opts.retention else None)
        _point_beam_at(target)
        return cls(target, method)

    def expand(self, pcolls):
        outcomes = []
        for table, label in _LABELS.items():
            if table not in pcolls:
                continue
            result = (pcolls[table]
                      | f"{label}Rows" >> beam.FlatMap(self._rows)
                      | f"Write{label}" >> self._write(table))
            if self._method == FILE_LOADS:
                outcomes.append(result.destination_load_jobid_pairs
                                | f"{label}Loaded" >> beam.MapTuple(
                                    lambda destination, _: str(destination)))
            else:
                outcomes.append(result.failed_rows_with_errors
                                | f"{label}Rejected" >> beam.Map(
                                    _fail_on_rejected_row))
        return tuple(outcomes) | "AllWritten" >> beam.Flatten()

    def _write(self, table: str) -> beam.io.WriteToBigQuery:
        spec = bigquery_tables.TABLES[table]
        return beam.io.WriteToBigQuery(
            self._target.beam_table_spec(table),
            schema={"fields": bigquery_tables.bigquery_fields(
                spec.arrow_schema)},
            method=self._method,
            create_disposition=beam.io.BigQueryDisposition.CREATE_NEVER,
            write_disposition=beam.io.BigQueryDisposition.WRITE_APPEND,
            insert_retry_strategy="RETRY_ON_TRANSIENT_ERROR",
            temp_file_format="AVRO",
            load_job_project_id=self._target.project,
            # Our own checks ran in from_options; Beam's would insist on a
            # gs:// temp location even for the emulator.
            validate=False)


def _fail_on_rejected_row(failure):
    destination, row, errors = failure
    raise RuntimeError(f"BigQuery rejected a row of {destination}: {errors} "
                       f"(row {row})")


def _point_beam_at(target: bigquery_client.Target) -> None:
    """Make Beam's two BigQuery clients use ``target`` in this process: the
    apitools client (tables, load jobs) has a class-level base URL, the
    google-cloud-bigquery client of streaming inserts reads
    ``BIGQUERY_EMULATOR_HOST``; both need a project besides the credentials
    (an ``authorized_user`` ADC file carries none)."""
    # Imported here: Beam's gcp extra is only needed with --sink bigquery.
    from apache_beam.io.gcp.internal.clients.bigquery import BigqueryV2
    os.environ.setdefault(bigquery_client.PROJECT_ENV, target.project)
    if target.endpoint is None:
        BigqueryV2.BASE_URL = _GOOGLE_BASE_URL
        return
    BigqueryV2.BASE_URL = f"{target.endpoint}/bigquery/v2/"
    os.environ[bigquery_client.EMULATOR_HOST_ENV] = target.endpoint
