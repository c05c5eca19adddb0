"""Coalesce the Arrow tables of a bundle into one before keyed stages.

The Kafka source cuts its batches at ``allowed_skew_ms`` of record time (so
the watermark passes a whole batch at once): on sparse event time, a
catch-up over old data, that is a few dozen events a batch. Every element
that reaches a stateful stage costs state reads and writes through the
runner (gRPC round trips on a portable runner), whatever its size, so a
bundle of thousands of small tables cost thousands of round trips per
stage. Concatenated per bundle, they cost one.
"""
import apache_beam as beam
import pyarrow as pa
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue


class _CoalesceFn(beam.DoFn):

    def __init__(self, max_rows: int):
        self._max_rows = max_rows
        self._tables, self._rows, self._first = [], 0, None

    def start_bundle(self):
        self._tables, self._rows, self._first = [], 0, None

    def process(self, table: pa.Table, timestamp=beam.DoFn.TimestampParam):
        if not table.num_rows:
            return
        self._tables.append(table)
        self._rows += table.num_rows
        # The earliest timestamp: downstream stages read an element's
        # timestamp as how far the input had got when it was read (the
        # lateness horizon), so the merged table must not claim more than
        # its oldest part could.
        if self._first is None or timestamp < self._first:
            self._first = timestamp
        if self._rows >= self._max_rows:
            yield from self._flush()

    def finish_bundle(self):
        yield from self._flush()

    def _flush(self):
        if self._tables:
            merged = pa.concat_tables(self._tables)
            yield WindowedValue(merged, self._first, (GlobalWindow(),))
        self._tables, self._rows, self._first = [], 0, None


class CoalesceTables(beam.PTransform):
    """``pa.Table`` elements (global window) -> the tables of each bundle
    concatenated (at most about ``max_rows`` rows each), stamped with the
    earliest timestamp of their parts. Same schema in, same out."""

    def __init__(self, max_rows: int = 1_000_000):
        super().__init__()
        self._max_rows = max_rows

    def expand(self, tables):
        return tables | "Concat" >> beam.ParDo(
            _CoalesceFn(self._max_rows)).with_output_types(pa.Table)
