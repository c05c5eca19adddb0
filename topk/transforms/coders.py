"""Beam coder for Arrow tables: the unit that flows between steps, as an
Arrow IPC stream (``topk.core.arrow_ipc``)."""
import apache_beam as beam
import pyarrow as pa

from topk.core import arrow_ipc


class ArrowTableCoder(beam.coders.Coder):
    """Encodes a ``pyarrow.Table`` as an Arrow IPC stream, LZ4-compressed
    when large (``arrow_ipc.compact_bytes``)."""

    def encode(self, table: pa.Table) -> bytes:
        return arrow_ipc.compact_bytes(table)

    def decode(self, encoded: bytes) -> pa.Table:
        return arrow_ipc.from_bytes(encoded)

    def estimate_size(self, table: pa.Table) -> int:
        # Beam sizes elements for its metrics and buffers; the default
        # would encode the whole table just to measure it.
        return table.nbytes

    def is_deterministic(self) -> bool:
        # Equal tables can differ in chunking, hence in bytes; never a key.
        return False

    def to_type_hint(self):
        return pa.Table


class ArrowTableListCoder(beam.coders.Coder):
    """Encodes a list of same-schema tables (a CombineFn accumulator) as one
    concatenated table; decodes to a one-element list."""

    def __init__(self):
        self._table = ArrowTableCoder()

    def encode(self, tables: list) -> bytes:
        if not tables:
            return b""
        return self._table.encode(pa.concat_tables(tables, promote_options="default"))

    def decode(self, encoded: bytes) -> list:
        return [self._table.decode(encoded)] if encoded else []

    def estimate_size(self, tables: list) -> int:
        return sum(t.nbytes for t in tables)

    def is_deterministic(self) -> bool:
        return False


class AsTables(beam.PTransform):
    """Tables -> the same tables, declared ``pa.Table`` so that they cross
    to the next stage with ``ArrowTableCoder``. A DoFn's tagged outputs
    have no type; Beam would pickle their tables."""

    def expand(self, tables):
        return tables | "Typed" >> beam.Map(_same).with_output_types(pa.Table)


def _same(table: pa.Table) -> pa.Table:
    return table


def register() -> None:
    """Make Beam use ``ArrowTableCoder`` wherever a step declares tables,
    and pickle tables as Arrow IPC where it pickles them
    (``arrow_ipc.pickle_as_ipc``: runner state, untyped outputs)."""
    beam.coders.registry.register_coder(pa.Table, ArrowTableCoder)
    arrow_ipc.pickle_as_ipc()


register()
