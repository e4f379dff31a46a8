"""/api/v1/ingestion/cycles: sensor cycles from a system, stored once each.

Every cycle is checked with ``hydraulics.validation.cycle_arrays`` (the same
check every entry point uses); rejected ones are reported per item. The accepted
ones are committed in one transaction before the answer, so a 2xx means stored.
Idempotency keys are unique per system: a retried batch stores nothing twice.
With ``diagnose: true`` the newly stored cycles are diagnosed afterwards and the
predictions go to the history; a failing ensemble, or a history that cannot
store the predictions, leaves the readings stored and is reported in
``diagnosis_error`` (no ``prediction_id`` is handed out for a prediction that was
not stored).
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from api.deps import PrincipalDep, SessionDep, diagnosis_target, load_accessible_system
from api.errors import InvalidInput, error_responses
from api.request_metrics import get_metrics
from api.schemas.ingestion import IngestItem, IngestRequest, IngestResponse
from api.services.diagnosis_client import get_diagnosis
from api.services.prediction_history import HistoryUnavailable, store_predictions
from diagnosis.failures import describe
from diagnosis.report import CycleRejected, Diagnosis
from hydraulics.channels import canonical_name
from hydraulics.validation import SensorDataError, cycle_arrays
from storage.repositories import readings as readings_repo
from storage.tables import utcnow

router = APIRouter(prefix="/api/v1/ingestion", tags=["ingestion"])


def _check(cycle, seen: set[str]) -> CycleRejected | None:
    """Why the cycle is refused, or None when it may be stored."""
    if cycle.idempotency_key in seen:
        return CycleRejected(
            channel=None,
            problem="duplicate idempotency_key in this batch",
            message=f"idempotency_key {cycle.idempotency_key!r} appears earlier in this batch",
        )
    seen.add(cycle.idempotency_key)
    try:
        cycle_arrays(cycle.sensor_data)
    except SensorDataError as exc:
        return CycleRejected.from_error(exc)
    return None


@router.post("/cycles", response_model=IngestResponse, responses=error_responses(403, 404, 413, 422))
async def ingest_cycles(
    body: IngestRequest, request: Request, principal: PrincipalDep, session: SessionDep
) -> IngestResponse:
    settings = request.app.state.settings
    if len(body.cycles) > settings.max_ingestion_cycles:
        raise InvalidInput(
            ["body", "cycles"],
            f"at most {settings.max_ingestion_cycles} cycles per request, got {len(body.cycles)}",
            type="too_long",
        )
    request.state.system_id = body.system_id
    system = await load_accessible_system(session, principal, body.system_id, write=True)

    items: list[IngestItem] = []
    accepted: dict[str, tuple[int, dict]] = {}  # key → (index, canonical sensor_data)
    seen: set[str] = set()
    for i, cycle in enumerate(body.cycles):
        error = _check(cycle, seen)
        items.append(
            IngestItem(
                index=i,
                idempotency_key=cycle.idempotency_key,
                status="stored" if error is None else "rejected",
                error=error,
            )
        )
        if error is None:
            # Stored under catalogue names, so readings read back the same whatever alias was sent.
            accepted[cycle.idempotency_key] = (i, {canonical_name(k): v for k, v in cycle.sensor_data.items()})

    rows = [
        {"idempotency_key": key, "started_at": body.cycles[i].started_at, "sensor_data": data}
        for key, (i, data) in accepted.items()
    ]
    new_keys = await readings_repo.insert_new(session, body.system_id, rows)
    await session.commit()
    for key, (i, _) in accepted.items():
        if key not in new_keys:
            items[i].status = "duplicate"

    counts = {s: sum(1 for it in items if it.status == s) for s in ("stored", "duplicate", "rejected")}
    metrics = get_metrics()
    for outcome, n in counts.items():
        if n:
            metrics.ingestion_rows.inc(n, tags={"outcome": outcome})

    diagnosis_error = None
    if body.diagnose and new_keys:
        diagnosis_error = await _diagnose(request, system, [accepted[k] for k in accepted if k in new_keys], items)
    return IngestResponse(
        system_id=body.system_id,
        stored=counts["stored"],
        duplicates=counts["duplicate"],
        rejected=counts["rejected"],
        items=items,
        diagnosis_error=diagnosis_error,
        trace_id=request.state.trace_id,
        received_at=utcnow(),
    )


async def _diagnose(request: Request, system, cycles: list[tuple[int, dict]], items: list[IngestItem]) -> str | None:
    """Diagnose the stored cycles in chunks the ensemble accepts; fill in the items."""
    system_id = system.id
    try:
        target = diagnosis_target(system)
    except InvalidInput as exc:  # no profile fits the system: the readings are stored all the same
        return exc.detail[0]["msg"]
    chunk = request.app.state.settings.max_batch_items
    for start in range(0, len(cycles), chunk):
        part = cycles[start : start + chunk]
        try:
            results = await get_diagnosis(request).diagnose([data for _, data in part], target=target)
        except Exception as exc:  # the readings are stored; diagnosis can be rerun from them later
            return describe(exc)
        served = [(r, data) for r, (_, data) in zip(results, part) if isinstance(r, Diagnosis)]
        try:
            ids = await store_predictions(request, system_id, served, source="ingestion")
        except HistoryUnavailable as exc:
            return exc.detail
        it_ids = iter(ids)
        for r, (i, _) in zip(results, part):
            if isinstance(r, Diagnosis):
                items[i].prediction_id = next(it_ids)
                items[i].diagnosis = r.prediction
            else:
                items[i].error = r
    return None
