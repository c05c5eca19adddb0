"""``ReadEventFiles``: JSON-lines and Parquet files -> raw event batches.

Files are planned into byte ranges (JSON lines) or row-group runs (Parquet)
and the ranges are shuffled, so a few large files still spread over all
workers. A JSON line belongs to the range in which it starts, the rule
Beam's own text source uses, so ranges never split or repeat a record.
"""
import gzip
import os
import zlib

import apache_beam as beam
import pyarrow.parquet as pq
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems

from topk.core.events import ReadFailure
from topk.core.progress import READ_PROGRESS
from topk.transforms import coders  # noqa: F401 (registers the Arrow coder)

#: Bytes of JSON lines per range (one range is read by one worker).
RANGE_BYTES = 64 << 20
#: Bytes of JSON lines per emitted batch.
BATCH_BYTES = 16 << 20
#: Bytes of decompressed gzip lines per batch: a truncated gzip loses the
#: block being read when it breaks off, so blocks are kept small there.
GZIP_BATCH_BYTES = 1 << 20
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


#: First bytes of a gzip member and of a Parquet file.
GZIP_MAGIC = b"\x1f\x8b"
PARQUET_MAGIC = b"PAR1"


def resolve_pattern(pattern: str) -> str:
    """A local glob made absolute: Beam's local filesystem matches nothing
    for a relative glob without a directory (``events*.jsonl``), though it
    finds ``./events*.jsonl``. Remote URLs (``gs://...``) pass unchanged."""
    if "://" in pattern:
        return pattern
    return os.path.abspath(os.path.expanduser(pattern))


def is_event_file(path: str) -> bool:
    """Whether a matched path is input: not a directory, and not hidden or
    a marker such as Spark's ``_SUCCESS`` (basenames starting with ``_`` or
    ``.``, the rule Hadoop and Spark readers follow). The check at start-up
    and the pipeline's own match use this one rule."""
    if os.path.basename(path.rstrip("/")).startswith(("_", ".")):
        return False
    return not ("://" not in path and os.path.isdir(path))


def check_event_file(path: str) -> None:
    """``ValueError`` with one line unless ``path`` looks like what its name
    says: a known suffix, gzip data behind ``.gz``, a Parquet file behind
    ``.parquet``. Reads a few bytes only; a file that turns bad later (a
    truncated gzip) becomes a dead letter while reading."""
    fmt = file_format(path)
    try:
        with FileSystems.open(path, compression_type="uncompressed") as f:
            head = f.read(4)
    except (IOError, OSError) as e:
        raise ValueError(f"{path}: cannot read: {e}") from None
    if path.lower().endswith(".gz") and head and not head.startswith(
            GZIP_MAGIC):
        raise ValueError(f"{path}: not a gzip file (it does not start with "
                         "gzip's magic bytes); rename it or compress it")
    if fmt == "parquet" and head != PARQUET_MAGIC:
        raise ValueError(f"{path}: not a Parquet file (no PAR1 header)")


def event_file_sizes(patterns: list[str]) -> dict[str, int]:
    """``{path: size in bytes}`` of the event files matching any of the
    globs (``is_event_file``); empty when nothing matches."""
    results = FileSystems.match([resolve_pattern(p) for p in patterns])
    return {m.path: m.size_in_bytes for r in results
            for m in r.metadata_list if is_event_file(m.path)}


def matching_file_sizes(pattern: str) -> dict[str, int]:
    """``matching_files`` with each file's size (what the read progress
    counts towards), in path order."""
    sizes = event_file_sizes([pattern])
    if not sizes:
        raise ValueError(f"no input files match {pattern!r}")
    for p in sorted(sizes):
        check_event_file(p)
    return {p: sizes[p] for p in sorted(sizes)}


def matching_files(pattern: str) -> list[str]:
    """Event files matching a glob (local or any Beam filesystem), checked
    with ``check_event_file``; raises ``ValueError`` naming the pattern
    when nothing matches and the file when one is not readable input."""
    return list(matching_file_sizes(pattern))


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


def _records_in(block: bytes) -> int:
    # A trailing newline ends the last record; a block without one (the
    # end of a file) still holds a last record. C speed, once per block.
    return block.count(b"\n") + (0 if block.endswith(b"\n") else 1)


class _ReadRangeFn(beam.DoFn):
    """Reads one planned piece. Progress hook: each block adds its bytes of
    the file (compressed bytes for gzip, clipped to the piece, so the
    pieces of a file add up to its size) and its records to
    ``READ_PROGRESS``, one call per block."""

    def process(self, piece):
        path, start, end = piece
        if file_format(path) == "parquet":
            yield from self._read_parquet(path)
            return
        with FileSystems.open(path, compression_type="uncompressed") as raw:
            gz = path.lower().endswith(".gz")
            f = gzip.GzipFile(fileobj=raw) if gz else raw
            blocks = read_json_range(
                f, start, end, GZIP_BATCH_BYTES if gz else BATCH_BYTES)
            credited = start

            def credit(records):
                nonlocal credited
                pos = raw.tell() if end < 0 else min(raw.tell(), end)
                READ_PROGRESS.add(max(0, pos - credited), records)
                credited = max(credited, pos)

            while True:
                try:
                    block = next(blocks)
                except StopIteration:
                    if end >= 0:
                        READ_PROGRESS.add(max(0, end - credited))
                    else:
                        credit(0)
                    return
                except (EOFError, gzip.BadGzipFile, zlib.error) as e:
                    # The lines before the damage were yielded; what
                    # follows cannot be read, so it is reported, once.
                    credit(1)
                    yield (f"{path}@{start}", ReadFailure(
                        f"unreadable input after {raw.tell()} bytes: "
                        f"{type(e).__name__}: {e}"))
                    return
                credit(_records_in(block))
                yield (f"{path}@{start}", block)

    @staticmethod
    def _read_parquet(path):
        with FileSystems.open(path) as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(0)
            pf = pq.ParquetFile(f)
            total_rows, rows, credited = pf.metadata.num_rows, 0, 0
            for i, batch in enumerate(pf.iter_batches(BATCH_ROWS)):
                rows += batch.num_rows
                done = size * rows // total_rows if total_rows else 0
                READ_PROGRESS.add(done - credited, batch.num_rows)
                credited = done
                yield (f"{path}#batch{i}", batch)
            READ_PROGRESS.add(size - credited)


class ReadEventFiles(beam.PTransform):
    """Read event files matching a glob.

    Yields ``(source, payload)``: ``payload`` is newline-delimited JSON bytes
    (whole lines) for ``.json``/``.jsonl``/``.ndjson`` (optionally ``.gz``)
    files, or a ``pa.RecordBatch`` of typed columns for Parquet files;
    ``source`` names the file; a file that breaks off while being read
    (truncated gzip) yields a ``ReadFailure`` payload after its readable
    lines. Hidden and marker files (``_SUCCESS``, ``.crc``) and directories
    are skipped, as ``matching_files`` skips them. Feed it to
    ``ParseEvents``.
    """

    def __init__(self, pattern: str, range_bytes: int = RANGE_BYTES):
        super().__init__()
        self._pattern = resolve_pattern(pattern)
        self._range_bytes = range_bytes

    def expand(self, pbegin):
        range_bytes = self._range_bytes
        return (
            pbegin
            | "Match" >> fileio.MatchFiles(self._pattern)
            | "EventFilesOnly" >> beam.Filter(lambda m: is_event_file(m.path))
            | "PlanRanges" >> beam.FlatMap(
                lambda m: plan_ranges(m.path, m.size_in_bytes, range_bytes))
            | "Spread" >> beam.Reshuffle()
            | "ReadRange" >> beam.ParDo(_ReadRangeFn()))
