"""Checking raw sensor data before anything computes on it.

Every entry point (API requests, table files, batch jobs) funnels through
``cycle_arrays`` / ``check_block`` so a bad value is rejected with the same
message everywhere: which channel, which cycle, what is wrong. A reading a
hair outside its channel's plausible range (within ``Channel.noise_margin``) is
sensor noise, not a fault: ``clip_noise`` clips it to the range and says so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from hydraulics.channels import CHANNELS, canonical_name


class SensorDataError(ValueError):
    """Raw sensor data that cannot be diagnosed, with the channel at fault."""

    def __init__(self, channel: str | None, problem: str, cycle: int | None = None):
        self.channel = channel
        self.problem = problem
        self.cycle = cycle
        where = f"channel {channel}" if channel else "sensor data"
        if cycle is not None:
            where = f"cycle {cycle}, {where}"
        super().__init__(f"{where}: {problem}")

    def to_dict(self) -> dict:
        return {"channel": self.channel, "cycle": self.cycle, "problem": self.problem, "message": str(self)}


def cycle_arrays(
    sensor_data: Mapping[str, Sequence[float] | np.ndarray], warnings: list[str] | None = None
) -> dict[str, np.ndarray]:
    """One cycle as sent by a client (channel names or aliases → samples), as
    float arrays under catalogue names. Checks names, emptiness, types, finiteness,
    ranges and that all channels cover the same whole number of seconds. Readings
    within a channel's noise margin outside its range come back clipped, each
    channel's clipping described in ``warnings`` when given."""
    if not sensor_data:
        raise SensorDataError(None, "no channels given")
    out: dict[str, np.ndarray] = {}
    for raw_name, values in sensor_data.items():
        try:
            name = canonical_name(raw_name)
        except KeyError as exc:
            raise SensorDataError(raw_name, exc.args[0]) from None
        if name in out:
            raise SensorDataError(name, f"given twice (as {raw_name!r} and under another name or alias)")
        try:
            arr = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError):
            raise SensorDataError(name, "values must be numbers") from None
        if arr.ndim != 1:
            raise SensorDataError(name, f"expected a flat list of samples, got shape {arr.shape}")
        out[name] = arr
    check_block({k: v[None, :] for k, v in out.items()})
    clipped, notes = clip_noise({k: v[None, :] for k, v in out.items()})
    if warnings is not None:
        warnings.extend(notes)
    return {k: v[0] for k, v in clipped.items()}


def clip_noise(channels: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], list[str]]:
    """Readings outside a channel's plausible range (``check_block`` has refused those beyond
    its noise margin) clipped to the range; one note per clipped channel. Channels that
    need no clipping are returned as they are (no copy)."""
    out: dict[str, np.ndarray] = {}
    notes: list[str] = []
    for name, block in channels.items():
        spec = CHANNELS[name]
        lo, hi = spec.plausible_range
        below, above = block < lo, block > hi
        if not (below.any() or above.any()):
            out[name] = block
            continue
        parts = []
        if below.any():
            parts.append(f"{int(below.sum())} below {lo:g} (lowest {block.min():g})")
        if above.any():
            parts.append(f"{int(above.sum())} above {hi:g} (highest {block.max():g})")
        notes.append(
            f"channel {name}: {' and '.join(parts)} {spec.unit} clipped to the plausible range "
            f"[{lo:g}, {hi:g}] (within the sensor-noise margin of {spec.noise_margin:g} {spec.unit})"
        )
        out[name] = np.clip(block, lo, hi)
    return out, notes


def check_block(channels: Mapping[str, np.ndarray], cycle_ids: Sequence[int] | None = None) -> float:
    """Validate ``{channel: (n_cycles, n_samples)}`` arrays; return the cycle duration in seconds.

    Vectorised: the checks are whole-array operations, and only when one fails
    do we look for the first offending cycle to name it.
    """
    duration: float | None = None
    first: str | None = None
    for name, block in channels.items():
        spec = CHANNELS[name]
        n_samples = block.shape[1]

        def fail(problem: str, rows: np.ndarray | None = None, name=name, block=block) -> SensorDataError:
            row = int(np.flatnonzero(rows)[0]) if rows is not None and rows.any() else None
            cycle = None if row is None else (int(cycle_ids[row]) if cycle_ids is not None else row)
            return SensorDataError(name, problem, cycle if block.shape[0] > 1 or cycle_ids is not None else None)

        if n_samples == 0:
            raise fail("empty: no samples")
        if n_samples % spec.rate_hz:
            raise fail(f"wrong rate/length: {n_samples} samples is not a whole number of seconds at {spec.rate_hz} Hz")
        finite = np.isfinite(block)
        if not finite.all():
            bad_rows = ~finite.all(axis=1)
            row = int(np.flatnonzero(bad_rows)[0])
            sample = int(np.flatnonzero(~finite[row])[0])
            raise fail(f"contains NaN or infinity (first at sample {sample})", bad_rows)
        lo, hi = spec.plausible_range
        margin = spec.noise_margin
        outside = (block < lo - margin) | (block > hi + margin)
        if outside.any():
            bad_rows = outside.any(axis=1)
            row = int(np.flatnonzero(bad_rows)[0])
            sample = int(np.flatnonzero(outside[row])[0])
            raise fail(
                f"value {block[row, sample]:g} at sample {sample} is outside the plausible range "
                f"[{lo:g}, {hi:g}] {spec.unit} (more than the sensor-noise margin of {margin:g} {spec.unit})",
                bad_rows,
            )
        seconds = n_samples / spec.rate_hz
        if duration is None:
            duration, first = seconds, name
        elif seconds != duration:
            raise fail(
                f"wrong rate/length: {n_samples} samples at {spec.rate_hz} Hz cover {seconds:g} s, "
                f"but {first} covers {duration:g} s"
            )
    if duration is None:
        raise SensorDataError(None, "no channels given")
    return duration
