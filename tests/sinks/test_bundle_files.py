"""The unbounded stream's sink: every table's rows buffered in Beam state and
committed together, at most once per commit interval."""
import copy
import json
import pickle

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
from topk.sinks import bundle_files
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


class _State:
    """Stands in for the runner's bag, value and timer state of one key:
    calling ``_CommitBufferFn`` methods directly is how a test can take a
    checkpoint of its state and restore it later."""

    def __init__(self, held=(), meta=None):
        self.held, self.meta = list(held), meta

    def add(self, value):
        self.held.append(value)

    def read(self):
        return list(self.held)

    def clear(self):
        self.held = []

    def write(self, value):
        self.meta = value

    def set(self, _when):
        pass

    def checkpoint(self) -> "_State":
        return _State(self.held, copy.deepcopy(self.meta))


class _Meta:
    def __init__(self, state):
        self.state = state

    def read(self):
        return self.state.meta

    def write(self, value):
        self.state.meta = value


def _send(fn, state, minute):
    fn.process(("tables", (layout.SLICES, slices(
        [(minute, "a", minute + 1)], emitted_at=T0 + minute))),
        rows=state, meta=_Meta(state), flush=state)


def _counts(output):
    return sorted(tables.dataset(output, layout.SLICES).to_table()[
        "count"].to_pylist())


@pytest.mark.parametrize("new_process", [False, True])
def test_a_sink_restored_from_an_older_checkpoint_commits_each_row_once(
        tmp_path, new_process):
    """A checkpoint holds buffered parts; the sink commits them, then the
    job is restored from that checkpoint (a new copy of the sink, in the
    same process as Flink's LOOPBACK workers or a new one): the restored
    parts are not committed again, what comes after is."""
    output = str(tmp_path / "out")
    fn = bundle_files._CommitBufferFn(output, {}, 3600.0, 0)
    pickled = pickle.dumps(fn)  # as the runner ships it to its workers
    fn.setup()
    state = _State()
    _send(fn, state, 0)  # the first part commits at once
    _send(fn, state, 1)
    _send(fn, state, 2)
    checkpoint = state.checkpoint()
    fn.on_flush(rows=state, meta=_Meta(state))
    _send(fn, state, 3)  # buffered when the worker dies: lost with it
    assert _counts(output) == [1, 2, 3]

    if new_process:
        bundle_files._COMMITTED_SEQ.clear()
    restored = pickle.loads(pickled)
    restored.setup()
    _send(restored, checkpoint, 3)  # replayed from the source
    _send(restored, checkpoint, 4)
    restored.on_flush(rows=checkpoint, meta=_Meta(checkpoint))
    assert _counts(output) == [1, 2, 3, 4, 5]
    assert not checkpoint.held
    # What each commit wrote, by the copy that numbered it: the restored
    # commit names only the new copy's parts.
    parts = [json.loads(p) for p in tables.history(output)["parts"]
             .to_pylist()]
    assert [list(p.values()) for p in parts] == [[[1, 1]], [[2, 3]],
                                                 [[1, 2]]], parts
    assert set(parts[0]) == set(parts[1]) != set(parts[2])

