"""Tables as IPC bytes, plain and LZ4 (``topk.core.arrow_ipc``)."""
import copyreg
import pickle

import numpy as np
import pyarrow as pa

from topk.core import arrow_ipc


def test_a_table_round_trips_plain_and_compressed():
    table = pa.table({"item_id": [f"item-{i % 50}" for i in range(20_000)],
                      "count": pa.array(np.arange(20_000) % 7)})
    plain = arrow_ipc.to_bytes(table)
    packed = arrow_ipc.to_bytes(table, arrow_ipc.LZ4)
    assert arrow_ipc.from_bytes(plain).equals(table)
    assert arrow_ipc.from_bytes(packed).equals(table)
    assert len(packed) < len(plain) / 3


def test_spilled_tables_come_back_whole_each_from_its_own_file(tmp_path):
    tables = [pa.table({"event_id": [f"e{i}-{n}" for n in range(i)],
                        "ts": pa.array(range(i), pa.int64())})
              for i in (0, 3, 1000)]
    paths = [arrow_ipc.spill(str(tmp_path / "run"), t) for t in tables]
    assert len(set(paths)) == 3
    assert all(p.startswith(str(tmp_path / "run") + "/") for p in paths)
    for path, table in zip(paths, tables):
        assert arrow_ipc.read_spilled(path).equals(table)


def test_an_empty_table_keeps_its_schema():
    schema = pa.schema([("a", pa.int64()), ("b", pa.string())])
    back = arrow_ipc.from_bytes(arrow_ipc.to_bytes(schema.empty_table()))
    assert back.schema == schema and back.num_rows == 0


def test_a_pickled_slice_carries_its_rows_not_its_parent():
    parent = pa.table({"item_id": [f"item-{i}" for i in range(200_000)],
                       "count": pa.array(np.arange(200_000))})
    part = parent.slice(1_000, 10).replace_schema_metadata({"k": "v"})
    value = {"chunks": [("level", 60_000, part)], "n": np.arange(3)}
    # pyarrow's own pickling writes the parent's buffers: megabytes.
    copyreg.dispatch_table.pop(pa.Table, None)
    assert len(pickle.dumps(value)) > parent.nbytes / 2
    arrow_ipc.pickle_as_ipc()
    data = pickle.dumps(value)
    back = pickle.loads(data)
    assert back["chunks"][0][2].equals(part)
    assert back["chunks"][0][2].schema.metadata == {b"k": b"v"}
    assert back["n"].tolist() == [0, 1, 2]
    # The parent's buffers are megabytes; ten rows are well under 10 kB.
    assert len(data) < 10_000 < parent.nbytes


def ranked_like(rows: int) -> pa.Table:
    """Rows that repeat the same few strings, as ranked panes do."""
    return pa.table({"window_length": ["1h"] * rows,
                     "pane_timing": ["on_time"] * rows,
                     "item_id": [f"item-{i % 997:07d}" for i in range(rows)],
                     "count": pa.array(np.arange(rows))})


def test_large_tables_cross_compressed_small_ones_plain():
    """What a runner copies (coder bytes, pickles) is LZ4 from
    ``COMPRESS_BYTES`` on, plain below; both decode to the table."""
    arrow_ipc.pickle_as_ipc()
    large, small = ranked_like(20_000), ranked_like(10)
    assert large.nbytes >= arrow_ipc.COMPRESS_BYTES > small.nbytes
    for table in (large, small, small.schema.empty_table()):
        data = arrow_ipc.compact_bytes(table)
        assert arrow_ipc.from_bytes(data).equals(table)
        assert pickle.loads(pickle.dumps(table)).equals(table)
    plain = arrow_ipc.to_bytes(large)
    assert len(arrow_ipc.compact_bytes(large)) * 2 < len(plain)
    assert len(pickle.dumps(large)) * 2 < len(plain)
    assert arrow_ipc.compact_bytes(small) == arrow_ipc.to_bytes(small)
