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


def test_a_relative_glob_without_a_directory_matches(tmp_path, monkeypatch):
    (tmp_path / "events.jsonl").write_bytes(b'{"n": 1}\n')
    monkeypatch.chdir(tmp_path)
    assert files.matching_files("events*.jsonl") == [
        str(tmp_path / "events.jsonl")]


def test_markers_hidden_files_and_directories_are_skipped(tmp_path):
    (tmp_path / "a.jsonl").write_bytes(b'{"n": 1}\n')
    (tmp_path / "_SUCCESS").write_bytes(b"")
    (tmp_path / ".a.jsonl.crc").write_bytes(b"\x00\x01")
    (tmp_path / "dir.jsonl").mkdir()
    assert files.matching_files(str(tmp_path / "*")) == [
        str(tmp_path / "a.jsonl")]


@pytest.mark.parametrize("name, data, reason", [
    ("a.jsonl.gz", b'{"n": 1}\n', "not a gzip file"),
    ("a.parquet", b'{"n": 1}\n', "not a Parquet file"),
])
def test_a_file_that_is_not_what_its_name_says_is_named(tmp_path, name,
                                                        data, reason):
    (tmp_path / name).write_bytes(data)
    with pytest.raises(ValueError, match=reason) as e:
        files.matching_files(str(tmp_path / "*"))
    assert name in str(e.value) and "\n" not in str(e.value)


def test_a_truncated_gzip_yields_its_lines_then_a_dead_letter(tmp_path,
                                                             pipeline):
    from topk.transforms.parse import DEAD_LETTERS, ParseEvents
    N = 60_000  # ~5 MB of lines: several gzip read blocks before the cut
    lines = b"".join(
        b'{"event_id": "e%d", "item_id": "i%d", "event_type": "click", '
        b'"ts": %d}\n' % (i, i % 7, 1714521600000 + i) for i in range(N))
    whole = gzip.compress(lines)
    (tmp_path / "a.jsonl.gz").write_bytes(whole[:len(whole) // 2])
    with pipeline as p:
        parsed = (p | files.ReadEventFiles(str(tmp_path / "*.jsonl.gz"))
                  | ParseEvents())
        valid = parsed.events | "Valid" >> beam.Map(lambda t: t.num_rows)
        dead = parsed[DEAD_LETTERS] | beam.FlatMap(
            lambda t: t.column("reason").to_pylist())
        assert_that(valid | beam.CombineGlobally(sum),
                    _holds(lambda got: 0 < got[0] < N), label="SomeLinesRead")
        assert_that(dead, _holds(lambda got: len(got) == 1
                                 and "unreadable input" in got[0]),
                    label="OneDeadLetter")


def _holds(predicate):
    """An ``assert_that`` matcher from a predicate over the whole output."""
    def check(got):
        assert predicate(got), got
    return check


def test_read_progress_adds_up_to_the_input(tmp_path, pipeline):
    """The read DoFn's progress hook (one add per block): every file's
    bytes exactly once, however it is split into ranges, gzip by its
    compressed size, Parquet by its file size; every record once."""
    from topk.core.progress import READ_PROGRESS
    rng = random.Random(5)
    lines = [b'{"n": %d, "pad": "%s"}' % (i, b"x" * rng.randint(0, 40))
             for i in range(3000)]
    (tmp_path / "a.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    (tmp_path / "b.jsonl").write_bytes(b"\n".join(lines[:7]))  # no final \n
    (tmp_path / "e.jsonl").write_bytes(b"")
    with gzip.open(tmp_path / "c.jsonl.gz", "wb") as f:
        f.write(b"\n".join(lines) + b"\n")
    pq.write_table(pa.table({"n": list(range(1000))}), tmp_path / "d.parquet",
                   row_group_size=300)
    sizes = files.matching_file_sizes(str(tmp_path / "*"))
    assert sizes == {str(p): p.stat().st_size
                     for p in sorted(tmp_path.iterdir())}
    READ_PROGRESS.start(sum(sizes.values()), len(sizes))
    try:
        with pipeline as p:
            _ = p | files.ReadEventFiles(str(tmp_path / "*"),
                                         range_bytes=1000)
        snap = READ_PROGRESS.snapshot()
    finally:
        READ_PROGRESS.stop()
    assert snap.bytes == sum(sizes.values())
    assert snap.records == 3000 + 7 + 3000 + 1000
    assert snap.first_read is not None and snap.files == 5
