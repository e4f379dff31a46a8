"""Served diagnoses into the prediction history: the one place they are written.

The predict, batch and ingestion routes call ``store_predictions`` after the answer
is computed; the history and feedback routes read a stored one with
``load_prediction``. The rows go to ``app.state.history``, a
``storage.batch_writer.BatchWriter`` on ``storage.repositories.predictions.add_many``:
concurrent requests share one transaction (group commit), which keeps the history
off the critical path, and each caller gets the ids of its own rows
(``X-Prediction-ID``).

A row that cannot be stored is ``HistoryUnavailable`` (a 503 with ``Retry-After``), not
a diagnosis without an id: a 200 promises that feedback can refer to the diagnosis and
that the assistant sees it as the system's latest.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from fastapi import Request
from sqlalchemy.ext.asyncio import AsyncSession

from api.errors import UNAVAILABLE_RETRY_S, NotFound, Unavailable
from api.request_metrics import get_metrics
from diagnosis.report import Diagnosis
from storage.repositories import predictions as predictions_repo
from storage.tables import PredictionRecord

log = logging.getLogger("hdx.history")


class HistoryUnavailable(Unavailable):
    """The database's reason is logged, not answered: it can quote other requests' rows."""

    def __init__(self, n: int, system_id: str) -> None:
        super().__init__(
            f"{n} diagnosis(es) of system {system_id!r} could not be stored in the prediction history; retry later",
            headers={"Retry-After": UNAVAILABLE_RETRY_S},
        )


async def store_predictions(
    request: Request, system_id: str, served: Sequence[tuple[Diagnosis, Mapping]], source: str, *, store: bool = True
) -> list[int] | None:
    """Store (diagnosis, raw sensor_data) pairs of served diagnoses; return their ids.

    Also counts them in the metrics and hands them to the payload log (which keeps a
    sample). ``store=False`` (a caller who may only read the system) counts and logs
    them and returns None. ``HistoryUnavailable`` when the database
    refuses them.
    """
    metrics = get_metrics()
    for diagnosis, _ in served:
        metrics.diagnosis(diagnosis)
    if not store:
        _log_payloads(request, system_id, served, source)
        return None
    if not served:
        return []
    principal = getattr(request.state, "principal", None)
    rows = [
        predictions_repo.row(
            system_id,
            diagnosis,
            raw,
            trace_id=request.state.trace_id,
            source=source,
            user_id=principal.user_id if principal else None,
        )
        for diagnosis, raw in served
    ]
    try:
        ids = await request.app.state.history.write(rows)
    except Exception as exc:
        log.exception("could not store %d predictions of system %s", len(rows), system_id)
        raise HistoryUnavailable(len(rows), system_id) from exc
    _log_payloads(request, system_id, served, source)  # only what is served: after the history took it
    return ids


def _log_payloads(request: Request, system_id: str, served: Sequence[tuple[Diagnosis, Mapping]], source: str) -> None:
    """Hand the served diagnoses to the payload log, which keeps a sample (``storage.payload_log``)."""
    payloads = getattr(request.app.state, "payloads", None)
    if payloads is not None:
        for diagnosis, raw in served:
            payloads.record(request.state.trace_id, system_id, source, diagnosis, raw)


async def load_prediction(session: AsyncSession, system_id: str, prediction_id: int) -> PredictionRecord:
    """A stored prediction of the system; ``NotFound`` when there is none (or it is another system's)."""
    record = await predictions_repo.get(session, system_id, prediction_id)
    if record is None:
        raise NotFound(f"prediction {prediction_id} of system {system_id!r} not found")
    return record
