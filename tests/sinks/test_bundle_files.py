"""The unbounded stream's sink: every table's rows buffered in Beam state and
committed together, at most once per commit interval."""
import json

import apache_beam as beam
import pyarrow as pa
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_stream import TestStream
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Timestamp

from tests.sinks.test_parquet import T0, dead, slices
from tests.transforms.test_stream_topk import prism_or_skip
from topk.pipelines.stream import use_prism_safely
from topk.sinks.bundle_files import WriteTablesBuffered
from topk.storage import layout, tables
from topk.transforms.coders import ArrowTableCoder


def _stream(batches):
    stream = TestStream(coder=ArrowTableCoder())
    for i, batch in enumerate(batches):
        stream = stream.add_elements([TimestampedValue(
            batch, Timestamp(micros=(T0 + i) * 1000))])
    return stream.advance_watermark_to_infinity()


def _write(output, slice_batches, dead_batches, interval_s,
           maintain_every=0):
    """An unbounded pipeline on Prism (its processing-time timers fire at
    the end of a TestStream: the tail commit)."""
    options = use_prism_safely(PipelineOptions(
        ["--runner=PrismRunner", f"--prism_location={prism_or_skip()}"],
        streaming=True))
    with beam.Pipeline(options=options) as p:
        # Prism takes one TestStream per pipeline: one stream of both.
        both = p | _stream(slice_batches + dead_batches)
        (
            {layout.SLICES: both | "Slices" >> beam.Filter(
                lambda t: "raw" not in t.column_names),
             layout.DEAD_LETTERS: both | "Dead" >> beam.Filter(
                lambda t: "raw" in t.column_names)}
            | WriteTablesBuffered(output, input_ids={
                layout.DEAD_LETTERS: "input-1"}, commit_interval_s=interval_s,
                maintain_every=maintain_every))


def test_every_row_of_every_table_is_committed_in_few_commits(tmp_path):
    output = str(tmp_path / "out")
    batches = [slices([(m, f"item{m % 3}", m + 1)], emitted_at=T0 + m)
               for m in range(40)]
    _write(output, batches, [dead(["x", "y"]), dead(["z"])], 3600.0)
    got = tables.dataset(output, layout.SLICES).to_table()
    assert sorted(got["count"].to_pylist()) == list(range(1, 41))
    letters = tables.dataset(output, layout.DEAD_LETTERS).to_table()
    assert sorted(letters["raw"].to_pylist()) == ["x", "y", "z"]
    assert set(letters["input_id"].to_pylist()) == {"input-1"}
    # The first element commits at once (no commit yet), the rest wait for
    # the interval or the timer: far fewer commits than the 42 batches.
    history = tables.history(output)
    assert 1 <= history.num_rows <= 3
    wrote = [t for row in history["wrote"].to_pylist()
             for t in json.loads(row)]
    assert set(wrote) == {layout.SLICES, layout.DEAD_LETTERS}


def test_a_zero_interval_commits_whenever_rows_arrive(tmp_path):
    output = str(tmp_path / "out")
    batches = [slices([(m, "a", 1)], emitted_at=T0 + m) for m in range(5)]
    _write(output, batches, [pa.table({"raw": [], "reason": [], "source": []},
                                      schema=dead([]).schema)], 0.0)
    got = tables.dataset(output, layout.SLICES).to_table()
    assert got.num_rows == 5
    assert tables.dataset(output, layout.DEAD_LETTERS) is None


def test_a_negative_interval_is_refused(tmp_path):
    with pytest.raises(ValueError, match="commit interval"):
        WriteTablesBuffered(str(tmp_path / "out"), commit_interval_s=-1)


def test_the_sink_compacts_the_tables_every_few_commits(tmp_path):
    """A commit per element, compaction every 4: the slices end up in a
    few files instead of one per commit, every row still there once, and
    the manifest shows the maintenance commits."""
    output = str(tmp_path / "out")
    batches = [slices([(m, f"item{m % 3}", m + 1)], emitted_at=T0 + m)
               for m in range(12)]
    _write(output, batches, [pa.table({"raw": [], "reason": [], "source": []},
                                      schema=dead([]).schema)], 0.0,
           maintain_every=4)
    got = tables.dataset(output, layout.SLICES)
    assert sorted(got.to_table()["count"].to_pylist()) == list(range(1, 13))
    sources = tables.history(output)["source"].to_pylist()
    assert sources.count("maintenance") == 3, sources
    assert len(got.files) < 12 / 2, got.files


def test_a_negative_maintenance_period_is_refused(tmp_path):
    with pytest.raises(ValueError, match="maintain_every"):
        WriteTablesBuffered(str(tmp_path / "out"), maintain_every=-1)
