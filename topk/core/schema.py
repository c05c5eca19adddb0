"""The columnar schemas every part of the project agrees on.

Events travel between the source and the first aggregation as Arrow tables of
``EVENT_SCHEMA`` (one Beam element per batch, never per event). The output
tables (ranked windows, exact slices, sketches, dead letters) are the output
contract of docs/output-tables.md and are identical for Parquet and BigQuery.

All instants are epoch milliseconds (UTC) inside the pipeline and
``timestamp[ms, tz=UTC]`` in the written tables.
"""
import pyarrow as pa

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS

#: Events whose time is within this much of the wall clock are live; an
#: input further behind is catching up (a backlog or a replay). The source
#: hands live batches on sooner, the stages space early panes out while
#: catching up. (A live stage sees minutes up to one behind, and producers
#: lag some more.)
LIVE_LAG_MS = 5 * MINUTE_MS

#: ``event_type`` value of rows that rank or count over all event types.
ALL_TYPES = "*"

#: Limits applied by validation; longer ids go to the dead-letter output.
MAX_ID_LENGTH = 256
MAX_EVENT_TYPE_LENGTH = 64
MAX_WEIGHT = 1_000_000
#: Sane event-time range: [2000-01-01, 2100-01-01) UTC.
MIN_TS_MS = 946_684_800_000
MAX_TS_MS = 4_102_444_800_000

TIMESTAMP = pa.timestamp("ms", tz="UTC")

#: A validated batch of events (the columnar wire format inside pipelines).
EVENT_SCHEMA = pa.schema([
    pa.field("event_id", pa.string(), nullable=False),
    pa.field("item_id", pa.string(), nullable=False),
    pa.field("event_type", pa.string(), nullable=False),
    pa.field("ts", pa.int64(), nullable=False),  # event time, epoch ms UTC
    pa.field("user_id", pa.string()),
    pa.field("weight", pa.int64(), nullable=False),
])

#: Exact per-slice partial counts, the mergeable unit every window is built
#: from. ``slice_start`` is epoch ms, aligned to the slice length.
SLICE_COUNTS_SCHEMA = pa.schema([
    pa.field("event_type", pa.string(), nullable=False),
    pa.field("slice_start", pa.int64(), nullable=False),
    pa.field("item_id", pa.string(), nullable=False),
    pa.field("count", pa.int64(), nullable=False),
])

#: Invalid input records, with the raw record and why it was rejected.
DEAD_LETTER_SCHEMA = pa.schema([
    pa.field("raw", pa.string(), nullable=False),
    pa.field("reason", pa.string(), nullable=False),
    pa.field("source", pa.string()),  # file, or topic/partition/offset
])

#: Output table ``ranked_windows``.
RANKED_WINDOWS_SCHEMA = pa.schema([
    pa.field("window_start", TIMESTAMP, nullable=False),
    pa.field("window_end", TIMESTAMP, nullable=False),
    pa.field("window_length", pa.string(), nullable=False),  # e.g. "1h"
    pa.field("slide", pa.string()),  # e.g. "1m"; null when tumbling
    pa.field("method", pa.string(), nullable=False),  # exact|cms|frequent_items
    pa.field("event_type", pa.string(), nullable=False),  # ALL_TYPES = all
    pa.field("rank", pa.int32(), nullable=False),  # 1-based
    pa.field("item_id", pa.string(), nullable=False),
    pa.field("count", pa.int64(), nullable=False),
    pa.field("lower_bound", pa.int64(), nullable=False),
    pa.field("upper_bound", pa.int64(), nullable=False),
    # Whether the item is provably in the window's true top-K (count desc,
    # item_id asc): always for exact rows; for a sketch's rows, when its
    # lower bound exceeds the K-th largest upper bound among all other
    # items (then it is in the top-K under any tie rule).
    pa.field("guaranteed", pa.bool_(), nullable=False),
    pa.field("window_total", pa.int64(), nullable=False),
    pa.field("pane_timing", pa.string(), nullable=False),  # early|on_time|late|batch
    pa.field("pane_index", pa.int32(), nullable=False),
    pa.field("source", pa.string(), nullable=False),  # stream|batch
    pa.field("emitted_at", TIMESTAMP, nullable=False),
    # A stream pane's freshness: the event time its input had reached (the
    # stage's watermark) when it was emitted. Every event stamped before it
    # is counted, except those that arrive later still (late panes), so
    # ``emitted_at - input_watermark`` is how far the pane is behind its
    # input. Null for batch rows (complete by construction) and for panes
    # emitted before the stream's first watermark.
    pa.field("input_watermark", TIMESTAMP),
])

#: Output table ``slices`` (exact): 1m slices rolled up to 1h and 1d.
SLICES_SCHEMA = pa.schema([
    pa.field("slice_start", TIMESTAMP, nullable=False),
    pa.field("slice_length", pa.string(), nullable=False),  # 1m|1h|1d
    pa.field("event_type", pa.string(), nullable=False),
    pa.field("item_id", pa.string(), nullable=False),
    pa.field("count", pa.int64(), nullable=False),
    pa.field("source", pa.string(), nullable=False),  # stream|batch
    pa.field("emitted_at", TIMESTAMP, nullable=False),
])

#: Output table ``sketches`` (approximate): one mergeable sketch per
#: (method, event type, slice), 1m slices rolled up to 1h and 1d. Rows with
#: ``event_type = ALL_TYPES`` hold the sketch over all types, so an
#: all-types range query merges them directly. ``sketch`` is the method's
#: own versioned serialization (``topk.approx.sketches.sketch_from_bytes``);
#: ``total`` is exact (every count added), ``nbytes`` the length of
#: ``sketch``, never above ``budget_bytes``.
SKETCHES_SCHEMA = pa.schema([
    pa.field("slice_start", TIMESTAMP, nullable=False),
    pa.field("slice_length", pa.string(), nullable=False),  # 1m|1h|1d
    pa.field("method", pa.string(), nullable=False),  # cms|frequent_items
    pa.field("event_type", pa.string(), nullable=False),  # ALL_TYPES = all
    pa.field("sketch", pa.binary(), nullable=False),
    pa.field("total", pa.int64(), nullable=False),
    pa.field("nbytes", pa.int32(), nullable=False),
    pa.field("budget_bytes", pa.int32(), nullable=False),
    pa.field("source", pa.string(), nullable=False),  # stream|batch
    pa.field("emitted_at", TIMESTAMP, nullable=False),
])


def empty_table(schema: pa.Schema) -> pa.Table:
    return schema.empty_table()
