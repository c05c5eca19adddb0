"""Prometheus metrics of ``topk serve``: one ``CollectorRegistry`` per app
(two apps in one process, as in the tests, never share counters), and a
pure ASGI middleware that times every request by route template and
status."""
import time

from prometheus_client import (CollectorRegistry, Counter, Gauge, Histogram,
                               generate_latest)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

#: Request latency buckets, in seconds: the target is p99 <= 100 ms.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5,
           1.0, 2.5, 5.0, 10.0)


class Metrics:
    """The app's instruments."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self):
        self.registry = CollectorRegistry()
        self.latency = Histogram(
            "topk_serve_request_duration_seconds",
            "Time to answer a request, by route template and status.",
            ["route", "status"], buckets=BUCKETS, registry=self.registry)
        self.requests = Counter(
            "topk_serve_requests", "Requests answered, by route and status.",
            ["route", "status"], registry=self.registry)
        self.errors = Counter(
            "topk_serve_errors",
            "Requests answered with an error (4xx: client, 5xx: server), by "
            "route.", ["route", "kind"], registry=self.registry)
        self.rows = Counter(
            "topk_serve_rows_returned",
            "Rows (ranked items or series points) returned, by route.",
            ["route"], registry=self.registry)
        self.cache = Counter(
            "topk_serve_answer_cache",
            "Answer cache lookups: hit (the newest snapshot), stale (the "
            "previous answer while a refresh runs) or miss.", ["outcome"],
            registry=self.registry)
        self.snapshot_seq = Gauge(
            "topk_serve_snapshot_seq",
            "The newest committed manifest seq the server has seen.",
            registry=self.registry)
        self.snapshot_age = Gauge(
            "topk_serve_snapshot_age_seconds",
            "Seconds since the newest committed snapshot was committed.",
            registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Times every HTTP request; the route label is the matched route's
    template (``/v1/items/{item_id}/series``), never the raw path, so the
    label set stays small whatever clients ask."""

    def __init__(self, app, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = [500]

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            code = str(status[0])
            m = self.metrics
            m.latency.labels(path, code).observe(time.perf_counter() - start)
            m.requests.labels(path, code).inc()
            if status[0] >= 400:
                m.errors.labels(path, "server" if status[0] >= 500
                                else "client").inc()
