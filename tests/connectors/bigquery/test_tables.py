"""BigQuery table specs derived from the Arrow output schemas (no service)."""
import base64
import datetime as dt

import pyarrow as pa
import pytest
from google.cloud import bigquery

from topk.connectors.bigquery import tables as bigquery_tables
from topk.core import schema
from topk.connectors.bigquery.client import BigQueryError, Target
from topk.storage.layout import RANKED_WINDOWS, SKETCHES, SLICES

TARGET = Target("my-project", "topk", "dev_")


def test_schemas_follow_the_arrow_schemas():
    for name, arrow in ((RANKED_WINDOWS, schema.RANKED_WINDOWS_SCHEMA),
                        (SLICES, schema.SLICES_SCHEMA),
                        (SKETCHES, schema.SKETCHES_SCHEMA)):
        fields = bigquery_tables.bigquery_fields(
            bigquery_tables.TABLES[name].arrow_schema)
        assert [f["name"] for f in fields] == arrow.names
        assert [f["mode"] for f in fields] == [
            "NULLABLE" if f.nullable else "REQUIRED" for f in arrow]
    slices = {f["name"]: (f["type"], f["mode"]) for f in
              bigquery_tables.bigquery_fields(schema.SLICES_SCHEMA)}
    assert slices == {
        "slice_start": ("TIMESTAMP", "REQUIRED"),
        "slice_length": ("STRING", "REQUIRED"),
        "event_type": ("STRING", "REQUIRED"),
        "item_id": ("STRING", "REQUIRED"),
        "count": ("INT64", "REQUIRED"),
        "source": ("STRING", "REQUIRED"),
        "emitted_at": ("TIMESTAMP", "REQUIRED")}


def test_every_arrow_type_of_a_new_column_maps_or_fails_loudly():
    extended = schema.RANKED_WINDOWS_SCHEMA.append(
        pa.field("guaranteed", pa.bool_(), nullable=False))
    assert bigquery_tables.bigquery_fields(extended)[-1] == {
        "name": "guaranteed", "type": "BOOL", "mode": "REQUIRED"}
    kinds = pa.schema([("a", pa.float32()), ("b", pa.large_string()),
                       ("c", pa.date32()), ("d", pa.int8()),
                       ("e", pa.large_binary()),
                       ("f", pa.timestamp("us"))])
    assert [f["type"] for f in bigquery_tables.bigquery_fields(kinds)] == [
        "FLOAT64", "STRING", "DATE", "INT64", "BYTES", "TIMESTAMP"]
    with pytest.raises(ValueError, match="no BigQuery type for Arrow type "
                       "list<item: int64>"):
        bigquery_tables.bigquery_fields(pa.schema([("x", pa.list_(
            pa.int64()))]))


def test_table_resources_are_partitioned_and_clustered():
    for name, spec in bigquery_tables.TABLES.items():
        resource = bigquery_tables.table_resource(spec, TARGET)
        assert resource["tableReference"] == {
            "projectId": "my-project", "datasetId": "topk",
            "tableId": f"dev_{name}"}
        fields = {f["name"]: f for f in resource["schema"]["fields"]}
        partition = resource["timePartitioning"]
        assert partition == {"type": "DAY", "field": spec.partition_field}
        assert fields[spec.partition_field]["type"] == "TIMESTAMP"
        clustering = resource["clustering"]["fields"]
        assert 0 < len(clustering) <= 4 and set(clustering) <= set(fields)
        assert "event_type" in clustering
    assert bigquery_tables.table_resource(
        bigquery_tables.TABLES[SLICES], TARGET, 86_400_000
    )["timePartitioning"]["expirationMs"] == "86400000"


def test_streaming_rows_carry_base64_bytes_and_python_values():
    t0 = dt.datetime(2024, 5, 1, tzinfo=dt.timezone.utc)
    table = pa.table({
        "slice_start": pa.array([t0, t0], schema.TIMESTAMP),
        "sketch": pa.array([b"\x00\xffTKCM", None], pa.binary()),
        "count": pa.array([3, None], pa.int64()),
    })
    assert bigquery_tables.json_rows(table) == [
        {"slice_start": t0, "sketch": base64.b64encode(
            b"\x00\xffTKCM").decode(), "count": 3},
        {"slice_start": t0, "sketch": None, "count": None}]


def as_table(resource: dict) -> bigquery.Table:
    return bigquery.Table.from_api_repr(resource)


def test_existing_tables_are_checked_against_the_contract():
    spec = bigquery_tables.TABLES[SLICES]
    resource = bigquery_tables.table_resource(spec, TARGET)
    # The REST API reports legacy type names: still the same table.
    legacy = dict(resource, schema={"fields": [
        dict(f, type={"INT64": "INTEGER"}.get(f["type"], f["type"]))
        for f in resource["schema"]["fields"]]})
    bigquery_tables._check_table(as_table(legacy), resource, "t")
    unclustered = dict(resource)
    del unclustered["clustering"]
    wrong_columns = dict(resource, schema={"fields": resource["schema"][
        "fields"][:-1]})
    hourly = dict(resource, timePartitioning={"type": "HOUR",
                                              "field": "slice_start"})
    for bad, why in ((unclustered, "clustered on None"),
                     (wrong_columns, "columns slice_start TIMESTAMP, "),
                     (hourly, "not partitioned by day on slice_start")):
        with pytest.raises(BigQueryError, match=f"table t exists but differs "
                           f"from the output contract \\({why}"):
            bigquery_tables._check_table(as_table(bad), resource, "t")
