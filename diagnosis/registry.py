"""The model families HDX trains and serves: the one list everything else derives from.

Training (``pipelines.train``), the model store, the ensemble weights, the Serve
deployments built by ``deployments.builder`` and the batch job's output columns
all read ``FAMILIES``. Adding a family means writing its ``FamilyModel`` and adding
one line here (and, for serving, its deployment entry in ``serve_config.yaml``,
which a test checks).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from diagnosis.adaptive import AdaptiveFamily
from diagnosis.families import CatBoostFamily, RandomForestFamily, XGBoostFamily
from diagnosis.family_base import FamilyModel


@dataclass(frozen=True)
class FamilySpec:
    name: str
    model_class: type[FamilyModel]
    deployment: str  # the Serve deployment that serves it
    default_weight: float = 1.0  # in the ensemble's weighted vote
    learns_from_feedback: bool = False  # updated online from operator-confirmed labels


FAMILIES: dict[str, FamilySpec] = {
    spec.name: spec
    for spec in (
        FamilySpec("catboost", CatBoostFamily, "CatBoostModel"),
        FamilySpec("xgboost", XGBoostFamily, "XGBoostModel"),
        FamilySpec("random_forest", RandomForestFamily, "RandomForestModel"),
        FamilySpec("adaptive", AdaptiveFamily, "AdaptiveModel", learns_from_feedback=True),
    )
}
FAMILY_NAMES: tuple[str, ...] = tuple(FAMILIES)


def family_spec(name: str) -> FamilySpec:
    try:
        return FAMILIES[name]
    except KeyError:
        raise KeyError(f"unknown model family {name!r}; known: {list(FAMILY_NAMES)}") from None


def family_class(name: str) -> type[FamilyModel]:
    return family_spec(name).model_class


def ensemble_weights(overrides: Mapping[str, float] | None = None) -> dict[str, float]:
    """Every family's vote weight: its default, or the configured override
    (``HDX_ENSEMBLE_WEIGHTS__<FAMILY>``). An override for an unknown family is an error."""
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(FAMILIES))
    if unknown:
        raise ValueError(f"ensemble weights for unknown model families {unknown}; known: {list(FAMILY_NAMES)}")
    weights = {name: float(overrides.get(name, spec.default_weight)) for name, spec in FAMILIES.items()}
    if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
        raise ValueError(f"ensemble weights must be non-negative with a positive sum, got {weights}")
    return weights
