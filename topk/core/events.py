"""Parse and validate events in columnar batches.

Input is either a block of newline-delimited JSON (the wire format: one
object per line; a Kafka message or a file chunk may carry one event or many)
or an Arrow table with typed columns (Parquet input). Output is always a pair
of tables: valid events in ``EVENT_SCHEMA`` and dead letters in
``DEAD_LETTER_SCHEMA`` (the raw record and the first rule it broke). Nothing
is dropped silently: ``len(events) + len(dead) == records in``.

Two vectorised paths with the same rules. Clean blocks go through Arrow's
multi-threaded JSON reader and Arrow compute. A block that reader rejects (a
syntax error anywhere fails the whole block; ``ts`` as a number in one line
and a string in the next; blank lines, which it skips) goes through one
DuckDB statement whose JSON functions check each line on its own, so one bad
line costs its batch a slower parse but never its neighbours.
"""
import dataclasses
import io
import json
import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json

from topk.core import schema
from topk.core.local_duckdb import connection


@dataclasses.dataclass
class ParsedBatch:
    events: pa.Table  # EVENT_SCHEMA
    dead_letters: pa.Table  # DEAD_LETTER_SCHEMA


def split_lines(block: bytes | str) -> pa.Array:
    """A newline-delimited block -> one string per record.

    A single trailing newline ends the last record; every other line,
    blank ones included, is a record (a blank record becomes a dead letter).
    """
    if isinstance(block, str):
        block = block.encode()
    if not block:
        return pa.array([], pa.large_string())
    if block.endswith(b"\n"):
        block = block[:-1]
    whole = pa.array([block], pa.large_binary())
    lines = pc.split_pattern(whole, b"\n").flatten()
    try:
        return lines.cast(pa.large_string())
    except pa.ArrowInvalid:
        return _replace_invalid_utf8(lines)


def _replace_invalid_utf8(lines: pa.Array) -> pa.Array:
    # Rare: only blocks that contain broken UTF-8 get here. Such lines keep
    # their content (with U+FFFD) so the dead letter shows what arrived, and a
    # marker makes validation reject them.
    out = []
    for raw in lines.to_pylist():
        try:
            out.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            out.append(_BAD_UTF8 + raw.decode("utf-8", "replace"))
    return pa.array(out, pa.large_string())


_BAD_UTF8 = "\x00bad-utf8\x00"

# RFC 3339 section 5.6 date-time ("T" and "Z" may be lower case), checked by
# pattern first because DuckDB's TIMESTAMPTZ cast is far more lenient (dates
# without a time, offsets without a colon, zone names, padding). Fractions
# finer than a millisecond are cut, not rounded: an instant belongs to the
# millisecond, hence the minute, it starts in.
_RFC3339 = (r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt]([01][0-9]|2[0-3]):[0-5][0-9]:"
            r"[0-5][0-9](\.[0-9]+)?([Zz]|[+-]([01][0-9]|2[0-3]):[0-5][0-9])")


# DuckDB's and Arrow's JSON parsers both accept a comma before a closing
# bracket; JSON (RFC 8259) does not. Checked outside string values.
_TRAILING_COMMA = r",[ \t\r\n]*[]}]"
_JSON_STRING = r'"([^"\\]|\\.)*"'
_TRAILING_COMMA_BYTES = re.compile(_TRAILING_COMMA.encode())


def rfc3339_ms_sql(expr: str) -> str:
    """DuckDB expression: epoch ms of the RFC 3339 text ``expr``, or NULL."""
    return (f"CASE WHEN regexp_full_match({expr}, '{_RFC3339}') THEN "
            f"epoch_ms(TRY_CAST(upper(regexp_replace({expr}, "
            r"'(\.[0-9]{3})[0-9]+', '\1')) AS TIMESTAMPTZ)) END")


# Per-line checks: each line becomes six JSON values (``j_<field>``, one
# json_extract parse per line) plus ``ok`` (valid JSON) and ``root`` (its
# JSON type). Order matters: a record gets the reason of the first rule it
# breaks.
_PER_LINE_SOURCE = """
  SELECT line, ok, CASE WHEN ok THEN json_type(line) END AS root,
    f[1] AS j_event_id, f[2] AS j_item_id, f[3] AS j_event_type,
    f[4] AS j_ts, f[5] AS j_user_id, f[6] AS j_weight
  FROM (
    SELECT line, json_valid(line) AS ok,
      CASE WHEN json_valid(line) THEN json_extract(line,
        ['$.event_id', '$.item_id', '$.event_type', '$.ts', '$.user_id',
         '$.weight']) END AS f
    FROM line_table)
"""
_VALIDATE_SQL = f"""
WITH src AS ({{source}}), typed AS (
  SELECT line, ok, root,
    json_type(j_event_id) AS t_id, j_event_id ->> '$' AS event_id,
    json_type(j_item_id) AS t_item, j_item_id ->> '$' AS item_id,
    json_type(j_event_type) AS t_type, j_event_type ->> '$' AS event_type,
    json_type(j_ts) AS t_ts,
    CASE json_type(j_ts)
      WHEN 'UBIGINT' THEN TRY_CAST(j_ts AS BIGINT)
      WHEN 'BIGINT' THEN TRY_CAST(j_ts AS BIGINT)
      WHEN 'VARCHAR' THEN {rfc3339_ms_sql("(j_ts ->> '$')")}
    END AS ts,
    json_type(j_user_id) AS t_user, j_user_id ->> '$' AS user_id,
    json_type(j_weight) AS t_weight,
    CASE WHEN json_type(j_weight) IN ('UBIGINT', 'BIGINT')
      THEN TRY_CAST(j_weight AS BIGINT) END AS weight
  FROM src
)
SELECT line, event_id, item_id, event_type, ts, user_id,
  coalesce(weight, 1) AS weight,
  CASE
    WHEN starts_with(line, '{_BAD_UTF8}') THEN 'invalid UTF-8'
    WHEN trim(line) = '' THEN 'empty record'
    WHEN NOT ok THEN 'invalid JSON'
    WHEN regexp_matches(line, '{_TRAILING_COMMA}') AND regexp_matches(
      regexp_replace(line, '{_JSON_STRING}', '""', 'g'), '{_TRAILING_COMMA}')
      THEN 'invalid JSON'
    WHEN root <> 'OBJECT' THEN 'not a JSON object'
    WHEN t_id IS NULL OR t_id = 'NULL' THEN 'missing event_id'
    WHEN t_id <> 'VARCHAR' THEN 'event_id must be a string'
    WHEN t_item IS NULL OR t_item = 'NULL' THEN 'missing item_id'
    WHEN t_item <> 'VARCHAR' THEN 'item_id must be a string'
    WHEN t_type IS NULL OR t_type = 'NULL' THEN 'missing event_type'
    WHEN t_type <> 'VARCHAR' THEN 'event_type must be a string'
    WHEN t_ts IS NULL OR t_ts = 'NULL' THEN 'missing ts'
    WHEN t_ts NOT IN ('UBIGINT', 'BIGINT', 'VARCHAR')
      THEN 'ts must be an RFC 3339 string or integer epoch milliseconds'
    WHEN ts IS NULL
      THEN 'ts is not a valid RFC 3339 time or epoch-ms integer'
    WHEN t_user IS NOT NULL AND t_user NOT IN ('VARCHAR', 'NULL')
      THEN 'user_id must be a string'
    WHEN t_weight IS NOT NULL AND t_weight <> 'NULL' AND weight IS NULL
      THEN 'weight must be a positive integer'
  END AS reason
FROM typed
"""


# The fast path: Arrow's multi-threaded JSON reader with the field types
# declared, so that a wrongly typed value fails the block instead of being
# converted (``ts`` as epoch ms, else as text: left to inference Arrow turns
# some non-RFC 3339 strings into timestamps). It fails the whole block on one
# bad line and skips blank lines, so such a block goes to the per-line path,
# which has the same rules. (DuckDB's reader is faster but converts numbers
# into string columns silently; with JSON-typed columns plus checks it is
# slower than this.)
_FAST_PARSE = [
    pa_json.ParseOptions(
        explicit_schema=pa.schema([
            ("event_id", pa.string()), ("item_id", pa.string()),
            ("event_type", pa.string()), ("user_id", pa.string()),
            ("ts", ts_type), ("weight", pa.int64())]),
        unexpected_field_behavior="infer")
    for ts_type in (pa.int64(), pa.string())]
_FAST_READ = pa_json.ReadOptions(block_size=8 << 20)


def _fits_fast_path(body: bytes, newlines: int) -> bool:
    """Whether Arrow's reader may parse the block: it skips blank lines,
    reads a ``null`` record as a row of nulls and crashes the process
    (pyarrow 25) when a block starts with one, accepts trailing commas, and
    does not check UTF-8 inside strings. Blocks with any of that (or merely
    text that looks like a trailing comma inside a string) take the per-line
    path. All checks run at memory speed."""
    if not (body.startswith(b"{") and body.count(b"\n{") == newlines):
        return False
    if _TRAILING_COMMA_BYTES.search(body):
        return False
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def parse_json_lines(block: bytes | str, source: str | None = None,
                     fast: bool = True) -> ParsedBatch:
    """Parse a newline-delimited JSON block (one event per line)."""
    if isinstance(block, str):
        block = block.encode()
    body = block[:-1] if block.endswith(b"\n") else block
    newlines = body.count(b"\n")
    if fast and _fits_fast_path(body, newlines):
        n_lines = newlines + 1
        for options in _FAST_PARSE:
            try:
                table = pa_json.read_json(io.BytesIO(block), _FAST_READ,
                                          options)
            except pa.ArrowInvalid:
                continue
            if table.num_rows != n_lines:
                break  # rows must map 1:1 to lines (raw records of dead letters)
            try:
                return validate_table(table, source,
                                      raw=lambda: split_lines(block))
            except ValueError:
                break  # e.g. a column of the wrong type altogether
    return parse_lines(split_lines(block), source)


def parse_lines(lines: pa.Array, source: str | None = None) -> ParsedBatch:
    """Parse one JSON record per string, checking every line on its own."""
    line_table = pa.table({"line": lines})  # noqa: F841 (DuckDB scans it)
    out = connection().sql(_VALIDATE_SQL.replace("{source}", _PER_LINE_SOURCE)
                           ).to_arrow_table()
    return _finish(out, out.column("line"), source)


def validate_table(table: pa.Table | pa.RecordBatch,
                   source: str | None = None, raw=None) -> ParsedBatch:
    """Validate typed columns (e.g. read from Parquet).

    ``ts`` may be int64 epoch ms, an Arrow timestamp or an RFC 3339 string;
    a missing optional column (``user_id``, ``weight``) is allowed. ``raw``,
    if given, is a callable returning the original record of every row (for
    dead letters); otherwise a rejected row is shown as JSON of its columns.
    Raises ``ValueError`` when a column has the wrong type altogether.
    """
    if isinstance(table, pa.RecordBatch):
        table = pa.Table.from_batches([table])
    n = table.num_rows
    missing = [c for c in ("event_id", "item_id", "event_type", "ts")
               if c not in table.column_names]
    if missing:
        raise ValueError(f"input {source or ''} lacks required column(s) "
                         f"{', '.join(missing)}")
    cols = {}
    for name in ("event_id", "item_id", "event_type", "user_id"):
        col = table.column(name) if name in table.column_names else (
            pa.nulls(n, pa.string()))
        if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)
                or pa.types.is_null(col.type)):
            raise ValueError(f"input {source or ''}: column {name} must be a "
                             f"string column, not {col.type}")
        cols[name] = col.cast(pa.string())
    raw_ts = table.column("ts")
    if pa.types.is_timestamp(raw_ts.type):
        ts = raw_ts.cast(pa.timestamp("ms", tz="UTC")).cast(pa.int64())
    elif pa.types.is_integer(raw_ts.type):
        ts = raw_ts.cast(pa.int64())
    elif pa.types.is_string(raw_ts.type) or pa.types.is_large_string(
            raw_ts.type):
        ts = _parse_ts_strings(raw_ts)
    else:
        raise ValueError(f"input {source or ''}: column ts must be integer "
                         f"epoch ms, timestamp or string, not {raw_ts.type}")
    cols["ts"] = ts
    if "weight" in table.column_names:
        w = table.column("weight")
        if not pa.types.is_integer(w.type):
            raise ValueError(f"input {source or ''}: column weight must be "
                             f"an integer column, not {w.type}")
        cols["weight"] = pc.fill_null(w.cast(pa.int64()), 1)
    else:
        cols["weight"] = pa.array(np.ones(n, np.int64))
    typed = pa.table({k: cols[k] for k in
                      ("event_id", "item_id", "event_type", "ts", "user_id",
                       "weight")})
    reasons = pc.case_when(
        pc.make_struct(pc.is_null(typed["event_id"]),
                       pc.is_null(typed["item_id"]),
                       pc.is_null(typed["event_type"]),
                       pc.is_null(raw_ts),
                       pc.is_null(typed["ts"])),
        "missing event_id", "missing item_id", "missing event_type",
        "missing ts", "ts is not a valid RFC 3339 time or epoch-ms integer")
    typed = typed.append_column("reason", reasons)
    return _finish(typed, raw, source)


def _parse_ts_strings(ts: pa.ChunkedArray) -> pa.Array:
    tab = pa.table({"s": ts})  # noqa: F841 (DuckDB scans it)
    return connection().sql(
        f"SELECT {rfc3339_ms_sql('s')} AS t FROM tab"
    ).to_arrow_table().column("t")


def _value_rule_reasons(t: pa.Table) -> pa.Array:
    """Rules on values, shared by the JSON and the typed path."""
    def too_long(col, limit):
        return pc.fill_null(pc.greater(pc.utf8_length(col), limit), False)

    def empty(col):
        return pc.fill_null(pc.equal(pc.utf8_length(col), 0), False)

    ts = t["ts"]
    w = t["weight"]
    conds = [
        (empty(t["event_id"]), "event_id is empty"),
        (too_long(t["event_id"], schema.MAX_ID_LENGTH),
         f"event_id longer than {schema.MAX_ID_LENGTH} characters"),
        (empty(t["item_id"]), "item_id is empty"),
        (too_long(t["item_id"], schema.MAX_ID_LENGTH),
         f"item_id longer than {schema.MAX_ID_LENGTH} characters"),
        (empty(t["event_type"]), "event_type is empty"),
        (too_long(t["event_type"], schema.MAX_EVENT_TYPE_LENGTH),
         f"event_type longer than {schema.MAX_EVENT_TYPE_LENGTH} characters"),
        (pc.fill_null(pc.equal(t["event_type"], schema.ALL_TYPES), False),
         f"event_type {schema.ALL_TYPES!r} is reserved"),
        (too_long(t["user_id"], schema.MAX_ID_LENGTH),
         f"user_id longer than {schema.MAX_ID_LENGTH} characters"),
        (pc.fill_null(pc.or_(pc.less(ts, schema.MIN_TS_MS),
                             pc.greater_equal(ts, schema.MAX_TS_MS)), False),
         "ts out of range [2000-01-01, 2100-01-01)"),
        (pc.fill_null(pc.or_(pc.less(w, 1),
                             pc.greater(w, schema.MAX_WEIGHT)), False),
         f"weight must be a positive integer <= {schema.MAX_WEIGHT}"),
    ]
    return pc.case_when(pc.make_struct(*[c for c, _ in conds]),
                        *[r for _, r in conds])


def _finish(typed: pa.Table, raw,
            source: str | None) -> ParsedBatch:
    reason = typed["reason"]
    value_reason = _value_rule_reasons(typed)
    reason = pc.coalesce(reason, value_reason)
    bad = pc.is_valid(reason)
    good = pc.invert(bad)
    events = pa.table({
        "event_id": typed["event_id"],
        "item_id": typed["item_id"],
        "event_type": typed["event_type"],
        "ts": typed["ts"],
        "user_id": typed["user_id"],
        "weight": typed["weight"],
    }).filter(good)
    events = events.cast(schema.EVENT_SCHEMA)
    n_bad = pc.sum(bad.cast(pa.int64())).as_py() or 0
    if n_bad == 0:
        dead = schema.DEAD_LETTER_SCHEMA.empty_table()
    else:
        if raw is None:
            raw = pa.array([_row_json(r) for r in typed.filter(bad).drop(
                ["reason"]).to_pylist()], pa.string())
        else:
            if callable(raw):
                raw = raw()
            raw = pc.replace_substring(raw.filter(bad), _BAD_UTF8, "")
        dead = pa.table({
            "raw": raw.cast(pa.string()),
            "reason": reason.filter(bad).cast(pa.string()),
            "source": pa.array([source] * n_bad, pa.string()),
        }, schema=schema.DEAD_LETTER_SCHEMA)
    return ParsedBatch(events.combine_chunks(), dead)


def _row_json(row: dict) -> str:
    return json.dumps(row, default=str, sort_keys=True)
