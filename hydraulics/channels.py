"""The sensor channels of the hydraulic test rig.

The catalogue follows the ZeMA/UCI condition-monitoring rig: six pressure
transducers and the motor power at 100 Hz, two flow meters at 10 Hz and the
temperatures, vibration and three virtual channels at 1 Hz. A load cycle lasts
60 s, so a full-length cycle has ``60 * rate`` samples per channel.

``plausible_range`` is what a healthy *sensor* can report on this kind of rig,
not what a healthy *machine* reports: a value outside it means a broken sensor
or a unit mix-up, and the feature pipeline rejects it instead of diagnosing it.
A sensor's own noise can still put a reading a hair outside (an efficiency
factor of −0.16 % at zero load): within ``tolerance`` of the range a value is
clipped to the range and reported as a warning, not rejected. The tolerance is
``RANGE_TOLERANCE`` of the range's span unless a channel says otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

CYCLE_SECONDS = 60
RANGE_TOLERANCE = 0.02  # share of a channel's plausible span that sensor noise may overshoot


@dataclass(frozen=True)
class Channel:
    name: str
    quantity: str
    unit: str
    rate_hz: int
    plausible_range: tuple[float, float]
    description: str
    tolerance: float | None = None  # in the channel's unit; None: RANGE_TOLERANCE of the span

    @property
    def samples_per_cycle(self) -> int:
        return CYCLE_SECONDS * self.rate_hz

    @property
    def noise_margin(self) -> float:
        """How far outside ``plausible_range`` a reading is still sensor noise (clipped, not refused)."""
        lo, hi = self.plausible_range
        return self.tolerance if self.tolerance is not None else RANGE_TOLERANCE * (hi - lo)


def _ch(name, quantity, unit, rate, lo, hi, description) -> Channel:
    return Channel(name, quantity, unit, rate, (lo, hi), description)


CHANNELS: dict[str, Channel] = {
    c.name: c
    for c in [
        _ch("PS1", "pressure", "bar", 100, 0.0, 250.0, "system pressure after the main pump"),
        _ch("PS2", "pressure", "bar", 100, 0.0, 250.0, "pressure at the working valve"),
        _ch("PS3", "pressure", "bar", 100, 0.0, 100.0, "pressure in the return line"),
        _ch("PS4", "pressure", "bar", 100, 0.0, 100.0, "pressure at the accumulator"),
        _ch("PS5", "pressure", "bar", 100, 0.0, 100.0, "cooling/filtration circuit pressure"),
        _ch("PS6", "pressure", "bar", 100, 0.0, 100.0, "cooling/filtration circuit pressure"),
        _ch("EPS1", "motor power", "W", 100, 0.0, 4500.0, "electrical power of the main pump motor"),
        _ch("FS1", "volume flow", "l/min", 10, 0.0, 30.0, "delivered flow of the main pump"),
        _ch("FS2", "volume flow", "l/min", 10, 0.0, 15.0, "flow in the cooling/filtration circuit"),
        _ch("TS1", "temperature", "°C", 1, -20.0, 120.0, "oil temperature at the main pump"),
        _ch("TS2", "temperature", "°C", 1, -20.0, 120.0, "oil temperature at the working circuit"),
        _ch("TS3", "temperature", "°C", 1, -20.0, 120.0, "oil temperature before the cooler"),
        _ch("TS4", "temperature", "°C", 1, -20.0, 120.0, "oil temperature after the cooler"),
        _ch("VS1", "vibration", "mm/s", 1, 0.0, 50.0, "vibration velocity at the main pump"),
        _ch("CE", "cooling efficiency", "%", 1, 0.0, 100.0, "cooling efficiency (virtual)"),
        _ch("CP", "cooling power", "kW", 1, 0.0, 10.0, "cooling power (virtual)"),
        _ch("SE", "efficiency factor", "%", 1, 0.0, 110.0, "efficiency factor of the working circuit (virtual)"),
    ]
}

# The simple request form that existing clients send. Each alias stands for
# exactly one catalogue channel, so a request may use either spelling.
ALIASES: dict[str, str] = {
    "pressure": "PS1",
    "motor_power": "EPS1",
    "flow": "FS1",
    "temperature": "TS1",
    "vibration": "VS1",
}

UCI_1HZ_CHANNELS: tuple[str, ...] = ("TS1", "TS2", "TS3", "TS4", "VS1", "CE", "CP", "SE")


def canonical_name(name: str) -> str:
    """Return the catalogue name for a channel name or alias (case-insensitive).

    Raises ``KeyError`` with the list of valid names for anything unknown.
    """
    key = name.strip()
    if key.upper() in CHANNELS:
        return key.upper()
    if key.lower() in ALIASES:
        return ALIASES[key.lower()]
    raise KeyError(f"unknown channel {name!r}; expected one of {sorted(CHANNELS)} or an alias {sorted(ALIASES)}")
