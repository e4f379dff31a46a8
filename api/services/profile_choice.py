"""The equipment profiles the ingress can choose from, read from the model store.

A system's profile is chosen when it is registered and whenever its channels or
its requested profile change (``choose``): explicitly (``profile`` in the
request: it must be trained and the system must report its channels), or
automatically, the best trained profile whose channels the system reports
(``diagnosis.profiles.choose_profile``). The choice and its reason are stored
with the system, so a system's diagnoses do not change profile behind its
owner's back when someone trains a new one.
"""

from __future__ import annotations

import asyncio
import time

from fastapi import Request

from api.errors import InvalidInput
from diagnosis.profiles import Profile, ProfileChoice, choose_profile
from diagnosis.store import ModelStore

REFRESH_S = 30.0


async def trained_profiles(request: Request) -> list[Profile]:
    """The store's trained profiles, re-read at most every ``REFRESH_S``."""
    state = request.app.state
    cached = getattr(state, "trained_profiles", None)
    if cached is None or time.monotonic() - cached[0] > REFRESH_S:
        store = ModelStore(state.settings.model_store_uri)
        cached = state.trained_profiles = (time.monotonic(), await asyncio.to_thread(store.trained_profiles))
    return cached[1]


async def choose(request: Request, channels: list[str], requested: str | None) -> ProfileChoice:
    """The profile a system with ``channels`` gets; 422 for a requested profile that is not
    trained or needs channels the system does not report."""
    trained = await trained_profiles(request)
    if requested is None:
        return choose_profile(channels, trained)
    by_name = {p.name: p for p in trained}
    if requested not in by_name:
        raise InvalidInput(
            ["body", "profile"], f"profile {requested!r} is not trained; trained profiles: {sorted(by_name)}"
        )
    missing = sorted(set(by_name[requested].channels) - set(channels)) if channels else []
    if missing:
        raise InvalidInput(
            ["body", "profile"], f"profile {requested} needs channels {missing} that the system does not report"
        )
    return ProfileChoice(requested, f"set explicitly: {requested}")
