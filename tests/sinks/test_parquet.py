"""The Parquet sink: atomic files, partitions, reruns replace."""
import os

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq

from topk.sinks import parquet


def test_atomic_write_leaves_no_temp_files_and_replaces(tmp_path):
    path = str(tmp_path / "t" / "part.parquet")
    parquet.write_parquet_atomically(pa.table({"a": [1]}), path)
    parquet.write_parquet_atomically(pa.table({"a": [2]}), path)
    assert os.listdir(tmp_path / "t") == ["part.parquet"]
    assert pq.read_table(path)["a"].to_pylist() == [2]


def test_partitions_gather_into_one_sorted_file_and_reruns_replace(tmp_path):
    from apache_beam.testing.test_pipeline import TestPipeline

    def partitions(t):
        return [((("p", v),), t.filter(pa.compute.equal(t["p"], v)))
                for v in set(t["p"].to_pylist())]

    batches = [pa.table({"p": ["x", "y"], "v": [3, 1]}),
               pa.table({"p": ["x"], "v": [2]})]
    for _ in range(2):
        with TestPipeline(runner="FnApiRunner") as p:
            _ = (p | beam.Create(batches) | parquet.WriteParquetTable(
                str(tmp_path), "tbl", partitions, "part-batch", ["v"]))
    x = pq.read_table(tmp_path / "tbl" / "p=x" / "part-batch.parquet")
    assert x["v"].to_pylist() == [2, 3]
    assert sorted(os.listdir(tmp_path / "tbl")) == ["p=x", "p=y"]
    assert os.listdir(tmp_path / "tbl" / "p=y") == ["part-batch.parquet"]
