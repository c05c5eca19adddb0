"""The query layer: ``topk(k, start, end)``, the K most frequent items of
any minute-aligned range up to 30 days, exactly from the ``slices`` table or
approximately from the ``sketches`` table.

``topk.query.topk`` / ``topk_approx`` answer from the local Parquet output
with DuckDB; ``topk.query.bigquery`` answers the same questions from BigQuery
tables. Both share ``topk.query.contract``: the same checks, the same rows.
"""
from topk.query.contract import (MAX_K, ApproxRankedItem, Query, QueryError,
                                 RankedItem, check_query, to_ms)
from topk.query.duckdb import topk, topk_approx

__all__ = ["MAX_K", "ApproxRankedItem", "Query", "QueryError", "RankedItem",
           "check_query", "to_ms", "topk", "topk_approx"]
