"""Hypothesis strategies and the Counter oracle shared by the sketch tests."""
import collections

from hypothesis import strategies as st

# A small alphabet of ids makes collisions, evictions and re-entries common;
# a few long and non-ASCII ids exercise the variable-length hash path.
ITEMS = [f"i{n}" for n in range(40)] + ["", "é", "日本語-id", "x" * 40,
                                       "item-000001", "😀" * 5]

counts = st.one_of(st.integers(1, 5), st.integers(1, 1000),
                   st.just(0))
batch = st.lists(st.tuples(st.sampled_from(ITEMS), counts), max_size=30)
#: A stream: a list of batches of (item, count) pairs, repeats allowed.
stream = st.lists(batch, min_size=0, max_size=8)


def truth(*streams) -> collections.Counter:
    """Exact counts of one or more streams (the oracle)."""
    c = collections.Counter()
    for s in streams:
        for b in s:
            for item, n in b:
                c[item] += n
    return +c  # drop zeros


def columns(b):
    return [i for i, _ in b], [n for _, n in b]


def others_at_least(true: collections.Counter, item: str) -> int:
    """How many other items have a true count >= that of ``item``."""
    mine = true[item]
    return sum(1 for j, c in true.items() if j != item and c >= mine)
