"""Beam 2.77 WriteToBigQuery into the local emulator, STREAMING_INSERTS and FILE_LOADS.

    export $(deploy/bigquery/emulator.sh start)   # BIGQUERY_EMULATOR_HOST, GOOGLE_CLOUD_PROJECT
    python deploy/bigquery/examples/beam_smoke.py

Needs apache-beam[gcp]==2.77.0 in the running interpreter.
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from beam_emulator import point_beam_at_emulator  # noqa: E402

ENV = point_beam_at_emulator()

import apache_beam as beam  # noqa: E402
from apache_beam.options.pipeline_options import PipelineOptions  # noqa: E402
from google.api_core.client_options import ClientOptions  # noqa: E402
from google.auth.credentials import AnonymousCredentials  # noqa: E402
from google.cloud import bigquery  # noqa: E402

SCHEMA = "ts:TIMESTAMP,key:STRING,count:INTEGER"
PARTITIONED = {"timePartitioning": {"type": "HOUR", "field": "ts"},
               "clustering": {"fields": ["key"]}}


def rows(tag: str) -> list[dict]:
    return [{"ts": f"2026-01-01T12:{i:02d}:00Z", "key": f"{tag}{i % 3}", "count": i}
            for i in range(30)]


def run(method: str, table: str, temp_dir: str) -> float:
    t0 = time.perf_counter()
    options = PipelineOptions(
        runner="DirectRunner",
        project=ENV["GOOGLE_CLOUD_PROJECT"],
        temp_location=temp_dir,  # local path: FILE_LOADS then needs validate=False
    )
    with beam.Pipeline(options=options) as p:
        _ = (p
             | beam.Create(rows(method[:1].lower()))
             | beam.io.WriteToBigQuery(
                 table,
                 schema=SCHEMA,
                 method=method,
                 create_disposition=beam.io.BigQueryDisposition.CREATE_IF_NEEDED,
                 write_disposition=beam.io.BigQueryDisposition.WRITE_APPEND,
                 additional_bq_parameters=PARTITIONED,
                 validate=False))
    return time.perf_counter() - t0


def main() -> None:
    bq = bigquery.Client(project=ENV["GOOGLE_CLOUD_PROJECT"], credentials=AnonymousCredentials(),
                         client_options=ClientOptions(api_endpoint=ENV["BIGQUERY_EMULATOR_HOST"]))
    ds = f"beam_{uuid.uuid4().hex[:8]}"
    bq.create_dataset(f"{bq.project}.{ds}")
    with tempfile.TemporaryDirectory(prefix="bqemu-beam-") as temp_dir:
        for method in ("STREAMING_INSERTS", "FILE_LOADS"):
            for precreate in (False, True):
                name = f"{method.lower()}_{'pre' if precreate else 'new'}"
                spec = f"{bq.project}:{ds}.{name}"
                if precreate:
                    t = bigquery.Table(f"{bq.project}.{ds}.{name}", schema=[
                        bigquery.SchemaField("ts", "TIMESTAMP"), bigquery.SchemaField("key", "STRING"),
                        bigquery.SchemaField("count", "INTEGER")])
                    t.time_partitioning = bigquery.TimePartitioning(type_="HOUR", field="ts")
                    t.clustering_fields = ["key"]
                    bq.create_table(t)
                secs = run(method, spec, temp_dir)
                got = bq.get_table(f"{bq.project}.{ds}.{name}")
                n, total = next(iter(bq.query(
                    f"SELECT COUNT(*), SUM(count) FROM `{bq.project}.{ds}.{name}`").result()))
                assert (n, total) == (30, sum(range(30))), (name, n, total)
                part = got.time_partitioning and f"{got.time_partitioning.type_}({got.time_partitioning.field})"
                print(f"{name:28s} rows={n} partitioning={part} clustering={got.clustering_fields} "
                      f"pipeline={secs:.1f}s")
    bq.delete_dataset(f"{bq.project}.{ds}", delete_contents=True)
    print("beam smoke OK")


if __name__ == "__main__":
    main()
