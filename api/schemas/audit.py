"""Response models of /api/v1/audit."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict


class AuditRecordOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    created_at: datetime
    user_id: int | None
    username: str | None
    api_key_id: int | None
    method: str
    route: str
    path: str
    status: int
    outcome: str
    latency_ms: float
    system_id: str | None
    trace_id: str
    client: str | None


class AuditPage(BaseModel):
    items: list[AuditRecordOut]
    limit: int
    offset: int
