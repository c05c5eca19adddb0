"""Beam ``Timestamp`` s <-> epoch milliseconds, the project's instants.

Beam counts microseconds; everything Beam-free here (events, windows,
watermarks, panes) counts milliseconds, so the Beam wiring converts at its
edges with these two.
"""
from apache_beam.utils.timestamp import Timestamp


def epoch_ms(ts: Timestamp | None) -> int | None:
    """A Beam timestamp -> epoch ms (rounded down); ``None`` stays ``None``
    (a watermark estimator that has no watermark yet)."""
    return None if ts is None else ts.micros // 1000


def beam_timestamp(ms: int) -> Timestamp:
    """Epoch ms -> a Beam timestamp."""
    return Timestamp(micros=int(ms) * 1000)
