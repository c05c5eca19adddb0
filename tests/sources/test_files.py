"""Reading event files into raw batches."""
import gzip
import io
import random

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.util import assert_that, equal_to

from topk.sources import files


def test_ranges_cover_every_line_exactly_once():
    rng = random.Random(3)
    for _ in range(300):
        lines = [b"x" * rng.randint(0, 20) for _ in range(rng.randint(0, 30))]
        data = b"".join(line + b"\n" for line in lines)
        if data and rng.random() < 0.3:
            data = data[:-1]  # no newline at the end of the file
        step, batch = rng.randint(1, 40), rng.randint(1, 15)
        out = b"".join(
            block
            for start in range(0, max(len(data), 1), step)
            for block in files.read_json_range(
                io.BytesIO(data), start, min(start + step, len(data)), batch))
        assert out == data


def test_matching_files_errors_name_the_pattern(tmp_path):
    with pytest.raises(ValueError, match="no input files match"):
        files.matching_files(str(tmp_path / "*.jsonl"))
    (tmp_path / "a.csv").write_text("x")
    with pytest.raises(ValueError, match="unknown input format"):
        files.matching_files(str(tmp_path / "*"))


def test_read_event_files_reads_json_gzip_and_parquet(tmp_path, pipeline):
    (tmp_path / "a.jsonl").write_bytes(b'{"n": 1}\n{"n": 2}\n{"n": 3}\n')
    with gzip.open(tmp_path / "b.jsonl.gz", "wb") as f:
        f.write(b'{"n": 4}\n{"n": 5}')
    pq.write_table(pa.table({"n": [6, 7]}), tmp_path / "c.parquet")

    def records(element):
        _, payload = element
        if isinstance(payload, bytes):
            return [line for line in payload.decode().splitlines()]
        return [f'{{"n": {n}}}' for n in payload.column("n").to_pylist()]

    with pipeline as p:
        got = (p | files.ReadEventFiles(str(tmp_path / "*"), range_bytes=10)
               | beam.FlatMap(records))
        assert_that(got, equal_to([f'{{"n": {i}}}' for i in range(1, 8)]))
