"""Alert delivery: a log line, a Kafka topic, a webhook.

Every sink takes one alert (a JSON-able dict) at a time and says whether it
was delivered; none raises. ``Deliverer`` sends each alert to every
configured sink and counts what was delivered and what failed
(``Deliverer.stats``): a failing receiver costs its bounded retries, never
the watcher.

- **log**: one JSON line per alert on stdout (and a logger line).
- **kafka**: one message per alert on a topic (kafka-python), key = the
  alert id, value = the alert JSON.
- **webhook**: an HTTP POST of the alert JSON. Connection errors, timeouts,
  429 and 5xx answers are retried up to ``attempts`` times in all, waiting
  ``backoff_s``, then twice that, ... (at most ``max_backoff_s``) between
  attempts; other 4xx answers are not retried.
"""
import json
import logging
import sys
import time

from topk.alerts.rules import Delivery, KafkaTarget, WebhookTarget

_LOG = logging.getLogger(__name__)


def encode(alert: dict) -> bytes:
    return json.dumps(alert, sort_keys=True, separators=(",", ":")).encode()


class LogSink:
    name = "log"

    def __init__(self, stream=None):
        self.stream = stream

    def send(self, alert: dict) -> bool:
        try:
            out = self.stream or sys.stdout
            out.write(encode(alert).decode() + "\n")
            out.flush()
            _LOG.info("alert %s", alert.get("message", alert.get("alert_id")))
            return True
        except (OSError, ValueError) as e:
            _LOG.warning("alert log failed: %s", e)
            return False

    def close(self) -> None:
        pass


class KafkaSink:
    """Alerts to a Kafka topic; the producer is made on first use and made
    again after a failure."""
    name = "kafka"

    def __init__(self, target: KafkaTarget, timeout_s: float = 10.0,
                 down_s: float = 30.0):
        self.target = target
        self.timeout_s = timeout_s
        #: After the broker could not be reached, alerts fail at once for
        #: this long instead of each waiting ``timeout_s``.
        self.down_s = down_s
        self._down_until = 0.0
        self._producer = None

    def _connect(self):
        from kafka import KafkaProducer
        if self._producer is None:
            if time.monotonic() < self._down_until:
                raise ConnectionError("broker unreachable recently")
            try:
                self._producer = KafkaProducer(
                    bootstrap_servers=self.target.bootstrap,
                    client_id="topk-alert", acks="all", retries=3,
                    bootstrap_timeout_ms=int(self.timeout_s * 1000),
                    max_block_ms=int(self.timeout_s * 1000),
                    request_timeout_ms=int(self.timeout_s * 1000))
            except Exception:
                self._down_until = time.monotonic() + self.down_s
                raise
        return self._producer

    def send(self, alert: dict) -> bool:
        try:
            producer = self._connect()
            producer.send(self.target.topic, key=str(
                alert.get("alert_id", "")).encode(), value=encode(alert)
            ).get(timeout=self.timeout_s)
            return True
        except Exception as e:  # noqa: BLE001 - a sink never raises
            _LOG.warning("alert to Kafka topic %s at %s failed: %s",
                         self.target.topic, self.target.bootstrap,
                         str(e).splitlines()[0] if str(e) else type(e)
                         .__name__)
            self.close()
            return False

    def close(self) -> None:
        if self._producer is not None:
            try:
                self._producer.close(timeout=2)
            except Exception:  # noqa: BLE001
                pass
            self._producer = None


class WebhookSink:
    """Alerts POSTed as JSON, with bounded retries and exponential
    back-off (``sleep`` is injectable for tests)."""
    name = "webhook"

    def __init__(self, target: WebhookTarget, sleep=time.sleep):
        self.target = target
        self.sleep = sleep
        self._client = None
        self.attempts_made = 0  # every POST tried, for the stats

    def send(self, alert: dict) -> bool:
        import httpx
        if self._client is None:
            self._client = httpx.Client(timeout=self.target.timeout_s)
        headers = {"Content-Type": "application/json",
                   "User-Agent": "topk-alert", **dict(self.target.headers)}
        body = encode(alert)
        delay = self.target.backoff_s
        why = "no attempt"
        for attempt in range(1, self.target.attempts + 1):
            self.attempts_made += 1
            try:
                response = self._client.post(self.target.url, content=body,
                                             headers=headers)
                if response.status_code < 300:
                    return True
                why = f"HTTP {response.status_code}"
                if response.status_code < 500 and \
                        response.status_code != 429:
                    break  # the receiver refuses it: retrying will not help
            except httpx.HTTPError as e:
                why = f"{type(e).__name__}: {e}" if str(e) else \
                    type(e).__name__
            if attempt < self.target.attempts:
                _LOG.info("webhook %s: %s (attempt %d of %d), retrying in "
                          "%.2f s", self.target.url, why, attempt,
                          self.target.attempts, delay)
                self.sleep(delay)
                delay = min(delay * 2, self.target.max_backoff_s)
        _LOG.warning("alert %s to webhook %s failed after %d attempt(s): %s",
                     alert.get("alert_id"), self.target.url, attempt, why)
        return False

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


class Deliverer:
    """Sends alerts to every sink of a ``Delivery``; ``stats`` counts
    ``delivered`` and ``failed`` per sink."""

    def __init__(self, delivery: Delivery | None = None, sinks=None,
                 log_stream=None):
        if sinks is None:
            delivery = delivery or Delivery()
            sinks = []
            if delivery.log:
                sinks.append(LogSink(log_stream))
            if delivery.kafka is not None:
                sinks.append(KafkaSink(delivery.kafka))
            if delivery.webhook is not None:
                sinks.append(WebhookSink(delivery.webhook))
        self.sinks = list(sinks)
        self.stats = {"delivered": {s.name: 0 for s in self.sinks},
                      "failed": {s.name: 0 for s in self.sinks}}

    def deliver(self, alert: dict) -> dict[str, bool]:
        """Send ``alert`` to every sink; returns {sink: delivered}."""
        result = {}
        for sink in self.sinks:
            try:
                ok = bool(sink.send(alert))
            except Exception as e:  # noqa: BLE001 - never crash the watcher
                _LOG.warning("alert sink %s failed: %s", sink.name, e)
                ok = False
            result[sink.name] = ok
            self.stats["delivered" if ok else "failed"][sink.name] += 1
        return result

    def close(self) -> None:
        for sink in self.sinks:
            try:
                sink.close()
            except Exception:  # noqa: BLE001
                pass
