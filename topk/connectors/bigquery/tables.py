"""The output tables in BigQuery: schemas, partitioning, clustering,
retention, rows (no Beam).

The BigQuery schemas are derived from the Arrow schemas of ``topk.core.schema``
(``bigquery_fields``), so Parquet and BigQuery always hold the same columns.
Every table is partitioned by day on its start column and clustered on the
columns queries filter on, most selective first:

- ``ranked_windows``: ``window_start``; window length, method, event type,
  item (a window spec's top-K, or one item's history);
- ``slices``: ``slice_start``; slice length, event type, item (a range query
  reads one slice length per run of its decomposition, ``event_type``
  filters, ``item_id`` groups);
- ``sketches``: ``slice_start``; slice length, method, event type.

Tables are created up front (``ensure_tables``), before any write: Beam's
file loads then append to them and never create a table without
partitioning. Writes only ever append; what queries see is de-duplicated by
``topk.query.bigquery`` (batch rows win; otherwise the latest
``emitted_at``), so a rerun or a replay never double counts.
"""
import base64
import dataclasses

import pyarrow as pa

from topk.storage import retention
from topk.storage import layout as output_layout
from topk.core import schema
from topk.connectors.bigquery.client import BigQueryError, Target, errors, run_query
from topk.core.windows import format_time


@dataclasses.dataclass(frozen=True)
class TableSpec:
    name: str
    arrow_schema: pa.Schema
    partition_field: str
    clustering_fields: tuple[str, ...]


TABLES = {
    output_layout.RANKED_WINDOWS: TableSpec(
        output_layout.RANKED_WINDOWS, schema.RANKED_WINDOWS_SCHEMA,
        "window_start", ("window_length", "method", "event_type", "item_id")),
    output_layout.SLICES: TableSpec(
        output_layout.SLICES, schema.SLICES_SCHEMA, "slice_start",
        ("slice_length", "event_type", "item_id")),
    output_layout.SKETCHES: TableSpec(
        output_layout.SKETCHES, schema.SKETCHES_SCHEMA, "slice_start",
        ("slice_length", "method", "event_type")),
}


def bigquery_type(arrow_type: pa.DataType) -> str:
    """The BigQuery (standard SQL) type of an Arrow column type."""
    checks = (
        (pa.types.is_timestamp, "TIMESTAMP"),
        (pa.types.is_boolean, "BOOL"),
        (pa.types.is_integer, "INT64"),
        (pa.types.is_floating, "FLOAT64"),
        (lambda t: pa.types.is_string(t) or pa.types.is_large_string(t),
         "STRING"),
        (lambda t: pa.types.is_binary(t) or pa.types.is_large_binary(t),
         "BYTES"),
        (pa.types.is_date32, "DATE"),
    )
    for check, name in checks:
        if check(arrow_type):
            return name
    raise ValueError(f"no BigQuery type for Arrow type {arrow_type}")


def bigquery_fields(arrow_schema: pa.Schema) -> list[dict]:
    """Arrow schema -> BigQuery ``TableSchema.fields`` (REST JSON): same
    names and order; non-nullable columns are ``REQUIRED``."""
    return [{"name": f.name, "type": bigquery_type(f.type),
             "mode": "NULLABLE" if f.nullable else "REQUIRED"}
            for f in arrow_schema]


def table_resource(spec: TableSpec, target: Target,
                   expiration_ms: int | None = None) -> dict:
    """The REST resource of a table (``tables.insert``): schema, daily
    partitioning on the start column (expiring after ``expiration_ms``, if
    given) and clustering."""
    partitioning = {"type": "DAY", "field": spec.partition_field}
    if expiration_ms is not None:
        partitioning["expirationMs"] = str(expiration_ms)
    return {
        "tableReference": {"projectId": target.project,
                           "datasetId": target.dataset,
                           "tableId": target.table_prefix + spec.name},
        "schema": {"fields": bigquery_fields(spec.arrow_schema)},
        "timePartitioning": partitioning,
        "clustering": {"fields": list(spec.clustering_fields)},
    }


def json_rows(table: pa.Table) -> list[dict]:
    """Rows of an output table for streaming inserts: Python values (Beam
    sends datetimes as ISO 8601), bytes base64-encoded as BigQuery's JSON
    wants them. (File loads write ``table.to_pylist()`` rows to Avro.)"""
    binary = [f.name for f in table.schema if pa.types.is_binary(f.type)
              or pa.types.is_large_binary(f.type)]
    rows = table.to_pylist()
    for row in rows:
        for name in binary:
            if row[name] is not None:
                row[name] = base64.b64encode(row[name]).decode()
    return rows


def ensure_tables(client, target: Target, names, policy=None) -> list[str]:
    """Create the output tables ``names`` that do not exist yet, as
    specified; check the ones that do (same columns, partitioning and
    clustering, else ``BigQueryError``; nullable columns added to the
    contract since an older topk created the table are added to it). With
    a retention ``policy`` (``topk.storage.retention``; applied by ``topk
    retention``) the partition expiration is set to its longest tier, on
    existing tables too. Returns one line per table."""
    from google.cloud import bigquery
    expiration = (retention.partition_expiration_ms(policy)
                  if policy is not None else None)
    lines = []
    for name in names:
        spec = TABLES[name]
        wanted = table_resource(spec, target, expiration)
        table_id = target.table_id(name)
        with errors(target):
            existing = _get_table(client, table_id)
        if existing is None:
            with errors(target):
                client.create_table(bigquery.Table.from_api_repr(wanted),
                                    exists_ok=True)
            lines.append(f"created {table_id}")
            continue
        added = _added_columns(existing, wanted)
        if added:
            existing.schema = [*existing.schema, *(
                bigquery.SchemaField.from_api_repr(f) for f in added)]
            with errors(target):
                existing = client.update_table(existing, ["schema"])
            lines.append(f"added {', '.join(f['name'] for f in added)} "
                         f"to {table_id}")
        _check_table(existing, wanted, table_id)
        if policy is not None and \
                existing.time_partitioning.expiration_ms != expiration:
            existing.time_partitioning.expiration_ms = expiration
            with errors(target):
                client.update_table(existing, ["time_partitioning"])
            lines.append(f"set the partition expiration of {table_id} to "
                         f"{_days(expiration)}")
        lines.append(f"checked {table_id}")
    return lines


def _days(expiration_ms: int | None) -> str:
    return "none" if expiration_ms is None else \
        f"{expiration_ms / schema.DAY_MS:g} days"


#: The REST API reports the legacy spellings of some types.
_LEGACY_TYPES = {"INTEGER": "INT64", "BOOLEAN": "BOOL", "FLOAT": "FLOAT64"}


def _fields(existing) -> list[dict]:
    """An existing table's columns as ``bigquery_fields`` spells them."""
    return [{"name": f.name,
             "type": _LEGACY_TYPES.get(f.field_type, f.field_type),
             "mode": f.mode or "NULLABLE"} for f in existing.schema]


def _added_columns(existing, wanted: dict) -> list[dict]:
    """The contract's columns after the existing table's own, when those
    match the contract's first columns and the rest are nullable: what an
    older topk's table lacks (BigQuery adds nullable columns in place)."""
    got, want = _fields(existing), wanted["schema"]["fields"]
    rest = want[len(got):]
    if got != want[:len(got)] or any(f["mode"] != "NULLABLE" for f in rest):
        return []
    return rest


def _check_table(existing, wanted: dict, table_id: str) -> None:
    got = _fields(existing)
    partitioning = existing.time_partitioning
    problems = []
    if got != wanted["schema"]["fields"]:
        problems.append("columns " + ", ".join(
            f"{f['name']} {f['type']}" for f in got))
    want_field = wanted["timePartitioning"]["field"]
    if partitioning is None or partitioning.field != want_field or \
            partitioning.type_ != "DAY":
        problems.append(f"not partitioned by day on {want_field}")
    if list(existing.clustering_fields or []) != \
            wanted["clustering"]["fields"]:
        problems.append(f"clustered on {existing.clustering_fields}")
    if problems:
        raise BigQueryError(
            f"table {table_id} exists but differs from the output contract "
            f"({'; '.join(problems)}): drop it, or write to another "
            "--bq-dataset / --bq-table-prefix")


def apply_retention(client, target: Target, policy: dict[str, int], now: int,
                    dry_run: bool = False) -> list[str]:
    """Set the output tables' partition expiration to ``policy``'s longest
    tier and delete the rows of shorter tiers that expired before ``now``
    (epoch ms); only existing tables are touched. Returns what was done."""
    present = {}
    for name in TABLES:
        with errors(target):
            if _get_table(client, target.table_id(name)) is not None:
                present[name] = target.table_id(name)
    if dry_run:
        expiration = _days(retention.partition_expiration_ms(policy))
        lines = [f"would set the partition expiration of {table_id} to "
                 f"{expiration}" for table_id in present.values()]
    else:
        lines = ensure_tables(client, target, present, policy)
    for sql, params in retention.bigquery_deletes(policy, present, now):
        shown = f"{sql} -- " + ", ".join(
            f"@{name} = {format_time(value) if kind == 'TIMESTAMP' else value}"
            for name, kind, value in params)
        if dry_run:
            lines.append(f"would run {shown}")
            continue
        run_query(client, target, sql, params, missing=f"table missing: {sql}")
        lines.append(f"ran {shown}")
    return lines


def _get_table(client, table_id: str):
    from google.api_core.exceptions import NotFound
    try:
        return client.get_table(table_id)
    except NotFound:
        return None
