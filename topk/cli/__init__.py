"""The ``topk`` command: generate events, run pipelines, query results.

    topk demo                      # synthetic day -> batch pipeline -> queries
    topk generate --events N --out PATH [--seed S] [--event-rate R] ...
    topk batch --input GLOB --output DIR [--windows ...] [--k K] [beam options]
    topk stream --bootstrap HOST:PORT --topic T --output DIR --bounded [...]
    topk produce --bootstrap HOST:PORT --topic T --events N [--send-rate R]
    topk query --output DIR --k K --start T --end T [--event-type E]
               [--method exact|cms|frequent_items] [--format table|json]
    topk query --backend bigquery --bq-dataset D --k K --start T --end T ...
    topk retention --retention 1m=7d,1h=90d,1d=730d --output DIR [--dry-run]
    topk migrate --output DIR      # an older version's Parquet -> Delta
    topk serve --output DIR [--port 8080]   # HTTP API + live leaderboard
    topk alert --rules FILE --output DIR    # spike alerts on new panes

One module per command family (``common``, ``pipelines``, ``query``,
``loadgen``, ``retention``, ``storage``, ``serve``, ``alert``); each is a
thin layer over library functions.
Every flag is spelled with hyphens and means one thing across commands.
Bad input exits with status 2 and a one-line reason on stderr.
"""
import argparse
import faulthandler
import logging
import signal
import sys

import topk
from topk.cli import (alert, loadgen, pipelines, query, retention, serve,
                      storage)
from topk.cli.common import EXIT_USAGE, CliError, CommandParser

__all__ = ["EXIT_USAGE", "CliError", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The ``topk`` parser with every command."""
    parser = argparse.ArgumentParser(
        prog="topk", description="Exact and approximate top-K (heavy "
        "hitters) over 1-minute to 30-day windows with Apache Beam.")
    parser.add_argument("--version", action="version",
                        version=f"topk {topk.__version__}",
                        help="Print the version and exit.")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="Log pipeline progress (INFO).")
    # A command's argument errors (bad choice, missing option) are one
    # line too, like every other user error.
    sub = parser.add_subparsers(dest="command", metavar="COMMAND",
                                parser_class=CommandParser)
    sub.required = True
    pipelines.add_demo(sub)
    loadgen.add_generate(sub)
    pipelines.add_batch(sub)
    pipelines.add_stream(sub)
    query.add_query(sub)
    loadgen.add_produce(sub)
    retention.add_retention(sub)
    storage.add_migrate(sub)
    alert.add_alert(sub)
    serve.add_serve(sub)
    return parser


def _dump_stacks_on_sigusr1() -> None:
    """``kill -USR1 PID`` prints every thread's stack to the process's
    stderr: what a run that seems stuck is doing, without stopping it."""
    stderr = sys.__stderr__
    if not hasattr(signal, "SIGUSR1") or stderr is None:
        return
    try:
        faulthandler.register(signal.SIGUSR1, file=stderr, all_threads=True)
    except (ValueError, OSError):  # a stderr without a file descriptor
        pass


def _storage_error(record: logging.LogRecord) -> bool:
    exc = record.exc_info[1] if record.exc_info else None
    if exc is None:
        return False
    from topk.storage.tables import StorageError
    return isinstance(exc, StorageError)


def _quiet_beam_about_our_errors() -> None:
    """A pipeline step that fails with a one-line ``StorageError`` (a batch
    commit that would lose data, say) is reported once, as ``topk: error:``;
    Beam's worker would first log it with its whole traceback."""
    logging.getLogger("apache_beam.runners.common").addFilter(
        lambda record: not _storage_error(record))


def main(argv=None) -> int:
    """Run ``topk ARGV``; returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    try:
        args, rest = parser.parse_known_args(argv)
    except CliError as e:
        print(f"topk: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _dump_stacks_on_sigusr1()
    _quiet_beam_about_our_errors()
    try:
        if getattr(args, "takes_beam_args", False):
            return args.func(args, rest)
        if rest:
            raise CliError(f"unrecognized arguments: {' '.join(rest)}")
        return args.func(args)
    except CliError as e:
        print(f"topk: error: {e}", file=sys.stderr)
        return EXIT_USAGE
