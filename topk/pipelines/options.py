"""Options shared by the batch and streaming top-K pipelines.

Beam collects options from the *direct* subclasses of ``PipelineOptions``
and rejects an option defined twice, so each options class here is a direct
subclass defining its own flags only, and none is ``required`` at parse
time (Beam parses every class for every pipeline): ``check_required``
reports what is missing instead.

Every option is declared with its hyphenated spelling first (the one help
shows, like every other ``topk`` flag) and its underscore spelling as an
alias, with ``dest`` given explicitly: Beam ships pipeline options to remote
workers (Flink, Dataflow) as ``--<dest>=value``, with underscores, so the
underscore spelling must keep parsing there. Beam's own options keep Beam's
spelling (``--runner``, ``--temp_location``, ...).
"""
import argparse
import difflib
import logging
import os
import tempfile

from apache_beam.options.pipeline_options import (PipelineOptions,
                                                  StandardOptions)

from topk.approx import sketch_windows
from topk.approx.sketches import DEFAULT_BUDGET_BYTES
from topk.core.windows import DEFAULT_WINDOWS, parse_windows


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


def _methods(text: str) -> str:
    try:
        sketch_windows.parse_methods(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _ratio(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(
            f"must be a number from 0 to 1: {text}")
    return value


def _sketch_budget(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be a positive integer number of bytes: {text}") from None
    try:
        return sketch_windows.check_budget(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


#: Share of rejected records above which a run fails: malformed records are
#: normal in small numbers, a majority means the input is not events.
DEFAULT_MAX_DEAD_LETTER_RATIO = 0.5


class TopKOptions(PipelineOptions):
    """What to count and rank, and where the results go."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument(
            "--output",
            help="Output directory (local path or gs://...) for the "
            "ranked_windows, slices, sketches and dead_letters Parquet "
            "tables.")
        parser.add_argument(
            "--windows", type=_windows, default=",".join(DEFAULT_WINDOWS),
            help="Comma-separated windows to rank: tumbling 1m, 1h, 1d, 30d "
            "and sliding 1h/1m, 1d/1h, 30d/1d (length/slide), or 'all'. "
            "Default: all.")
        parser.add_argument(
            "--k", type=_positive_int, default=100,
            help="How many items to keep per window (default 100).")
        parser.add_argument(
            "--item-shards", "--item_shards", dest="item_shards",
            type=_positive_int, default=8,
            help="Shards items are hashed into for exact counting; each "
            "shard's counts are held by one worker (default 8; 1 on the "
            "in-process local runner, 2 for the unbounded stream on "
            "Prism).")
        parser.add_argument(
            "--dedup-shards", "--dedup_shards", dest="dedup_shards",
            type=_positive_int, default=8,
            help="Shards event ids are hashed into for de-duplication "
            "(default 8; 2 for the unbounded stream on Prism).")
        parser.add_argument(
            "--method", type=_methods, default=sketch_windows.EXACT,
            help="Comma-separated counting methods: exact (exact counts, "
            "the slices table), cms (Count-Min sketch + candidates), "
            "frequent_items (DataSketches frequent items). Approximate "
            "methods write per-slice sketches (the sketches table) and "
            "ranked windows with lower/upper bounds, in fixed memory. "
            "Default: exact.")
        parser.add_argument(
            "--max-dead-letter-ratio", "--max_dead_letter_ratio",
            dest="max_dead_letter_ratio", type=_ratio,
            default=DEFAULT_MAX_DEAD_LETTER_RATIO,
            help="Fail (exit status 2) when more than this share of the "
            "records read were rejected as dead letters: a wrong input or "
            "format is then an error, not a quiet run that counted nothing "
            f"(default {DEFAULT_MAX_DEAD_LETTER_RATIO:g}; 1 never fails). The "
            "tables are written either way.")
        parser.add_argument(
            "--sketch-budget-bytes", "--sketch_budget_bytes",
            dest="sketch_budget_bytes",
            type=_sketch_budget, default=DEFAULT_BUDGET_BYTES,
            help="Memory budget of each approximate sketch (per slice and "
            "per window), in bytes of its serialized form; a sketch never "
            f"exceeds it (default {DEFAULT_BUDGET_BYTES}).")


def runner_name(options: PipelineOptions) -> str:
    """``--runner`` as a name (``""`` when not set), also when it was
    given as a runner object."""
    runner = options.view_as(StandardOptions).runner
    if runner is None or isinstance(runner, str):
        return runner or ""
    return type(runner).__name__


def default_unless_given(options: PipelineOptions, **values) -> None:
    """Set the ``TopKOptions`` ``values`` (by dest) that the command line
    did not give: a runner's own defaults (e.g. fewer shards locally)."""
    given = options.get_all_options(drop_default=True)
    opts = options.view_as(TopKOptions)
    for name, value in values.items():
        if name not in given:
            setattr(opts, name, value)


def check_required(options: PipelineOptions, names: list[str]) -> None:
    """Raise ``ValueError`` naming the missing ``--options`` (``names``:
    their dests), in their hyphenated spelling."""
    values = options.get_all_options()
    missing = [f"--{n.replace('_', '-')}" for n in names
               if not values.get(n)]
    if missing:
        raise ValueError(f"missing required option(s): {', '.join(missing)}")


class FlinkCheckpointOptions(PipelineOptions):
    """Flink's checkpoint and restart options, which Beam's Python SDK does
    not declare: the Flink job server reads them from the pipeline options.
    Declared so that ``reject_unknown`` takes them (underscores, as Beam
    spells its options)."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument(
            "--checkpointing_interval", type=int, default=None,
            help="Flink: milliseconds between checkpoints of an unbounded "
            "stream (state, timers and Kafka offsets); default: none.")
        parser.add_argument(
            "--number_of_execution_retries", type=int, default=None,
            help="Flink: how often a failed job restarts from its last "
            "checkpoint before it fails.")
        parser.add_argument(
            "--execution_retry_delay", type=int, default=None,
            help="Flink: milliseconds between a failure and the restart.")
        parser.add_argument(
            "--finish_bundle_before_checkpointing", default=None,
            type=lambda text: text.lower() == "true",
            help="Flink: true (the default of topk stream on Flink) finishes "
            "the open bundle before a checkpoint; without it the Kafka "
            "source's partition plan never leaves its first bundle.")


def reject_unknown(options: PipelineOptions) -> None:
    """``ValueError`` naming the first option that neither this project nor
    Beam defines (with the closest known spelling). Beam itself only logs
    "Discarding unparseable args" and runs without it, so a typo such as
    ``--windwos 1h`` would silently compute every default window."""
    beam_log = logging.getLogger("apache_beam.options.pipeline_options")
    level = beam_log.level
    beam_log.setLevel(logging.ERROR)  # its warning would precede ours
    try:
        known = options.get_all_options()
        unknown = sorted(set(options.get_all_options(
            retain_unknown_options=True)) - set(known))
    finally:
        beam_log.setLevel(level)
    if not unknown:
        return
    name = unknown[0]
    spellings = {n.replace("_", "-") for n in known} | set(known)
    close = difflib.get_close_matches(name.replace("_", "-"), spellings, 1)
    hint = f" (did you mean --{close[0]}?)" if close else ""
    raise ValueError(f"unknown option --{name}{hint}")


def check_output_writable(path: str) -> None:
    """``ValueError`` unless a local ``--output`` can be created and written
    (found before any work rather than after it). Remote paths (``gs://``)
    are left to the filesystem at write time."""
    if "://" in path:
        return
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".topk-probe-"):
            pass
    except OSError as e:
        raise ValueError(f"--output {path}: not writable "
                         f"({e.strerror or e})") from None


def reject_renamed(argv: list[str], renamed: dict[str, str]) -> None:
    """``ValueError`` naming the new flag if ``argv`` uses a flag that was
    renamed (``renamed``: old flag -> new flag), in either ``--flag value``
    or ``--flag=value`` form. Beam would otherwise drop an unknown flag
    with only a warning, and the run would go on without it."""
    for arg in argv:
        flag = arg.partition("=")[0]
        if flag in renamed:
            raise ValueError(f"{flag} is no longer an option: use "
                             f"{renamed[flag]}")
