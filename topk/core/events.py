"""Parse and validate events in columnar batches.

Input is either a block of newline-delimited JSON (the wire format: one
object per line; a Kafka message or a file chunk may carry one event or many)
or an Arrow table with typed columns (Parquet input). Output is always a pair
of tables: valid events in ``EVENT_SCHEMA`` and dead letters in
``DEAD_LETTER_SCHEMA`` (the raw record and the first rule it broke). Nothing
is dropped silently: ``len(events) + len(dead) == records in``.

Two vectorised paths with the same rules. Clean blocks go through Arrow's
multi-threaded JSON reader and Arrow compute (or DuckDB's JSON reader in one
statement, ``engine="duckdb"``: faster at reading, but not once every field
is read as JSON to check its type). A block that reader rejects (a syntax error
anywhere fails the whole block; blank lines, which it skips; trailing
commas, which it accepts) goes through one DuckDB statement whose JSON
functions check each line on its own, so one bad line costs its batch a
slower parse but never its neighbours.
"""
import dataclasses
import io
import json
import re

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json

from topk.core import schema
from topk.core.local_duckdb import connection


class ReadFailure(str):
    """A payload that is not data but the reason a source could not read
    its input to the end (e.g. a truncated gzip file): ``dead_letter_of``
    turns it into one dead letter, so the loss is counted and named, never
    silent."""


def dead_letter_of(failure: ReadFailure, source: str) -> pa.Table:
    """The one dead letter (``DEAD_LETTER_SCHEMA``) reporting a failed read."""
    return pa.table({"raw": [""], "reason": [str(failure)],
                     "source": [source]}, schema=schema.DEAD_LETTER_SCHEMA)


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


# The DuckDB engine of the fast path: DuckDB's JSON reader over the whole
# block (about twice the speed of Arrow's when it converts to declared
# types, but no faster than Arrow's once it cannot), every field read as JSON so that types can be
# checked: DuckDB's reader would silently turn a number into a VARCHAR
# column's text, so string fields are JSON values that must start with a
# quote (and are unquoted by position, or by ``->>`` when they hold an
# escape), and ``ts``/``weight`` use the per-line path's expressions. It
# fails the whole block on one bad line (invalid JSON or UTF-8), skips blank
# lines and accepts trailing commas, so such blocks go to the per-line path,
# which has the same rules.
def _json_string(col: str) -> str:
    return (f"CASE WHEN starts_with({col}, '\"') THEN CASE WHEN "
            f"contains({col}, '\\') THEN {col} ->> '$' ELSE "
            f"{col}[2:-2] END END AS {col}, CASE WHEN {col} IS NULL THEN "
            f"'NULL' WHEN starts_with({col}, '\"') THEN 'VARCHAR' ELSE "
            f"'OTHER' END AS t_{col}")


_FAST_COLUMNS = {c: "JSON" for c in ("event_id", "item_id", "event_type",
                                     "ts", "user_id", "weight")}
_FAST_SELECT = ", ".join(
    [_json_string(c) for c in ("event_id", "item_id", "event_type",
                               "user_id")]
    + ["json_type(ts) AS t_ts",
       f"""CASE json_type(ts)
             WHEN 'UBIGINT' THEN TRY_CAST(ts AS BIGINT)
             WHEN 'BIGINT' THEN TRY_CAST(ts AS BIGINT)
             WHEN 'VARCHAR' THEN {rfc3339_ms_sql("(ts ->> '$')")}
           END AS ts""",
       "json_type(weight) AS t_weight",
       """CASE WHEN json_type(weight) IN ('UBIGINT', 'BIGINT')
             THEN TRY_CAST(weight AS BIGINT) END AS weight"""])
_FAST_SQL = f"""
SELECT event_id, item_id, event_type, ts, user_id,
  coalesce(weight, 1) AS weight,
  CASE
    WHEN t_event_id = 'NULL' THEN 'missing event_id'
    WHEN t_event_id <> 'VARCHAR' THEN 'event_id must be a string'
    WHEN t_item_id = 'NULL' THEN 'missing item_id'
    WHEN t_item_id <> 'VARCHAR' THEN 'item_id must be a string'
    WHEN t_event_type = 'NULL' THEN 'missing event_type'
    WHEN t_event_type <> 'VARCHAR' THEN 'event_type must be a string'
    WHEN t_ts IS NULL OR t_ts = 'NULL' THEN 'missing ts'
    WHEN t_ts NOT IN ('UBIGINT', 'BIGINT', 'VARCHAR')
      THEN 'ts must be an RFC 3339 string or integer epoch milliseconds'
    WHEN ts IS NULL
      THEN 'ts is not a valid RFC 3339 time or epoch-ms integer'
    WHEN t_user_id = 'OTHER' THEN 'user_id must be a string'
    WHEN t_weight IS NOT NULL AND t_weight <> 'NULL' AND weight IS NULL
      THEN 'weight must be a positive integer'
  END AS reason
FROM (SELECT {_FAST_SELECT} FROM fast_block)
"""

# The default engine of the fast path: Arrow's
# multi-threaded JSON reader with the field types declared, so that a wrongly
# typed value fails the block instead of being converted (``ts`` as epoch ms,
# else as text: left to inference Arrow turns some non-RFC 3339 strings into
# timestamps).
_FAST_PARSE = [
    pa_json.ParseOptions(
        explicit_schema=pa.schema([
            ("event_id", pa.string()), ("item_id", pa.string()),
            ("event_type", pa.string()), ("user_id", pa.string()),
            ("ts", ts_type), ("weight", pa.int64())]),
        unexpected_field_behavior="infer")
    for ts_type in (pa.int64(), pa.string())]
_FAST_READ = pa_json.ReadOptions(block_size=8 << 20)

_OPEN_BRACE, _NEWLINE, _COMMA = ord("{"), ord("\n"), ord(",")


def _fits_fast_path(body: bytes) -> int | None:
    """The number of lines of ``body`` if a whole-block JSON reader may
    parse it, else ``None``. Both readers skip blank lines and accept
    trailing commas; Arrow's also reads a ``null`` record as a row of nulls
    (and crashes the process, pyarrow 25, when a block starts with one) and
    does not check UTF-8 inside strings. So every line must start with
    ``{``, the block must be UTF-8 and hold no trailing comma (text that
    merely looks like one inside a string sends it to the per-line path
    too). Vectorised: a few passes at memory speed."""
    if not body.startswith(b"{") or body.endswith(b"\n"):
        return None  # the last line would be blank
    raw = np.frombuffer(body, np.uint8)
    newline = np.flatnonzero(raw == _NEWLINE)
    if not (raw[newline + 1] == _OPEN_BRACE).all():
        return None
    # A trailing comma is "," then optional whitespace then "}" or "]":
    # look at the byte before every closing bracket, and only when that is
    # whitespace run the exact (slower) pattern.
    closing = np.flatnonzero((raw == ord("}")) | (raw == ord("]")))
    before = raw[closing[closing > 0] - 1]
    if (before == _COMMA).any():
        return None
    if np.isin(before, _WHITESPACE).any() and _TRAILING_COMMA_BYTES.search(
            body):
        return None
    try:
        pa.array([body], pa.large_binary()).cast(pa.large_string())
    except pa.ArrowInvalid:
        return None
    return len(newline) + 1


_WHITESPACE = np.array([ord(c) for c in " \t\r\n"], np.uint8)


def parse_json_lines(block: bytes | str, source: str | None = None,
                     fast: bool = True, engine: str = "arrow"
                     ) -> ParsedBatch:
    """Parse a newline-delimited JSON block (one event per line).

    ``fast=False`` checks every line on its own (what a block with a bad
    line gets anyway); ``engine`` is the whole-block reader of the fast
    path: ``"arrow"`` (the default: faster here once DuckDB's reader has to
    read every field as JSON to check its type) or ``"duckdb"``. Every choice
    gives the same events and dead letters."""
    if isinstance(block, str):
        block = block.encode()
    body = block[:-1] if block.endswith(b"\n") else block
    n_lines = _fits_fast_path(body) if fast else None
    if n_lines is not None:
        parsed = (_parse_block_duckdb if engine == "duckdb" else
                  _parse_block_arrow)(block, n_lines, source)
        if parsed is not None:
            return parsed
    return parse_lines(split_lines(block), source)


def _parse_block_duckdb(block: bytes, n_lines: int,
                        source: str | None) -> ParsedBatch | None:
    con = connection()
    try:
        fast_block = con.read_json(  # noqa: F841 (the SQL scans it)
            io.BytesIO(block), format="newline_delimited",
            columns=_FAST_COLUMNS)
        typed = con.sql(_FAST_SQL).to_arrow_table()
    except duckdb.Error:
        return None
    if typed.num_rows != n_lines:
        return None  # rows must map 1:1 to lines (raw records of dead letters)
    return _finish(typed, lambda: split_lines(block), source)


def _parse_block_arrow(block: bytes, n_lines: int,
                       source: str | None) -> ParsedBatch | None:
    for options in _FAST_PARSE:
        try:
            table = pa_json.read_json(io.BytesIO(block), _FAST_READ, options)
        except pa.ArrowInvalid:
            continue
        if table.num_rows != n_lines:
            return None  # rows must map 1:1 to lines
        try:
            return validate_table(table, source,
                                  raw=lambda: split_lines(block))
        except ValueError:
            return None  # e.g. a column of the wrong type altogether
    return None


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
