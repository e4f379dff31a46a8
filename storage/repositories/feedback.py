"""Operator feedback on stored predictions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from storage.tables import Feedback


async def add(
    session: AsyncSession,
    *,
    prediction_id: int,
    system_id: str,
    user_id: int | None,
    components: dict[str, int],
    note: str | None,
) -> Feedback:
    feedback = Feedback(
        prediction_id=prediction_id, system_id=system_id, user_id=user_id, components=components, note=note, learned={}
    )
    session.add(feedback)
    await session.flush()
    return feedback


async def set_learned(session: AsyncSession, feedback: Feedback, learned: dict[str, Any]) -> None:
    feedback.learned = learned
    await session.flush()


async def for_prediction(session: AsyncSession, prediction_id: int) -> Sequence[Feedback]:
    query = select(Feedback).where(Feedback.prediction_id == prediction_id).order_by(Feedback.id)
    return (await session.scalars(query)).all()
