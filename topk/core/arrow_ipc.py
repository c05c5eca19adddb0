"""Arrow tables as bytes: the IPC stream format (no Beam).

An IPC stream is a table's raw column buffers, so a 100k-row batch costs one
memcpy-like pass instead of pickling Python objects. Both the Beam coder
(``topk.transforms.coders``) and the ranked runs' pickling
(``topk.core.ranking.WindowTopKRuns``) go through here, and so does
runner state that holds tables (``dumps``).
"""
import io
import pickle

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


class _Pickler(pickle.Pickler):
    # pyarrow pickles a table by its buffers, and a slice's buffers are its
    # parent's: a 10-row slice of a 1M-row table pickles to 22.9 MB (pyarrow
    # 25), its IPC stream to 584 bytes. IPC writes only the rows a table has.
    def reducer_override(self, obj):
        if isinstance(obj, pa.Table):
            return from_bytes, (to_bytes(obj),)
        return NotImplemented


def dumps(value) -> bytes:
    """``value`` pickled, every ``pa.Table`` in it as an IPC stream of its
    own rows (never a slice's parent buffers)."""
    buffer = io.BytesIO()
    _Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(value)
    return buffer.getvalue()


def loads(data: bytes):
    """The value ``dumps`` wrote."""
    return pickle.loads(data)
