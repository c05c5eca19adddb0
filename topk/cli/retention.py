"""``topk retention``: apply retention tiers to the output tables (Parquet
partitions and/or BigQuery rows); the policy itself is
``topk.storage.retention``."""
from topk.cli.common import CliError
from topk.core.windows import format_time, now_ms, parse_time


def add_retention(sub) -> None:
    from topk.connectors.bigquery import client as bigquery_client
    p = sub.add_parser(
        "retention", help="Delete expired slices, sketches and ranked "
        "windows (retention tiers).",
        description="Apply retention tiers to the output tables: delete "
        "expired rows from the Delta tables by predicate, then compact them "
        "and vacuum unreferenced files (--output), and/or delete expired "
        "BigQuery rows, setting the tables' partition expiration "
        "(--bq-dataset). Expiry works on whole UTC days; run it "
        "periodically (cron).")
    p.add_argument("--retention", required=True,
                   help="Tiers, e.g. 1m=7d,1h=90d,1d=730d (a tier left out "
                   "is kept forever).")
    p.add_argument("--output",
                   help="Output directory (local) of `topk batch` / `topk "
                   "stream` whose Parquet partitions expire.")
    bigquery_client.add_arguments(p)
    p.add_argument("--now", default=None,
                   help="Reference time, RFC 3339 (default: now).")
    p.add_argument("--vacuum-hours", type=float, default=24.0,
                   help="Keep files that a table version of the last this "
                   "many hours still references, so readers and a running "
                   "batch are not cut off (default 24).")
    p.add_argument("--dry-run", action="store_true",
                   help="Print what would be deleted, delete nothing.")
    p.set_defaults(func=cmd_retention)


def cmd_retention(args) -> int:
    from topk.connectors.bigquery import client as bigquery_client
    from topk.storage import retention
    if not args.output and not args.bq_dataset:
        raise CliError("nothing to do: give --output and/or --bq-dataset")
    try:
        policy = retention.parse_retention(args.retention)
        now = parse_time(args.now) if args.now else now_ms()
        if args.output:
            for path in retention.cleanup_parquet(args.output, policy, now,
                                                  args.dry_run):
                print(f"{'would delete' if args.dry_run else 'deleted'} "
                      f"{path}")
            if not args.dry_run:
                from topk.storage import tables
                for table, metrics in tables.maintain(
                        args.output, vacuum_hours=args.vacuum_hours).items():
                    print(f"maintained {table}: {_summary(metrics)}")
        if args.bq_dataset:
            from topk.connectors.bigquery import tables as bigquery_tables
            client, target = bigquery_client.connect(
                args.bq_project, args.bq_dataset, args.bq_table_prefix,
                args.bq_endpoint, args.bq_location)
            for line in bigquery_tables.apply_retention(
                    client, target, policy, now, args.dry_run):
                print(line)
    except (ValueError, bigquery_client.BigQueryError) as e:
        raise CliError(str(e)) from None
    print(f"{'dry run' if args.dry_run else 'retention applied'} as of "
          f"{format_time(now)}")
    return 0


def _summary(metrics: dict) -> str:
    """Delta's compaction/vacuum metrics as a short ``key=value`` line."""
    compacted = metrics.get("compacted") or {}
    vacuumed = metrics.get("vacuumed")
    parts = [f"{k}={compacted[k]}" for k in ("numFilesAdded",
                                             "numFilesRemoved")
             if k in compacted]
    if vacuumed is not None:
        parts.append(f"vacuumed {vacuumed} files")
    return ", ".join(parts) or "nothing to do"
