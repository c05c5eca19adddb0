"""``topk query``: top-K of any minute-aligned range, from the output
tables of ``topk batch`` / ``topk stream`` (DuckDB) or BigQuery."""
import argparse
import json
import sys

from topk.cli.common import CliError, format_table, shorten

#: More digits than this cannot be a valid k (it is echoed in the error
#: only up to this length: a 5,000-digit --k stays a short line).
_K_DIGITS = 12


def _k(text: str) -> int:
    """``--k``: a whole number; one that cannot be in range is refused here
    without echoing all its digits (the query contract checks the range)."""
    from topk.query.contract import MAX_K
    digits = text.strip().lstrip("+-")
    if not digits.isdigit():
        raise argparse.ArgumentTypeError(
            f"must be a whole number from 1 to {MAX_K}: {shorten(text)}")
    if len(digits.lstrip("0")) > _K_DIGITS:
        raise argparse.ArgumentTypeError(
            f"must be at most {MAX_K}, got a "
            f"{len(digits.lstrip('0'))}-digit number")
    return int(text)


def add_query(sub) -> None:
    from topk.connectors.bigquery import client as bigquery_client
    p = sub.add_parser(
        "query", help="Top-K of any minute-aligned range up to 30 days.",
        description="Answer topk(k, start, end) from the output tables: the "
        "range is covered by the fewest aligned day/hour/minute slices. "
        "Exact (default): their counts are summed in one DuckDB statement "
        "over the slices table (--backend bigquery: one BigQuery statement, "
        "same answers). cms / frequent_items: their sketches are merged, and "
        "every count comes with lower and upper bounds.")
    p.add_argument("--output",
                   help="Output directory of `topk batch` / `topk stream` "
                   "(--backend duckdb).")
    p.add_argument("--backend", choices=("duckdb", "bigquery"),
                   default="duckdb",
                   help="duckdb (default): the Parquet tables under --output; "
                   "bigquery: the tables of --bq-dataset (written with --sink "
                   "bigquery), with Application Default Credentials.")
    bigquery_client.add_arguments(p)
    p.add_argument("--k", type=_k, required=True,
                   help="How many items (1 to 100000).")
    p.add_argument("--start", required=True,
                   help="Range start (inclusive), RFC 3339 UTC, whole minute.")
    p.add_argument("--end", required=True,
                   help="Range end (exclusive), RFC 3339 UTC, whole minute.")
    p.add_argument("--event-type", default=None,
                   help="Only this event type (default: all types).")
    p.add_argument("--method", choices=("exact", "cms", "frequent_items"),
                   default="exact",
                   help="exact (default; the slices table) or an approximate "
                   "method whose sketches the pipeline wrote (--method of "
                   "`topk batch`).")
    p.add_argument("--format", choices=("table", "json"), default="table",
                   help="table (default; control characters in item ids "
                   "escaped) or json: a list of objects with rank, item_id, "
                   "count, and for approximate methods lower_bound, "
                   "upper_bound and guaranteed (certainly in the true top "
                   "k).")
    p.add_argument("--freshness", action="store_true",
                   help="Also print, on stderr, how fresh the answer is: "
                   "the committed snapshot it read and when it was "
                   "committed, the newest event time counted, the "
                   "newest stream pane with its lag behind the clock, and "
                   "the stream's input watermark then (--backend "
                   "duckdb). Each stream row of ranked_windows also "
                   "carries its own input_watermark.")
    p.set_defaults(func=cmd_query)


def cmd_query(args) -> int:
    from topk import query
    from topk.connectors.bigquery import client as bigquery_client
    from topk.query import contract
    if args.backend == "duckdb" and not args.output:
        raise CliError("--output is required with --backend duckdb")
    try:
        # The query itself first (k up to contract.MAX_K, the range, the
        # method): its errors need no connection to BigQuery.
        if args.method == "exact":
            q = contract.exact_query(args.k, args.start, args.end,
                                     args.event_type)
        else:
            q = contract.approx_query(args.k, args.start, args.end,
                                      args.method, args.event_type)
        if args.freshness and args.backend == "duckdb":
            rows, freshness = _answer_with_freshness(args.output, q)
        else:
            rows, freshness = _answer(args), (
                "freshness: not available with --backend bigquery")
    except (query.QueryError, bigquery_client.BigQueryError) as e:
        raise CliError(str(e)) from None
    approximate = args.method != "exact"
    if args.freshness:
        print(freshness, file=sys.stderr)
    if args.format == "json":
        print(json.dumps([_json_row(r, approximate) for r in rows]))
    else:
        print(format_table(rows, approximate))
    return 0


def _answer(args) -> list:
    from topk import query
    from topk.connectors.bigquery import client as bigquery_client
    backend, where = query, (args.output,)
    if args.backend == "bigquery":
        from topk.query import bigquery as backend
        where = bigquery_client.connect(
            args.bq_project, args.bq_dataset, args.bq_table_prefix,
            args.bq_endpoint, args.bq_location)
    if args.method == "exact":
        return backend.topk(*where, args.k, args.start, args.end,
                            args.event_type)
    return backend.topk_approx(*where, args.k, args.start, args.end,
                               args.method, args.event_type)


def _answer_with_freshness(output: str, q) -> tuple[list, str]:
    """The answer and one line on how fresh it is, both read from one
    committed snapshot (a stream committing meanwhile changes neither)."""
    from topk.core.windows import format_time, now_ms
    from topk.query import coverage
    from topk.query.duckdb import Committed
    head = coverage.manifest_head(output)
    snap = Committed(output, head.snap)
    try:
        rows = snap.topk(q) if q.method is None else snap.topk_approx(q)
        held = coverage.coverage(snap)
    finally:
        snap.release()
    parts = [f"snapshot {head.seq}" + (
        f" committed {format_time(head.committed_at)}"
        if head.committed_at else "")]
    if held.newest_event_time is not None:
        parts.append("newest event minute "
                     f"{format_time(held.newest_event_time)}")
    if held.newest_stream_at is not None:
        lag = (now_ms() - held.newest_stream_at) / 1000
        parts.append(f"newest stream pane {format_time(held.newest_stream_at)}"
                     f" ({lag:,.0f} s ago)")
    if held.stream_watermark is not None:
        parts.append("stream input watermark "
                     f"{format_time(held.stream_watermark)}")
    return rows, "freshness: " + "; ".join(parts)


def _json_row(r, approximate: bool) -> dict:
    row = {"rank": r.rank, "item_id": r.item_id, "count": r.count}
    if approximate:
        row.update(lower_bound=r.lower_bound, upper_bound=r.upper_bound,
                   guaranteed=r.guaranteed)
    return row
