"""``topk migrate``: convert an output written by an older topk (plain
Hive-partitioned Parquet) into the Delta tables this version reads."""
from topk.cli.common import CliError


def add_migrate(sub) -> None:
    p = sub.add_parser(
        "migrate", help="Convert an output of an older topk (plain Parquet "
        "directories) into Delta tables.",
        description="Convert, in place and in one commit, the plain "
        "Hive-partitioned Parquet tables an older topk wrote under --output "
        "into Delta tables. Everything is read before anything moves; the "
        "old directories stay beside the new tables as "
        ".<table>.parquet-backup until you delete them.")
    p.add_argument("--output", required=True,
                   help="Output directory of `topk batch` / `topk stream`.")
    p.set_defaults(func=cmd_migrate)


def cmd_migrate(args) -> int:
    from topk.storage import tables
    try:
        converted = tables.migrate(args.output)
    except (ValueError, OSError) as e:
        raise CliError(f"{args.output}: {e}") from None
    if not converted:
        print(f"{args.output}: nothing to migrate")
        return 0
    for table in converted:
        print(f"converted {table} (old files kept in "
              f".{table}.parquet-backup)")
    return 0
