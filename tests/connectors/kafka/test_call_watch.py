"""``CallWatch``: a read call stuck far past its deadline is reported
once, with its partition, its age and the stack it waits in."""
import threading
import time

from topk.connectors.kafka.call_watch import CallWatch


def test_a_stuck_call_is_reported_once_with_its_stack():
    watch = CallWatch(slow_s=30, check_every_s=3600)
    started, release = threading.Event(), threading.Event()

    def waiting_in_the_client():
        release.wait(30)

    def call():
        watch.begin("kafka events/3")
        started.set()
        try:
            waiting_in_the_client()
        finally:
            watch.end()

    thread = threading.Thread(target=call)
    thread.start()
    try:
        assert started.wait(10)
        now = time.monotonic()
        assert watch.slow(now) == []  # just begun
        [message] = watch.slow(now + 31)
        assert message.startswith("kafka events/3: a read call has run 31 s")
        assert "waiting_in_the_client" in message
        assert watch.slow(now + 60) == []  # reported once
    finally:
        release.set()
        thread.join(10)
    assert watch.slow(time.monotonic() + 3600) == []  # ended


def test_calls_that_end_are_never_reported():
    watch = CallWatch(slow_s=0.0, check_every_s=3600)
    watch.begin("kafka events/0")
    watch.end()
    assert watch.slow(time.monotonic() + 100) == []
