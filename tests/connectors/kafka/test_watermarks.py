"""Watermark arithmetic (``topk.connectors.kafka.watermarks``)."""
from topk.connectors.kafka import watermarks as wms


def test_later_ignores_unknown_watermarks():
    assert wms.later(None, None) is None
    assert wms.later(None, 5) == 5
    assert wms.later(5, None) == 5
    assert wms.later(3, 5) == wms.later(5, 3) == 5


def test_watermark_arithmetic():
    assert wms.data_watermark(None, 1000, 100) == 900
    assert wms.data_watermark(950, 1000, 100) == 950  # never back
    assert wms.data_watermark(500, None, 100) == 500
    idle = wms.idle_watermark
    # Idle long enough and at the end: now - skew.
    assert idle(500, now_ms=10_000, last_data_ms=1_000, idle_timeout_ms=5_000,
                skew_ms=100, caught_up=True) == 9_900
    # Not idle long enough, or not at the end (broker unreachable): hold.
    assert idle(500, 10_000, 8_000, 5_000, 100, True) == 500
    assert idle(500, 10_000, 1_000, 5_000, 100, False) == 500
    # Record timestamps from the future: still never back.
    assert idle(20_000, 10_000, 1_000, 5_000, 100, True) == 20_000


def test_aligned_watermarks_confirm_on_the_next_call():
    reg = wms.AlignedWatermarks()
    parts = (0, 1)
    assert reg.begin("r", parts, 0) is None
    # Partition 0 reached 100, but it is pending and 1 is unknown.
    assert reg.end("r", parts, 0, 100) is None
    assert reg.begin("r", parts, 1) is None
    assert reg.end("r", parts, 1, 50) is None  # 0 confirmed, 1 pending
    assert reg.begin("r", parts, 0) == 100
    assert reg.begin("r", parts, 1) == 50
    assert reg.end("r", parts, 1, 70) == 50  # min of confirmed 100, 50
    assert reg.begin("r", parts, 1) == 70
    assert reg.end("r", parts, 0, 90) == 70  # never back: 0 stays at 100
    assert reg.end("other", parts, 0, 5) is None  # reads do not mix
    assert wms.aligned_minimum([3, 1, 2]) == 1
    assert wms.aligned_minimum([3, None]) is None


def test_a_read_whose_partitions_are_all_done_is_forgotten():
    # The table is process-wide: finished bounded reads must not pile up.
    reg = wms.AlignedWatermarks()
    parts = (0, 1)
    reg.begin("r", parts, 0)
    assert reg.end("r", parts, 0, wms.DONE) is None  # 1 unknown
    reg.begin("open", parts, 0)
    assert len(reg) == 2
    reg.begin("r", parts, 1)
    assert reg.end("r", parts, 1, 40) is None  # 0's DONE is still pending
    reg.begin("r", parts, 1)
    reg.end("r", parts, 1, wms.DONE)  # the last partition of "r" is done
    assert len(reg) == 1  # "open" (unbounded, still running) stays
    assert reg.end("open", parts, 0, 10) is None
