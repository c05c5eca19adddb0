"""google-cloud-bigquery against the local emulator: dataset, partitioned + clustered
table, streaming insert, Parquet load, parameterised query, MERGE.

    export $(deploy/bigquery/emulator.sh start)   # BIGQUERY_EMULATOR_HOST, GOOGLE_CLOUD_PROJECT
    python deploy/bigquery/examples/client_smoke.py

Needs google-cloud-bigquery and pyarrow in the running interpreter (not the emulator's).
"""
from __future__ import annotations

import datetime as dt
import io
import os
import time
import uuid

import pyarrow as pa
import pyarrow.parquet as pq
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery


def client() -> bigquery.Client:
    endpoint = os.environ.get("BIGQUERY_EMULATOR_HOST", "http://127.0.0.1:9050")
    project = os.environ.get("GOOGLE_CLOUD_PROJECT", "topk-local")
    return bigquery.Client(
        project=project,
        credentials=AnonymousCredentials(),
        client_options=ClientOptions(api_endpoint=endpoint),
    )


def main() -> None:
    t0 = time.perf_counter()
    bq = client()
    ds_id = f"{bq.project}.smoke_{uuid.uuid4().hex[:8]}"
    bq.create_dataset(bigquery.Dataset(ds_id))

    schema = [
        bigquery.SchemaField("ts", "TIMESTAMP", mode="REQUIRED"),
        bigquery.SchemaField("key", "STRING", mode="REQUIRED"),
        bigquery.SchemaField("count", "INT64", mode="REQUIRED"),
    ]
    table = bigquery.Table(f"{ds_id}.counts", schema=schema)
    table.time_partitioning = bigquery.TimePartitioning(
        type_=bigquery.TimePartitioningType.HOUR, field="ts")
    table.clustering_fields = ["key"]
    bq.create_table(table)

    got = bq.get_table(f"{ds_id}.counts")
    assert got.time_partitioning is not None, "partitioning lost"
    assert got.time_partitioning.type_ == "HOUR" and got.time_partitioning.field == "ts", got.time_partitioning
    assert got.clustering_fields == ["key"], got.clustering_fields

    now = dt.datetime(2026, 1, 1, 12, tzinfo=dt.timezone.utc)
    errors = bq.insert_rows_json(f"{ds_id}.counts", [
        {"ts": now.isoformat(), "key": "a", "count": 3},
        {"ts": now.isoformat(), "key": "b", "count": 5},
    ])
    assert not errors, errors

    # Parquet load into the existing (partitioned) table.
    buf = io.BytesIO()
    pq.write_table(pa.table({
        "ts": pa.array([now + dt.timedelta(hours=1)] * 2, pa.timestamp("us", tz="UTC")),
        "key": ["a", "c"],
        "count": pa.array([7, 11], pa.int64()),
    }), buf)
    buf.seek(0)
    job = bq.load_table_from_file(buf, f"{ds_id}.counts", job_config=bigquery.LoadJobConfig(
        source_format=bigquery.SourceFormat.PARQUET,
        write_disposition=bigquery.WriteDisposition.WRITE_APPEND))
    job.result()
    assert bq.get_table(f"{ds_id}.counts").num_rows == 4

    # Parameterised query.
    rows = list(bq.query(
        f"SELECT key, SUM(count) AS total FROM `{ds_id}.counts` "
        "WHERE key IN UNNEST(@keys) AND ts >= @since GROUP BY key ORDER BY total DESC",
        job_config=bigquery.QueryJobConfig(query_parameters=[
            bigquery.ArrayQueryParameter("keys", "STRING", ["a", "b"]),
            bigquery.ScalarQueryParameter("since", "TIMESTAMP", now),
        ]),
    ).result())
    assert [(r.key, r.total) for r in rows] == [("a", 10), ("b", 5)], rows

    # MERGE (upsert) from a parameterised source.
    bq.query(
        f"MERGE `{ds_id}.counts` T USING (SELECT @key AS key, @n AS count) S "
        "ON T.key = S.key WHEN MATCHED THEN UPDATE SET count = T.count + S.count "
        "WHEN NOT MATCHED THEN INSERT (ts, key, count) VALUES (CURRENT_TIMESTAMP(), S.key, S.count)",
        job_config=bigquery.QueryJobConfig(query_parameters=[
            bigquery.ScalarQueryParameter("key", "STRING", "c"),
            bigquery.ScalarQueryParameter("n", "INT64", 100),
        ]),
    ).result()
    bq.query(
        f"MERGE `{ds_id}.counts` T USING (SELECT 'z' AS key, 1 AS count) S "
        "ON T.key = S.key WHEN MATCHED THEN UPDATE SET count = T.count + S.count "
        "WHEN NOT MATCHED THEN INSERT (ts, key, count) VALUES (CURRENT_TIMESTAMP(), S.key, S.count)",
    ).result()
    totals = {r.key: r.total for r in bq.query(
        f"SELECT key, SUM(count) AS total FROM `{ds_id}.counts` GROUP BY key").result()}
    assert totals == {"a": 10, "b": 5, "c": 111, "z": 1}, totals

    df_rows = bq.query(f"SELECT COUNT(*) AS n FROM `{ds_id}.counts`").to_arrow(
        create_bqstorage_client=False)
    assert df_rows.column("n")[0].as_py() == 5

    bq.delete_dataset(ds_id, delete_contents=True)
    print(f"client smoke OK against {bq._connection.API_BASE_URL} "
          f"in {time.perf_counter() - t0:.2f}s")


if __name__ == "__main__":
    main()
