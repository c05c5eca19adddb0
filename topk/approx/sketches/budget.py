"""Byte-budget arithmetic: how big each sketch may be, and why that holds.

The budget of a sketch is the size of its serialized form (``to_bytes``),
which is exactly what the per-slice sketches table stores and what a
runner shuffles between workers. Both sketches check it after every
``update`` and ``merge`` and shrink themselves before they would exceed it,
so ``nbytes <= budget_bytes`` is an invariant, not a hope:

- Count-Min: header + ``depth * width`` int64 counters (fixed) + the
  candidate set, whose size depends on the item ids; candidates with the
  smallest upper bounds are dropped until it fits (their bound moves into
  the sketch's bound for untracked items, so correctness is unaffected).
- frequent_items: wrapper header + DataSketches' serialized sketch, which
  holds at most ``0.75 * 2**lg_max_map_size`` items. The map size is chosen
  for ids of ``item_bytes`` bytes; longer ids that would overflow the budget
  make the sketch halve its map (merge into a smaller sketch), with the
  error guarantee adjusted accordingly.

No Beam and no DataSketches here: plain arithmetic the tests check against
the real serialized sizes.
"""
import math

#: Typical item id length assumed when sizing from a budget (bytes of
#: UTF-8). Only a sizing assumption: longer ids are handled, not rejected.
DEFAULT_ITEM_BYTES = 16

# -- Count-Min sketch + candidates ---------------------------------------

#: Fixed header of a serialized Count-Min sketch (see count_min.py).
CMS_HEADER_BYTES = 48
#: Per candidate: lower and upper bound (int64 each) and id length (uint32).
CMS_CANDIDATE_OVERHEAD = 20
#: Bytes per counter (int64: a 30-day window can exceed 2**32 events).
CMS_COUNTER_BYTES = 8
#: Rows of counters when sized from a budget; failure probability per
#: estimate of the epsilon bound is e**-depth (~1.8% for 4).
DEFAULT_DEPTH = 4
#: Share of the budget given to counters when sized from a budget; the rest
#: holds candidates. Candidates carry exact counts since they entered, so
#: they decide accuracy more than the counters do: on Zipf 0.8, 10M events,
#: 8 KiB, recall@100 was 1.00 / 0.99 / 0.57 with shares 0.25 / 0.5 / 0.75
#: (bench/accuracy_report.py streams, stream and merged modes alike).
DEFAULT_COUNTER_SHARE = 0.25


def cms_fixed_bytes(width: int, depth: int) -> int:
    """Header plus counters: the part of a Count-Min sketch that never
    changes size."""
    return CMS_HEADER_BYTES + CMS_COUNTER_BYTES * width * depth


def cms_candidate_bytes(item_bytes: int) -> int:
    return CMS_CANDIDATE_OVERHEAD + item_bytes


def cms_dimensions_for_error(epsilon: float, delta: float) -> tuple[int, int]:
    """(width, depth) with ``estimate <= true + epsilon * N`` for each item
    with probability at least ``1 - delta`` (Cormode & Muthukrishnan)."""
    if not 0 < epsilon < 1:
        raise ValueError(f"epsilon must be in (0, 1), got {epsilon!r}")
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta!r}")
    return math.ceil(math.e / epsilon), math.ceil(math.log(1 / delta))


def cms_dimensions_for_budget(budget_bytes: int, depth: int = DEFAULT_DEPTH,
                              counter_share: float = DEFAULT_COUNTER_SHARE
                              ) -> tuple[int, int]:
    """(width, depth) whose counters take ``counter_share`` of the budget."""
    check_budget(budget_bytes)
    if not isinstance(depth, int) or depth < 1:
        raise ValueError(f"depth must be a positive integer, got {depth!r}")
    if not 0 < counter_share < 1:
        raise ValueError(f"counter_share must be in (0, 1), got "
                         f"{counter_share!r}")
    width = int(budget_bytes * counter_share - CMS_HEADER_BYTES) // (
        CMS_COUNTER_BYTES * depth)
    if width < 1:
        raise ValueError(f"a budget of {budget_bytes} bytes cannot hold "
                         f"{depth} rows of counters")
    return width, depth


def cms_capacity(budget_bytes: int, width: int, depth: int,
                 item_bytes: int = DEFAULT_ITEM_BYTES) -> int:
    """How many candidates of ``item_bytes``-byte ids fit beside the
    counters (at least 1, else the budget is too small)."""
    room = budget_bytes - cms_fixed_bytes(width, depth)
    capacity = room // cms_candidate_bytes(item_bytes)
    if capacity < 1:
        raise ValueError(
            f"a budget of {budget_bytes} bytes leaves no room for candidates "
            f"beside {depth}x{width} counters "
            f"({cms_fixed_bytes(width, depth)} bytes)")
    return int(capacity)


# -- DataSketches frequent items -------------------------------------------

#: Wrapper header in front of DataSketches' bytes (see frequent_items.py).
FI_HEADER_BYTES = 24
#: DataSketches' preamble of a non-empty frequent-items sketch.
FI_PREAMBLE_BYTES = 32
#: Per item: its weight (uint64) and its length (uint32).
FI_ENTRY_OVERHEAD = 12
#: DataSketches' constant: epsilon = 3.5 / maxMapSize.
FI_EPSILON_FACTOR = 3.5
FI_MIN_LG = 3
FI_MAX_LG = 26


def fi_max_items(lg_max_map_size: int) -> int:
    """DataSketches keeps at most 75% of the map's slots occupied."""
    return int(0.75 * (1 << lg_max_map_size))


def fi_epsilon(lg_max_map_size: int) -> float:
    return FI_EPSILON_FACTOR / (1 << lg_max_map_size)


def fi_max_bytes(lg_max_map_size: int,
                 item_bytes: int = DEFAULT_ITEM_BYTES) -> int:
    """Largest serialized size with ids of at most ``item_bytes`` bytes."""
    return (FI_HEADER_BYTES + FI_PREAMBLE_BYTES + fi_max_items(lg_max_map_size)
            * (FI_ENTRY_OVERHEAD + item_bytes))


def fi_lg_for_budget(budget_bytes: int,
                     item_bytes: int = DEFAULT_ITEM_BYTES) -> int:
    """Largest map size whose full sketch of ``item_bytes``-byte ids fits."""
    check_budget(budget_bytes)
    if fi_max_bytes(FI_MIN_LG, item_bytes) > budget_bytes:
        raise ValueError(
            f"a budget of {budget_bytes} bytes cannot hold the smallest "
            f"frequent-items sketch ({fi_max_bytes(FI_MIN_LG, item_bytes)} "
            f"bytes for {item_bytes}-byte ids)")
    lg = FI_MIN_LG
    while lg < FI_MAX_LG and fi_max_bytes(lg + 1, item_bytes) <= budget_bytes:
        lg += 1
    return lg


def fi_lg_for_epsilon(epsilon: float) -> int:
    """Smallest map size whose a-priori error is at most ``epsilon * N``."""
    if not 0 < epsilon < 1:
        raise ValueError(f"epsilon must be in (0, 1), got {epsilon!r}")
    lg = max(FI_MIN_LG, math.ceil(math.log2(FI_EPSILON_FACTOR / epsilon)))
    if lg > FI_MAX_LG:
        raise ValueError(f"epsilon {epsilon} needs a map larger than "
                         f"2**{FI_MAX_LG}")
    return lg


def check_budget(budget_bytes) -> int:
    if (isinstance(budget_bytes, bool)
            or not isinstance(budget_bytes, int) or budget_bytes <= 0):
        raise ValueError(f"budget_bytes must be a positive integer, got "
                         f"{budget_bytes!r}")
    return budget_bytes
