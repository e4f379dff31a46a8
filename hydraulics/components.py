"""The four monitored components and their condition levels.

Levels are exactly the values of the UCI ``profile.txt`` labels, so a model's
class label *is* the physical condition (e.g. accumulator precharge in bar).
The first level of each component is its nominal (healthy) state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Severity = Literal["normal", "warning", "critical"]
SEVERITY_ORDER: dict[str, int] = {"normal": 0, "warning": 1, "critical": 2}


@dataclass(frozen=True)
class Level:
    value: int
    meaning: str
    severity: Severity


@dataclass(frozen=True)
class Component:
    name: str
    quantity: str
    unit: str
    anomaly_type: str
    levels: tuple[Level, ...]

    @property
    def nominal(self) -> Level:
        return self.levels[0]

    @property
    def values(self) -> tuple[int, ...]:
        return tuple(level.value for level in self.levels)

    def level(self, value: int | float) -> Level:
        for level in self.levels:
            if level.value == int(value):
                return level
        raise ValueError(f"{self.name}: unknown level {value!r}; expected one of {list(self.values)}")


COMPONENTS: dict[str, Component] = {
    c.name: c
    for c in [
        Component(
            "cooler",
            "cooler efficiency",
            "%",
            "cooler_degradation",
            (
                Level(100, "full efficiency", "normal"),
                Level(20, "reduced efficiency", "warning"),
                Level(3, "close to total failure", "critical"),
            ),
        ),
        Component(
            "valve",
            "valve switching condition",
            "%",
            "valve_lag",
            (
                Level(100, "optimal switching behaviour", "normal"),
                Level(90, "small lag", "warning"),
                Level(80, "severe lag", "critical"),
                Level(73, "close to total failure", "critical"),
            ),
        ),
        Component(
            "pump",
            "internal pump leakage",
            "class",
            "internal_pump_leakage",
            (
                Level(0, "no leakage", "normal"),
                Level(1, "weak leakage", "warning"),
                Level(2, "severe leakage", "critical"),
            ),
        ),
        Component(
            "accumulator",
            "accumulator precharge pressure",
            "bar",
            "accumulator_precharge_loss",
            (
                Level(130, "optimal pressure", "normal"),
                Level(115, "slightly reduced pressure", "warning"),
                Level(100, "severely reduced pressure", "critical"),
                Level(90, "close to total failure", "critical"),
            ),
        ),
    ]
}

COMPONENT_NAMES: tuple[str, ...] = tuple(COMPONENTS)

# The UCI "stable flag" is not a component but a label the models also learn:
# 0 = the rig had reached static conditions, 1 = it might not have yet.
STABLE_TARGET = "stable"
STABLE_VALUES: tuple[int, ...] = (0, 1)

TARGETS: tuple[str, ...] = COMPONENT_NAMES + (STABLE_TARGET,)


def target_classes(target: str) -> tuple[int, ...]:
    """Class labels of a training target, in a fixed order shared by all models."""
    if target == STABLE_TARGET:
        return STABLE_VALUES
    return COMPONENTS[target].values
