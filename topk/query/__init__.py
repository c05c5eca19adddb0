"""The query layer: ``topk(k, start, end)``, the K most frequent items of
any minute-aligned range up to 30 days, exactly from the ``slices`` table or
approximately from the ``sketches`` table.

``topk.query.topk`` / ``topk_approx`` answer from the local Parquet output
with DuckDB; ``topk.query.bigquery`` answers the same questions from BigQuery
tables. Both share ``topk.query.contract``: the same checks, the same rows.

Beside the range top-K (DuckDB): ``topk.query.latest.latest`` (the latest
pane of a window spec, from ``ranked_windows``), ``topk.query.series.series``
(an item's counts over time, from ``slices``) and
``topk.query.coverage.coverage`` (what an output holds). Each takes an
output directory or a ``Committed`` snapshot, which a caller asking many
questions (``topk serve``) opens once per manifest row and reuses.
"""
from topk.query.contract import (MAX_K, ApproxRankedItem, Query, QueryError,
                                 RankedItem, check_query, to_ms)
from topk.query.duckdb import Committed, topk, topk_approx
from topk.query.coverage import Coverage, Head, manifest_head
from topk.query.latest import LatestPane, NotFound
from topk.query.series import MAX_POINTS, Series

__all__ = ["MAX_K", "MAX_POINTS", "ApproxRankedItem", "Committed",
           "Coverage", "Head", "LatestPane", "NotFound", "Query",
           "QueryError", "RankedItem", "Series", "check_query",
           "manifest_head", "to_ms", "topk", "topk_approx"]
