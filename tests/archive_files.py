"""Raw event archive files as the stream writes them (for tests).

``OUTPUT/archive/date=YYYY-MM-DD/hour=HH/part-stream-<writer>.parquet`` in
``EVENT_SCHEMA`` (``topk.storage.layout``): the input of ``topk batch
--from-archive``. Import as ``import archive_files`` (tests/ is on sys.path).
"""
import os

import pyarrow as pa
import pyarrow.parquet as pq

from topk.storage import layout as output_layout


def write_archive(output: str, events: pa.Table, writer: str) -> None:
    """Write ``events`` as the archive files of one stream writer."""
    for partition, rows in output_layout.archive_partitions(events):
        path = output_layout.partition_path(
            output, output_layout.ARCHIVE, partition,
            f"part-stream-{writer}.parquet")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        pq.write_table(rows, path)
