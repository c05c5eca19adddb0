"""The Arrow table coder: what crosses between steps and into state."""
import pyarrow as pa

from topk.core import arrow_ipc
from topk.transforms.coders import COMPRESS_BYTES, ArrowTableCoder


def ranked_like(rows: int) -> pa.Table:
    """Rows that repeat the same few strings, as ranked panes do."""
    return pa.table({"window_length": ["1h"] * rows,
                     "pane_timing": ["on_time"] * rows,
                     "item_id": [f"item-{i % 997:07d}" for i in range(rows)],
                     "count": list(range(rows))})


def test_large_tables_cross_compressed_and_decode_equal():
    coder = ArrowTableCoder()
    table = ranked_like(20_000)
    assert table.nbytes >= COMPRESS_BYTES
    encoded = coder.encode(table)
    assert len(encoded) * 2 < len(arrow_ipc.to_bytes(table))
    assert coder.decode(encoded).equals(table)


def test_small_tables_cross_as_plain_ipc():
    coder = ArrowTableCoder()
    table = ranked_like(10)
    assert coder.encode(table) == arrow_ipc.to_bytes(table)
    assert coder.decode(coder.encode(table)).equals(table)
    empty = table.schema.empty_table()
    assert coder.decode(coder.encode(empty)).equals(empty)
