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


# --- The broker check before a run ---------------------------------------

import socket  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture
def closed_port():
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def silent_listener():
    """A TCP port that accepts connections and never answers (not Kafka)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    accepted = []
    stop = threading.Event()

    def accept():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        for conn in accepted:
            conn.close()
        server.close()


def test_bootstrap_addresses():
    assert client.bootstrap_addresses("a:1, b:9092") == [("a", 1),
                                                         ("b", 9092)]
    assert client.bootstrap_addresses(["[::1]:9092"]) == [("::1", 9092)]
    for bad in ("a", "a:", ":1", "a:0", "a:70000", "a:x", ""):
        with pytest.raises(ValueError, match="bootstrap address"):
            client.bootstrap_addresses(bad)


def test_a_closed_port_fails_at_once_naming_it(closed_port):
    started = time.monotonic()
    with pytest.raises(client.BrokerUnavailable) as e:
        client.check_broker(f"127.0.0.1:{closed_port}", "events")
    assert time.monotonic() - started < 2
    assert str(e.value) == (f"no Kafka broker reachable at 127.0.0.1:"
                            f"{closed_port} (connection refused)")


def test_every_address_is_tried(closed_port):
    with pytest.raises(client.BrokerUnavailable) as e:
        client.check_broker(f"127.0.0.1:{closed_port},no-such-host.invalid:1")
    assert f"127.0.0.1:{closed_port} connection refused" in str(e.value)
    assert "no-such-host.invalid:1 unknown host" in str(e.value)


def test_a_listener_that_is_not_kafka_times_out(silent_listener):
    started = time.monotonic()
    with pytest.raises(client.BrokerUnavailable,
                       match=f"no Kafka broker answered at 127.0.0.1:"
                       f"{silent_listener} within 2 s"):
        client.check_broker(f"127.0.0.1:{silent_listener}", timeout_s=2)
    assert time.monotonic() - started < 5


@pytest.mark.integration
def test_a_real_broker_passes_and_a_missing_topic_is_named(kafka_broker):
    from topk.loadgen.producer import ensure_topic
    topic = f"check-{uuid.uuid4().hex[:8]}"
    ensure_topic(kafka_broker.bootstrap, topic, 2)
    assert topic in client.check_broker(kafka_broker.bootstrap, topic)
    with pytest.raises(client.TopicMissing) as e:
        client.check_broker(kafka_broker.bootstrap, topic + "-absent")
    assert str(e.value) == (f"topic {topic}-absent does not exist on "
                            f"{kafka_broker.bootstrap}")
    # Checking creates nothing (the broker auto-creates topics on produce).
    assert topic + "-absent" not in client.check_broker(
        kafka_broker.bootstrap)
