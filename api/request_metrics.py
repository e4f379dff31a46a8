"""The ingress's Prometheus metrics, exported by Ray's metrics agent.

Inside a Serve replica these are ``ray.serve.metrics`` objects (Serve adds the
deployment, replica and application tags); Ray exports them on each node's
metrics port with a ``ray_`` prefix, e.g. ``ray_hdx_requests_total``. Outside
Ray (plain unit tests, the CLI) there is no agent, so they are no-ops.
"""

from __future__ import annotations

from functools import lru_cache

from diagnosis.report import Diagnosis
from storage.telemetry import make_counter as counter
from storage.telemetry import make_histogram as histogram


class Metrics:
    def __init__(self) -> None:
        self.requests = counter("hdx_requests", "API calls by route, method and status", ("route", "method", "status"))
        self.request_latency = histogram("hdx_request_latency_ms", "API call latency in ms", ("route", "method"))
        self.prediction_latency = histogram(
            "hdx_prediction_latency_ms", "model round-trip time per diagnosed request, ms", ("model",)
        )
        self.cache = counter("hdx_prediction_cache", "prediction cache lookups by result (hit|miss)", ("result",))
        self.anomalies = counter("hdx_anomalies", "diagnoses flagged as anomalies", ("anomaly_type", "severity"))
        self.ingestion_rows = counter(
            "hdx_ingestion_rows", "ingested cycles by outcome (stored|duplicate|rejected)", ("outcome",)
        )
        self.feedback = counter(
            "hdx_feedback", "operator feedback received, by whether the model learned", ("learned",)
        )
        self.auth_failures = counter("hdx_auth_failures", "requests refused for missing or bad credentials", ("route",))
        self.rate_limited = counter(
            "hdx_rate_limited", "requests refused by the rate limit or quota", ("reason", "tier")
        )

    def diagnosis(self, d: Diagnosis) -> None:
        """Record one served diagnosis (cache hits included)."""
        self.cache.inc(tags={"result": "hit" if d.cache_hit else "miss"})
        if not d.cache_hit:
            for model in d.ml_predictions:
                latency = model.round_trip_ms or model.processing_time_ms or 0.0
                self.prediction_latency.observe(float(latency), tags={"model": model.ml_model})
        if d.prediction.is_anomaly:
            self.anomalies.inc(tags={"anomaly_type": d.prediction.anomaly_type, "severity": d.prediction.severity})


@lru_cache(maxsize=1)
def get_metrics() -> Metrics:
    """One set per process: Ray refuses to register the same metric name twice with other tags."""
    return Metrics()
