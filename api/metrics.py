"""The ingress's Prometheus metrics, exported by Ray's metrics agent.

Inside a Serve replica these are ``ray.serve.metrics`` objects (Serve adds the
deployment, replica and application tags); Ray exports them on each node's
metrics port with a ``ray_`` prefix, e.g. ``ray_hdx_requests_total``. Outside
Ray (plain unit tests, the CLI) there is no agent, so they are no-ops.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from functools import lru_cache

LATENCY_BOUNDARIES_MS = [1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000]


class _Noop:
    def inc(self, value: float = 1.0, tags: dict[str, str] | None = None) -> None:
        pass

    def observe(self, value: float, tags: dict[str, str] | None = None) -> None:
        pass


class Metrics:
    def __init__(self) -> None:
        ray = sys.modules.get("ray")  # never import Ray just to find out it is not running
        live = ray is not None and ray.is_initialized()
        if live:
            from ray.serve.metrics import Counter, Histogram
        else:
            Counter = Histogram = None  # noqa: N806

        def counter(name: str, description: str, tags: tuple[str, ...] = ()):
            return Counter(name, description=description, tag_keys=tags) if live else _Noop()

        def histogram(name: str, description: str, tags: tuple[str, ...] = ()):
            return Histogram(name, description=description, boundaries=LATENCY_BOUNDARIES_MS,
                             tag_keys=tags) if live else _Noop()

        self.requests = counter("hdx_requests", "API calls by route, method and status",
                                ("route", "method", "status"))
        self.request_latency = histogram("hdx_request_latency_ms", "API call latency in ms", ("route", "method"))
        self.prediction_latency = histogram("hdx_prediction_latency_ms",
                                            "model round-trip time per diagnosed request, ms", ("model",))
        self.cache = counter("hdx_prediction_cache", "prediction cache lookups by result (hit|miss)", ("result",))
        self.anomalies = counter("hdx_anomalies", "diagnoses flagged as anomalies", ("anomaly_type", "severity"))
        self.ingestion_rows = counter("hdx_ingestion_rows", "ingested cycles by outcome (stored|duplicate|rejected)",
                                      ("outcome",))
        self.feedback = counter("hdx_feedback", "operator feedback received, by whether the model learned",
                                ("learned",))
        self.auth_failures = counter("hdx_auth_failures", "requests refused for missing or bad credentials",
                                     ("route",))
        self.rate_limited = counter("hdx_rate_limited", "requests refused by the rate limit or quota",
                                    ("reason", "tier"))

    def diagnosis(self, answer: Mapping) -> None:
        """Record one served diagnosis (an ``ok`` item of ``DiagnosisEnsemble.diagnose``)."""
        cache_hit = bool(answer.get("cache_hit"))
        self.cache.inc(tags={"result": "hit" if cache_hit else "miss"})
        if not cache_hit:
            for model in answer.get("ml_predictions", []):
                latency = model.get("round_trip_ms") or model.get("processing_time_ms") or 0.0
                self.prediction_latency.observe(float(latency), tags={"model": model["ml_model"]})
        prediction = answer.get("prediction", {})
        if prediction.get("is_anomaly"):
            self.anomalies.inc(tags={"anomaly_type": str(prediction.get("anomaly_type")),
                                     "severity": str(prediction.get("severity"))})


@lru_cache(maxsize=1)
def get_metrics() -> Metrics:
    """One set per process: Ray refuses to register the same metric name twice with other tags."""
    return Metrics()
