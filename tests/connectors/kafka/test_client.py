"""Consumer settings and retry backoff (``topk.connectors.kafka.client``)."""
from topk.connectors.kafka import client


def test_consumer_config_keeps_auto_commit_off():
    config = client.consumer_config(
        "b:9092", "g", "me",
        {"fetch_max_bytes": 1, "enable_auto_commit": True})
    assert config["bootstrap_servers"] == "b:9092"
    assert config["group_id"] == "g" and config["client_id"] == "me"
    assert config["fetch_max_bytes"] == 1  # the user's override wins
    assert config["enable_auto_commit"] is False  # offsets are the runner's
    assert config["auto_offset_reset"] == "none"
    assert "client_id" not in client.consumer_config("b:9092")


def test_backoff_grows_and_resets():
    b = client.Backoff(base=1.0, cap=4.0)
    delays = [b.next() for _ in range(5)]
    assert 0.5 <= delays[0] <= 1.0 and all(d <= 4.0 for d in delays)
    assert delays[-1] >= 2.0
    b.reset()
    assert b.next() <= 1.0
