"""Stable, vectorised hashing of string columns into shards.

Shards partition items for exact top-K (docs/architecture.md, decision 3) and event ids
for de-duplication. The hash must agree across worker processes (Python's
``hash`` is salted per process), so it is DuckDB's ``hash()``: deterministic
for a DuckDB version and ~100M strings/s. Shard numbers live only inside one
pipeline run; nothing persisted depends on them.
"""
import numpy as np
import pyarrow as pa

from topk.core.local_duckdb import connection


def stable_hash(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """64-bit hash of every string (uint64 NumPy array)."""
    tab = pa.table({"v": values})  # noqa: F841 (DuckDB scans it)
    out = connection().sql("SELECT hash(v) AS h FROM tab").to_arrow_table()
    return out.column("h").to_numpy()


def shard_of(values: pa.Array | pa.ChunkedArray, shards: int) -> np.ndarray:
    """Shard number in ``[0, shards)`` of every string (int64 array)."""
    if shards <= 0:
        raise ValueError("shards must be positive")
    # The high bits mix better than the low ones for small shard counts.
    return ((stable_hash(values) >> np.uint64(32)) % np.uint64(shards)).astype(
        np.int64)


def split_by_shard(table: pa.Table, shard: np.ndarray,
                   shards: int) -> list[tuple[int, pa.Table]]:
    """Split ``table`` into ``(shard, rows of that shard)`` pairs, non-empty
    ones only, with one sort instead of one filter per shard."""
    if table.num_rows == 0:
        return []
    order = np.argsort(shard, kind="stable")
    sorted_shards = shard[order]
    bounds = np.searchsorted(sorted_shards, np.arange(shards + 1))
    taken = table.take(pa.array(order))
    return [(s, taken.slice(bounds[s], bounds[s + 1] - bounds[s]))
            for s in range(shards) if bounds[s + 1] > bounds[s]]
