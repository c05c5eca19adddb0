"""``ReadEventFiles``: JSON-lines and Parquet files -> raw event batches.

Files are planned into byte ranges (JSON lines) or row-group runs (Parquet)
and the ranges are shuffled, so a few large files still spread over all
workers. A JSON line belongs to the range in which it starts, the rule
Beam's own text source uses, so ranges never split or repeat a record.
"""
import gzip
import os

import apache_beam as beam
import pyarrow.parquet as pq
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems

from topk.transforms import coders  # noqa: F401 (registers the Arrow coder)

#: Bytes of JSON lines per range (one range is read by one worker).
RANGE_BYTES = 64 << 20
#: Bytes of JSON lines per emitted batch.
BATCH_BYTES = 16 << 20
#: Rows per emitted Parquet batch.
BATCH_ROWS = 256_000

JSON_SUFFIXES = (".json", ".jsonl", ".ndjson", ".json.gz", ".jsonl.gz",
                 ".ndjson.gz")
PARQUET_SUFFIXES = (".parquet", ".pq")


def file_format(path: str) -> str:
    lower = path.lower()
    if lower.endswith(PARQUET_SUFFIXES):
        return "parquet"
    if lower.endswith(JSON_SUFFIXES):
        return "json"
    raise ValueError(f"{path}: unknown input format; use one of "
                     f"{', '.join(JSON_SUFFIXES + PARQUET_SUFFIXES)}")


def matching_files(pattern: str) -> list[str]:
    """Paths matching a glob (local or any Beam filesystem); raises
    ``ValueError`` naming the pattern when nothing matches."""
    result = FileSystems.match([pattern])[0]
    paths = sorted(m.path for m in result.metadata_list
                   if not os.path.basename(m.path).startswith(("_", ".")))
    if not paths:
        raise ValueError(f"no input files match {pattern!r}")
    for p in paths:
        file_format(p)
    return paths


def plan_ranges(path: str, size: int, range_bytes: int = RANGE_BYTES):
    """``(path, start, end)`` pieces of one file; ``end = -1`` reads it
    whole (gzip, Parquet: row groups are read in one pass per file)."""
    if file_format(path) == "parquet" or path.lower().endswith(".gz"):
        return [(path, 0, -1)]
    return [(path, start, min(start + range_bytes, size))
            for start in range(0, max(size, 1), range_bytes)]


def read_json_range(f, start: int, end: int, batch_bytes: int = BATCH_BYTES):
    """Yield blocks of whole lines that start in ``[start, end)`` of the
    seekable binary file ``f`` (``end = -1``: to the end of the file)."""
    if start > 0:
        f.seek(start - 1)
        # Unless the previous byte ends a line, the line at ``start`` began
        # in the previous range and is that range's to read.
        if f.read(1) != b"\n":
            f.readline()
    while True:
        pos = f.tell()
        if 0 <= end <= pos:
            return
        block = f.read(batch_bytes if end < 0 else min(batch_bytes, end - pos))
        if not block:
            return
        if not block.endswith(b"\n"):
            block += f.readline()  # the line straddling the cut is ours
        yield block


class _ReadRangeFn(beam.DoFn):

    def process(self, piece):
        path, start, end = piece
        if file_format(path) == "parquet":
            with FileSystems.open(path) as f:
                pf = pq.ParquetFile(f)
                for i, batch in enumerate(pf.iter_batches(BATCH_ROWS)):
                    yield (f"{path}#batch{i}", batch)
            return
        with FileSystems.open(path, compression_type="uncompressed") as raw:
            f = gzip.GzipFile(fileobj=raw) if path.lower().endswith(".gz") else raw
            for block in read_json_range(f, start, end):
                yield (f"{path}@{start}", block)


class ReadEventFiles(beam.PTransform):
    """Read event files matching a glob.

    Yields ``(source, payload)``: ``payload`` is newline-delimited JSON bytes
    (whole lines) for ``.json``/``.jsonl``/``.ndjson`` (optionally ``.gz``)
    files, or a ``pa.RecordBatch`` of typed columns for Parquet files;
    ``source`` names the file. Feed it to ``ParseEvents``.
    """

    def __init__(self, pattern: str, range_bytes: int = RANGE_BYTES):
        super().__init__()
        self._pattern = pattern
        self._range_bytes = range_bytes

    def expand(self, pbegin):
        range_bytes = self._range_bytes
        return (
            pbegin
            | "Match" >> fileio.MatchFiles(self._pattern)
            | "PlanRanges" >> beam.FlatMap(
                lambda m: plan_ranges(m.path, m.size_in_bytes, range_bytes))
            | "Spread" >> beam.Reshuffle()
            | "ReadRange" >> beam.ParDo(_ReadRangeFn()))
