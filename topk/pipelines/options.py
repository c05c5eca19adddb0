"""Options shared by the batch and streaming top-K pipelines.

Beam collects options from the *direct* subclasses of ``PipelineOptions``
and rejects an option defined twice, so each options class here is a direct
subclass defining its own flags only, and none is ``required`` at parse
time (Beam parses every class for every pipeline): ``check_required``
reports what is missing instead.
"""
import argparse

from apache_beam.options.pipeline_options import PipelineOptions

from topk.windows import DEFAULT_WINDOWS, parse_windows


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer: {text}")
    return value


def _windows(text: str) -> str:
    try:
        parse_windows(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


class TopKOptions(PipelineOptions):
    """What to count and rank, and where the results go."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument(
            "--output",
            help="Output directory (local path or gs://...) for the "
            "ranked_windows, slices and dead_letters Parquet tables.")
        parser.add_argument(
            "--windows", type=_windows, default=",".join(DEFAULT_WINDOWS),
            help="Comma-separated windows to rank: tumbling 1m, 1h, 1d, 30d "
            "and sliding 1h/1m, 1d/1h, 30d/1d (length/slide), or 'all'. "
            "Default: all.")
        parser.add_argument(
            "--k", type=_positive_int, default=100,
            help="How many items to keep per window (default 100).")
        parser.add_argument(
            "--item_shards", "--item-shards", type=_positive_int, default=8,
            help="Shards items are hashed into for exact counting; each "
            "shard's counts are held by one worker (default 8).")
        parser.add_argument(
            "--dedup_shards", "--dedup-shards", type=_positive_int, default=8,
            help="Shards event ids are hashed into for de-duplication "
            "(default 8).")


def check_required(options: PipelineOptions, names: list[str]) -> None:
    """Raise ``ValueError`` naming the missing ``--options``."""
    values = options.get_all_options()
    missing = [f"--{n}" for n in names if not values.get(n)]
    if missing:
        raise ValueError(f"missing required option(s): {', '.join(missing)}")
