"""Arrow tables as bytes: the IPC stream format (no Beam).

An IPC stream is a table's raw column buffers, so a 100k-row batch costs one
memcpy-like pass instead of pickling Python objects. Both the Beam coder
(``topk.transforms.coders``) and the ranked runs' pickling
(``topk.core.ranking.WindowTopKRuns``) go through here, and so does
every pickled table once ``pickle_as_ipc`` ran, and so do the spill files
that carry a bounded run's raw events past a shuffle (``spill``).
"""
import copyreg
import os
import uuid

import pyarrow as pa
import pyarrow.fs as pafs

#: LZ4 frames for tables a runner holds whole (a shuffle's pickled runs).
LZ4 = pa.ipc.IpcWriteOptions(compression="lz4")

#: Tables of at least this many bytes cross a runner LZ4-compressed
#: (``compact_bytes``).
COMPRESS_BYTES = 1 << 16


def to_bytes(table: pa.Table, options: pa.ipc.IpcWriteOptions | None = None
             ) -> bytes:
    """``table`` as one IPC stream (``options``: e.g. ``LZ4``)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema, options=options) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def compact_bytes(table: pa.Table) -> bytes:
    """``to_bytes``, LZ4-compressed from ``COMPRESS_BYTES``: what a table
    crossing a runner is encoded as (coder, pickle)."""
    # A portable runner copies every element and every state write through
    # gRPC: ranked panes (the same few strings on every row) shrink about
    # 4x, and compressing costs less than the copies it saves.
    return to_bytes(table, LZ4 if table.nbytes >= COMPRESS_BYTES else None)


def from_bytes(data: bytes) -> pa.Table:
    """The table of an IPC stream, compressed or not."""
    return pa.ipc.open_stream(data).read_all()



def _reduce(table: pa.Table):
    return from_bytes, (compact_bytes(table),)


def pickle_as_ipc() -> None:
    """Make ``pickle`` write every ``pa.Table`` as the IPC stream of its own
    rows (``compact_bytes``). pyarrow pickles a table by its buffers, and
    a slice's buffers are its parent's: a 10-row slice of a 1M-row table
    pickles to 22.9 MB (pyarrow 25), its IPC stream to 584 bytes. Beam
    pickles what it has no coder for (runner state, untyped outputs), so a
    stream that keeps zero-copy slices paid for their parents at every
    firing."""
    copyreg.pickle(pa.Table, _reduce)


def _filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    if "://" in path:
        return pafs.FileSystem.from_uri(path)
    return pafs.LocalFileSystem(), os.path.abspath(path)


def spill(directory: str, table: pa.Table) -> str:
    """Write ``table`` as an IPC stream to a new file under ``directory``
    (local or a URI); returns the file's path, for ``read_spilled``."""
    fs, root = _filesystem(directory)
    fs.create_dir(root, recursive=True)
    name = f"{uuid.uuid4().hex}.arrow"
    with fs.open_output_stream(f"{root}/{name}") as sink:
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
    return f"{directory.rstrip('/')}/{name}"


def read_spilled(path: str) -> pa.Table:
    """The table ``spill`` wrote to ``path``."""
    fs, location = _filesystem(path)
    with fs.open_input_stream(location) as source:
        return pa.ipc.open_stream(source).read_all()
