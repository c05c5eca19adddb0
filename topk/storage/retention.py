"""Retention tiers: recent data fine-grained, older data coarse (no Beam).

A retention policy keeps each slice length for its own period, e.g.
``1m=7d,1h=90d,1d=730d``: minute slices for 7 days, hour slices for 90 days,
day slices for two years; a tier left out is kept forever. It applies to the
three output tables alike: ``slices`` and ``sketches`` rows by their
``slice_length``, ``ranked_windows`` rows by their window's step (the slide,
or the length when tumbling: ``1m`` and ``1h/1m`` windows follow the minute
tier, ``1h`` and ``1d/1h`` the hour tier, ``1d``, ``30d`` and ``30d/1d`` the
day tier).

Expiry works on whole UTC days, the partitions of both backends: a row
expires once its day (of ``slice_start`` / ``window_start``) lies entirely
before ``now - keep``, rounded down to a day (``cutoff_ms``), so data is kept
at least ``keep``.

- Delta tables (``--output``): ``cleanup_parquet`` deletes the rows of the
  expired ``date`` partitions of each table by predicate, in one commit
  (``topk.storage.tables``); ``tables.maintain`` then compacts the tables
  and vacuums the files no snapshot needs any more.
- BigQuery: the longest tier is the tables' partition expiration
  (``partition_expiration_ms``: BigQuery drops old partitions by itself, for
  free); shorter tiers are deleted by ``bigquery_deletes`` (DML over the
  expired partitions, clustered on the slice length).

Run both periodically (cron, or a BigQuery scheduled query with the DELETE
statements) with ``topk retention`` (``topk.cli.retention``)::

    topk retention --retention 1m=7d,1h=90d,1d=730d --output out
    topk retention --retention 1m=7d,1h=90d,1d=730d --bq-dataset topk

Range queries over expired minutes of a range see no data there: query old
ranges on hour boundaries (they are then answered from hour and day slices).
"""
import os

from deltalake import DeltaTable

from topk.storage import layout as output_layout
from topk.storage import tables
from topk.core.schema import DAY_MS, HOUR_MS
from topk.core.windows import (SLICE_LENGTHS, SUPPORTED_WINDOWS, WindowSpec,
                               duration_ms, floor_to, parse_time)

#: The tables retention applies to, with their tier column(s).
TABLES = (output_layout.RANKED_WINDOWS, output_layout.SLICES,
          output_layout.SKETCHES)


def parse_retention(text: str | None) -> dict[str, int]:
    """``"1m=7d,1h=90d"`` -> ``{"1m": 7 days in ms, "1h": 90 days in ms}``.

    Keys are slice lengths (``1m``, ``1h``, ``1d``); a tier left out is kept
    forever; ``""``/``None`` keeps everything. A finer tier may not be kept
    longer than a coarser one (the coarse slices answer old ranges).
    """
    policy: dict[str, int] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        tier, sep, keep = part.partition("=")
        tier = tier.strip()
        if not sep or tier not in SLICE_LENGTHS:
            raise ValueError(
                f"bad retention {part.strip()!r}: expected TIER=DURATION with "
                f"TIER one of {', '.join(SLICE_LENGTHS)}, e.g. 1m=7d,1h=90d")
        if tier in policy:
            raise ValueError(f"retention of {tier} given twice")
        policy[tier] = duration_ms(keep)
    for fine, coarse in zip(SLICE_LENGTHS, SLICE_LENGTHS[1:]):
        fine_keep, coarse_keep = policy.get(fine), policy.get(coarse)
        if coarse_keep is not None and (fine_keep is None
                                        or fine_keep > coarse_keep):
            raise ValueError(f"{fine} slices cannot be kept longer than "
                             f"{coarse} slices")
    return policy


def window_tier(window_length: str, slide: str | None) -> str:
    """The tier of a ranked window: that of its step (slide or length)."""
    step = duration_ms(slide or window_length)
    if step < HOUR_MS:
        return "1m"
    return "1h" if step < DAY_MS else "1d"


def window_steps(tier: str) -> list[str]:
    """The step names (``COALESCE(slide, window_length)``) of the supported
    window specs in ``tier``."""
    steps = []
    for name in SUPPORTED_WINDOWS:
        spec = WindowSpec.parse(name)
        step = spec.slide_name or spec.length_name
        if window_tier(spec.length_name, spec.slide_name) == tier \
                and step not in steps:
            steps.append(step)
    return steps


def partition_expiration_ms(policy: dict[str, int]) -> int | None:
    """The tables' partition expiration: the longest tier, when every tier
    is bounded (else ``None``: partitions never expire by themselves)."""
    if all(t in policy for t in SLICE_LENGTHS):
        return max(policy.values())
    return None


def cutoff_ms(now: int, keep_ms: int) -> int:
    """Rows of days starting before this instant are expired."""
    return floor_to(now - keep_ms, DAY_MS)


def bigquery_deletes(policy: dict[str, int], table_ids: dict[str, str],
                     now: int) -> list[tuple[str, list]]:
    """DML for the tiers shorter than the partition expiration, as
    ``(sql, params)`` with params ``(name, type, value)``.

    ``table_ids``: table name -> validated, fully qualified BigQuery id.
    The longest tier is left to partition expiration when every tier is
    bounded."""
    expiration = partition_expiration_ms(policy)
    statements = []
    for tier in SLICE_LENGTHS:
        keep = policy.get(tier)
        if keep is None or (expiration is not None and keep >= expiration):
            continue
        cutoff = ("cutoff", "TIMESTAMP", cutoff_ms(now, keep))
        for table, table_id in table_ids.items():
            if table == output_layout.RANKED_WINDOWS:
                statements.append((
                    f"DELETE FROM `{table_id}` WHERE window_start < @cutoff "
                    "AND COALESCE(slide, window_length) IN UNNEST(@steps)",
                    [cutoff, ("steps", "ARRAY<STRING>", window_steps(tier))]))
            else:
                statements.append((
                    f"DELETE FROM `{table_id}` WHERE slice_start < @cutoff "
                    "AND slice_length = @tier",
                    [cutoff, ("tier", "STRING", tier)]))
    return statements


def expired_parquet_dirs(output: str, policy: dict[str, int], now: int
                         ) -> list[str]:
    """The partitions of ``output``'s committed tables whose data is
    expired under ``policy``, named as their directories
    (``OUTPUT/slices/slice_length=1m/date=2024-05-01``)."""
    return [path for path, _, _ in _expired_partitions(output, policy, now)]


def _expired_partitions(output: str, policy: dict[str, int], now: int):
    """``(directory, table, predicate)`` of every expired partition."""
    expired = []
    snap = tables.snapshot(output)
    for table in TABLES:
        if table not in snap.versions:
            continue
        delta = DeltaTable(tables.table_path(output, table),
                           version=snap.versions[table])
        outer_column = tables.TABLES[table][1][0]
        values = sorted({(p[outer_column], p["date"])
                         for p in delta.partitions()})
        for outer, day in values:
            if outer_column == "window_spec":
                spec = WindowSpec.parse(outer.replace("_", "/"))
                tier = window_tier(spec.length_name, spec.slide_name)
            else:
                tier = outer
            if tier not in policy or parse_time(day) >= cutoff_ms(
                    now, policy[tier]):
                continue
            expired.append((
                os.path.join(output_layout.table_dir(output, table),
                             f"{outer_column}={outer}", f"date={day}"),
                table, f"({outer_column} = '{outer}' AND date = '{day}')"))
    return expired


def cleanup_parquet(output: str, policy: dict[str, int], now: int,
                    dry_run: bool = False) -> list[str]:
    """Delete the expired partitions' rows, by predicate, in one commit
    (readers keep seeing the previous snapshot until it lands; ``maintain``
    later vacuums the files); returns the partitions."""
    expired = _expired_partitions(output, policy, now)
    if expired and not dry_run:
        predicates = {}
        for _, table, predicate in expired:
            predicates.setdefault(table, []).append(predicate)
        tables.delete_where(output, {t: " OR ".join(p)
                                     for t, p in predicates.items()},
                            "retention")
    return [path for path, _, _ in expired]
