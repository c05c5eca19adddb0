"""Start positions and offset plans (``topk.connectors.kafka.plans``), no
broker: ``plan_topic`` against a real one is tested in
tests/sources/test_kafka_source.py."""
import pytest

from topk.connectors.kafka import plans


def test_parse_start():
    assert plans.parse_start("earliest") == ("earliest", None)
    assert plans.parse_start(" Latest ") == ("latest", None)
    assert plans.parse_start("committed") == ("committed", None)
    assert plans.parse_start(1714521600000) == ("timestamp", 1714521600000)
    assert plans.parse_start("1714521600000") == ("timestamp", 1714521600000)
    assert plans.parse_start("2024-05-01T00:00:00Z") == ("timestamp",
                                                         1714521600000)
    for bad in ("soon", -1, True, 1.5, None):
        with pytest.raises(ValueError):
            plans.parse_start(bad)


def test_resolve_start_offset_stays_inside_the_log():
    r = plans.resolve_start_offset
    assert r("earliest", 5, 20) == 5
    assert r("latest", 5, 20) == 20
    assert r("committed", 5, 20, committed=12) == 12
    assert r("committed", 5, 20, committed=None) == 5  # fallback: earliest
    assert r("committed", 5, 20, committed=None,
             committed_fallback="latest") == 20
    assert r("committed", 5, 20, committed=2) == 5  # deleted by retention
    assert r("committed", 5, 20, committed=99) == 20
    assert r("timestamp", 5, 20, by_time=7) == 7
    assert r("timestamp", 5, 20, by_time=None) == 20  # nothing that late
    with pytest.raises(ValueError):
        r("sideways", 0, 1)


def test_plan_partitions_and_splits():
    got = plans.plan_partitions("t", {1: 3, 0: 0}, {0: 10, 1: 2},
                                bounded=True)
    assert [(p.partition, p.start, p.stop) for p in got] == [(0, 0, 10),
                                                            (1, 3, 3)]
    assert all(p.all_partitions == (0, 1) for p in got)
    open_plans = plans.plan_partitions("t", {0: 4}, {0: 9}, bounded=False)
    assert open_plans[0].stop is None and not open_plans[0].bounded
    assert open_plans[0].restriction_stop == plans.UNBOUNDED_STOP
    assert plans.split_offsets(0, 10, 0) == [(0, 10)]
    assert plans.split_offsets(0, 17, 8) == [(0, 8), (8, 17)]  # no tail of 1
    assert plans.split_offsets(0, 10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert plans.split_offsets(0, 12, 4) == [(0, 4), (4, 8), (8, 12)]
    assert plans.split_offsets(5, 6, 4) == [(5, 6)]


def test_plan_topic_checks_its_arguments_before_calling_a_broker():
    with pytest.raises(ValueError, match="group_id"):
        plans.plan_topic("localhost:1", "t", start="committed")
    with pytest.raises(ValueError, match="start position"):
        plans.plan_topic("localhost:1", "t", start="tomorrow")
