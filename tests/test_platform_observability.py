"""The Grafana dashboard only charts metrics the ingress exports; log lines are JSON with the trace id."""

from __future__ import annotations

import io
import json
import logging
import re
from pathlib import Path

from api.log_format import configure_logging, trace_id_var
from api.request_metrics import Metrics
from diagnosis.report import Diagnosis, ModelReply, Verdict

DASHBOARD = Path(__file__).resolve().parents[1] / "configs" / "grafana" / "hdx-dashboard.json"


def test_dashboard_queries_known_metrics():
    source = Path(__file__).resolve().parents[1].joinpath("api", "request_metrics.py").read_text()
    exported = {f"ray_{name}" for name in re.findall(r'(?:counter|histogram)\(\s*"(hdx_[a-z_]+)"', source)}
    assert len(exported) == 9
    dashboard = json.loads(DASHBOARD.read_text())
    used = {
        m
        for p in dashboard["panels"]
        for t in p["targets"]
        for m in re.findall(r"(ray_hdx_[a-z_]+?)(?:_total|_bucket|_sum|_count)?[{\[)]", t["expr"])
    }
    assert used and used <= exported, used - exported
    assert exported - used == set(), f"metrics without a panel: {exported - used}"


def test_metrics_are_noops_outside_ray():
    m = Metrics()
    m.requests.inc(tags={"route": "/x", "method": "GET", "status": "200"})
    m.diagnosis(
        Diagnosis(
            cache_hit=False,
            ml_predictions=[
                ModelReply(
                    ml_model="adaptive",
                    version="v1",
                    prediction_score=0.9,
                    confidence=0.8,
                    processing_time_ms=1.0,
                    round_trip_ms=3.0,
                    features_used=10,
                )
            ],
            prediction=Verdict(
                is_anomaly=True,
                anomaly_type="valve_lag",
                severity="critical",
                anomaly_score=0.9,
                confidence=0.8,
                affected_components=["valve"],
                components={},
            ),
            ensemble_score=0.9,
            ensemble_coverage=1.0,
            features_extracted=10,
            model_versions={"adaptive": "v1"},
        )
    )


def test_log_lines_are_json_with_the_trace_id():
    stream = io.StringIO()
    handler = configure_logging(True, stream=stream)
    try:
        token = trace_id_var.set("abc123")
        try:
            logging.getLogger("hdx.test").info("stored %d rows", 3, extra={"system_id": "rig-1"})
        finally:
            trace_id_var.reset(token)
        logging.getLogger("hdx.test").warning("outside a request")
    finally:
        logging.getLogger("hdx").removeHandler(handler)
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["trace_id"] == "abc123" and first["message"] == "stored 3 rows" and first["system_id"] == "rig-1"
    assert second["trace_id"] == "-" and second["level"] == "WARNING"
