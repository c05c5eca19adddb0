"""Arrow tables as bytes: the IPC stream format (no Beam).

An IPC stream is a table's raw column buffers, so a 100k-row batch costs one
memcpy-like pass instead of pickling Python objects. Both the Beam coder
(``topk.transforms.coders``) and the ranked runs' pickling
(``topk.core.ranking.WindowTopKRuns``) go through here.
"""
import pyarrow as pa

#: LZ4 frames for tables a runner holds whole (a shuffle's pickled runs).
LZ4 = pa.ipc.IpcWriteOptions(compression="lz4")


def to_bytes(table: pa.Table, options: pa.ipc.IpcWriteOptions | None = None
             ) -> bytes:
    """``table`` as one IPC stream (``options``: e.g. ``LZ4``)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema, options=options) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def from_bytes(data: bytes) -> pa.Table:
    """The table of an IPC stream, compressed or not."""
    return pa.ipc.open_stream(data).read_all()
