"""Response models of /api/v1/users."""

from __future__ import annotations

from pydantic import BaseModel


class Limits(BaseModel):
    tier: str
    per_minute: int
    window_s: int
    daily_quota: int


class MeOut(BaseModel):
    id: int
    username: str
    role: str
    tier: str
    via: str
    api_key_id: int | None
    limits: Limits


class UsageOut(BaseModel):
    tier: str
    per_minute: int
    daily_quota: int
    used_today: int
    quota_left: int
    quota_resets_in_s: int
    calls: dict[str, dict[str, int]]  # day → "METHOD /route" → calls
    note: str = "calls are counted from the audit trail, which is written every few seconds"
