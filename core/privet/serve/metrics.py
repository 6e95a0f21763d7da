"""Prometheus metrics of one gateway, in its own registry (never the process global).

Labels are bounded: the route template (never the raw path a client sent), a served
model's name or empty, the status code and a fixed set of rejection reasons.
"""

from __future__ import annotations

#: Latency buckets in seconds: sub-millisecond models up to the slowest timeout.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    """Requests, latency, batch sizes and rejections by reason."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("privet_serve_requests", "Requests answered, by route, model "
                                "and status code.", ["route", "model", "status"], registry=self.registry)
        self.latency = Histogram("privet_serve_request_seconds", "Time from the request's arrival "
                                 "to its answer.", ["route"], buckets=LATENCY_BUCKETS,
                                 registry=self.registry)
        self.batch_size = Histogram("privet_serve_batch_records", "Records per model call (a "
                                    "micro-batch of one or more requests).", ["model"],
                                    buckets=BATCH_BUCKETS, registry=self.registry)
        self.rejections = Counter("privet_serve_rejections", "Requests refused, by reason.",
                                  ["reason"], registry=self.registry)

    def observe(self, route: str, model: str, status: int, seconds: float, reason: str | None) -> None:
        self.requests.labels(route, model, str(status)).inc()
        self.latency.labels(route).observe(seconds)
        if reason and status >= 400:
            self.rejections.labels(reason).inc()

    def batch(self, model: str, size: int) -> None:
        self.batch_size.labels(model).observe(size)

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST

