"""The one feature pipeline: raw channels → named feature vectors.

Training, online serving and batch jobs all call ``extract`` (a block of
equal-length cycles) or ``extract_cycles`` (a list of request-shaped cycles),
so the three can never compute features differently.

A *feature set* declares which channels it needs and how long a cycle must be.
Features follow the rig's fixed 60 s working cycle: the load changes at the
seconds in ``LOAD_STEPS_S``, so beyond whole-cycle statistics we measure each
channel's response at those steps, relative to the cycle's own plateau. That
is where component wear shows: valve lag and accumulator precharge change how
the efficiency factor SE and the pressures react to a load step, long before
they move a cycle average; cooler wear shows in the temperature curves'
level and warm-up slope.

Bump ``FeatureSet.version`` whenever a computation changes: model bundles
record it, and loading a bundle built with another version fails loudly.

A feature set is data: its channels and which of them are described by their
full working-cycle profile. The named ones below are what the shipped equipment
profiles use; ``feature_set_from`` rebuilds any other from its ``spec()`` (a
profile trained on a user's own channel list records it that way).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from hydraulics.channels import CHANNELS, CYCLE_SECONDS, UCI_1HZ_CHANNELS
from hydraulics.validation import SensorDataError, check_block, clip_noise, cycle_arrays

# Seconds into the working cycle at which the rig switches load.
LOAD_STEPS_S: tuple[int, ...] = (9, 19, 29, 39, 49)
# After a step the rig settles within a couple of seconds; the plateau is read past that.
STEP_SETTLE_S = 2
FIRST_LAST_WINDOW_S = 10

Block = Mapping[str, np.ndarray]  # channel → (n_cycles, n_samples)
FeatureFn = Callable[[Block, float], tuple[list[str], list[np.ndarray]]]


# --- building blocks (each returns names and (n,) columns) --------------------


def _per_second(block: np.ndarray, rate: int) -> np.ndarray:
    """Average a channel to one value per second, so every rate shares one time axis."""
    if rate == 1:
        return block
    n, samples = block.shape
    return block.reshape(n, samples // rate, rate).mean(axis=2)


def _curve_stats(prefix: str, curve: np.ndarray) -> tuple[list[str], list[np.ndarray]]:
    seconds = curve.shape[1]
    t = np.arange(seconds, dtype=np.float64)
    t_centered = t - t.mean()
    slope = (curve - curve.mean(axis=1, keepdims=True)) @ t_centered / (t_centered @ t_centered)
    w = min(FIRST_LAST_WINDOW_S, seconds)
    first, last = curve[:, :w].mean(axis=1), curve[:, -w:].mean(axis=1)
    names = ["mean", "std", "min", "max", "first10", "last10", "drift", "slope"]
    cols = [
        curve.mean(axis=1),
        curve.std(axis=1),
        curve.min(axis=1),
        curve.max(axis=1),
        first,
        last,
        last - first,
        slope,
    ]
    return [f"{prefix}__{n}" for n in names], cols


def _step_response(prefix: str, curve: np.ndarray) -> tuple[list[str], list[np.ndarray]]:
    """Value at each load step and its contrast with the settled level after it,
    both relative to the cycle's own working plateau (its median after the first step)."""
    plateau = np.median(curve[:, LOAD_STEPS_S[0] + 1 : CYCLE_SECONDS], axis=1)
    names, cols = [f"{prefix}__plateau"], [plateau]
    for k, t in enumerate(LOAD_STEPS_S):
        settled = curve[:, t + STEP_SETTLE_S]
        names += [f"{prefix}__step{k}_dev", f"{prefix}__step{k}_dip"]
        cols += [curve[:, t] - plateau, curve[:, t] - settled]
    return names, cols


def _profile(prefix: str, curve: np.ndarray) -> tuple[list[str], list[np.ndarray]]:
    """The working-cycle profile sampled every two seconds from the first load step:
    each sample's level, its offset from the plateau and its change from the
    previous sample, plus the switching transient (first step against the
    seconds right after it). SE carries valve timing and accumulator
    precharge in exactly these shapes; cycle statistics average them away."""
    plateau = np.median(curve[:, LOAD_STEPS_S[0] + 1 : CYCLE_SECONDS], axis=1)
    idx = np.arange(LOAD_STEPS_S[0], CYCLE_SECONDS, 2)
    samples = curve[:, idx]
    names = [f"{prefix}__s{i}" for i in idx] + [f"{prefix}__s{i}_rel" for i in idx]
    cols = list(samples.T) + list((samples - plateau[:, None]).T)
    steps = np.diff(samples, axis=1)
    names += [f"{prefix}__s{i}_delta" for i in idx[1:]]
    cols += list(steps.T)
    t0 = LOAD_STEPS_S[0]
    after = curve[:, t0 + STEP_SETTLE_S : LOAD_STEPS_S[1]].mean(axis=1)
    safe = lambda x: np.where(np.abs(x) > 1e-6, x, 1e-6)  # noqa: E731 - a zero plateau must not divide
    names += [
        f"{prefix}__switch_ratio",
        f"{prefix}__switch_vs_next",
        f"{prefix}__switch_vs_settled",
        f"{prefix}__cycle_start",
    ]
    cols += [
        curve[:, t0] / safe(plateau),
        curve[:, t0] / safe(curve[:, t0 + STEP_SETTLE_S]),
        curve[:, t0] - after,
        curve[:, 0],
    ]
    return names, cols


def _rise_time(prefix: str, block: np.ndarray, rate: int) -> tuple[list[str], list[np.ndarray]]:
    """Seconds a high-rate channel needs to cover 90 % of each load step's change.
    A lagging valve stretches this for the pressures."""
    times = []
    for t in LOAD_STEPS_S:
        seg = block[:, t * rate : (t + STEP_SETTLE_S + 3) * rate]
        start = block[:, max(t * rate - rate // 10, 0) : t * rate + 1].mean(axis=1, keepdims=True)
        end = seg[:, -rate // 2 :].mean(axis=1, keepdims=True)
        reached = np.abs(seg - start) >= 0.9 * np.abs(end - start)
        first = np.where(reached.any(axis=1), reached.argmax(axis=1), seg.shape[1])
        times.append(first / rate)
    times = np.stack(times, axis=1)
    ripple = block.reshape(block.shape[0], -1, rate).std(axis=2).mean(axis=1)
    return (
        [f"{prefix}__rise_step{k}" for k in range(len(LOAD_STEPS_S))] + [f"{prefix}__rise_mean", f"{prefix}__ripple"],
        list(times.T) + [times.mean(axis=1), ripple],
    )


def _channel_features(name: str, block: np.ndarray, profile: bool) -> tuple[list[str], list[np.ndarray]]:
    rate = CHANNELS[name].rate_hz
    curve = _per_second(block, rate)
    names, cols = _curve_stats(name, curve)
    n2, c2 = _profile(name, curve) if profile else _step_response(name, curve)
    names += n2
    cols += c2
    if rate > 1:
        n3, c3 = _rise_time(name, block, rate)
        names += n3
        cols += c3
    return names, cols


def _cross_channel(block: Block) -> tuple[list[str], list[np.ndarray]]:
    """Relations between channels that one channel alone cannot show."""
    names: list[str] = []
    cols: list[np.ndarray] = []
    curves = {k: _per_second(v, CHANNELS[k].rate_hz) for k, v in block.items()}
    if "TS3" in curves and "TS4" in curves:  # temperature drop across the cooler
        delta = curves["TS3"] - curves["TS4"]
        names += ["x__cooler_delta_mean", "x__cooler_delta_drift"]
        cols += [
            delta.mean(axis=1),
            delta[:, -FIRST_LAST_WINDOW_S:].mean(axis=1) - delta[:, :FIRST_LAST_WINDOW_S].mean(axis=1),
        ]
    if "CP" in curves and "CE" in curves:  # cooling power per unit efficiency
        names.append("x__cp_per_ce")
        cols.append(curves["CP"].mean(axis=1) / np.maximum(curves["CE"].mean(axis=1), 1e-6))
    if "SE" in curves and "TS1" in curves:  # efficiency against oil temperature (viscosity)
        names.append("x__se_plateau_per_ts1")
        plateau = np.median(curves["SE"][:, LOAD_STEPS_S[0] + 1 :], axis=1)
        cols.append(plateau / np.maximum(curves["TS1"].mean(axis=1), 1e-6))
    if "FS1" in curves and "EPS1" in curves:  # delivered flow per motor power: pump volumetric efficiency
        names.append("x__flow_per_kw")
        cols.append(curves["FS1"].mean(axis=1) / np.maximum(curves["EPS1"].mean(axis=1) / 1000.0, 1e-6))
    return names, cols


# --- feature sets --------------------------------------------------------------


@dataclass(frozen=True)
class FeatureSet:
    name: str
    channels: tuple[str, ...]
    version: int = 3
    profile_channels: tuple[str, ...] = ("SE",)  # channels described by their full working-cycle profile
    min_seconds: int = CYCLE_SECONDS
    description: str = ""
    _names: list[str] = field(default_factory=list, compare=False, repr=False)

    def feature_names(self) -> list[str]:
        if not self._names:
            probe = {
                c: np.full((1, CHANNELS[c].rate_hz * self.min_seconds), np.mean(CHANNELS[c].plausible_range))
                for c in self.channels
            }
            # Slice assignment replaces the whole list: threads that race here
            # (replicas load several bundles at once) all leave the same names.
            self._names[:] = _compute(self, probe)[0]
        return list(self._names)

    def target_columns(self, target: str) -> np.ndarray:
        """Which features each target's classifier reads.

        Valve lag and accumulator precharge are transient effects: they live in
        the working-cycle profile. Cooler wear, pump leakage and the warm-up
        (stable) flag are level effects that whole-cycle statistics carry, and
        fifty profile samples only dilute them. The valve's signal is the most
        subtle, so its classifier reads the profile and the warm-up slopes
        alone (cross-validated on the UCI training cycles: +3-4 points)."""
        names = self.feature_names()
        profile = set()
        for ch in self.profile_channels:
            if ch in self.channels:
                probe = np.zeros((1, CYCLE_SECONDS))
                profile.update(_profile(ch, probe)[0])
        slopes = {f"{ch}__slope" for ch in self.channels if CHANNELS[ch].quantity == "temperature"}
        if target == "valve" and profile:
            keep = [i for i, n in enumerate(names) if n in profile or n in slopes]
        elif target == "accumulator":
            keep = list(range(len(names)))
        else:
            keep = [i for i, n in enumerate(names) if n not in profile]
        return np.asarray(keep, dtype=np.int64)

    def spec(self) -> dict:
        """What ``feature_set_from`` needs to rebuild this feature set."""
        return {"name": self.name, "channels": list(self.channels), "profile_channels": list(self.profile_channels)}

    def signature(self) -> dict:
        """What a model bundle records to prove it matches this code."""
        return {**self.spec(), "version": self.version, "feature_names": self.feature_names()}


FEATURE_SETS: dict[str, FeatureSet] = {
    fs.name: fs
    for fs in [
        FeatureSet("rig_1hz", UCI_1HZ_CHANNELS, description="the eight 1 Hz channels (UCI public subset)"),
        FeatureSet("rig_full", tuple(CHANNELS), description="all 17 channels at their native rates"),
        FeatureSet(
            "basic",
            ("PS1", "TS1", "FS1", "VS1"),
            profile_channels=("PS1",),
            description="one pressure, one temperature, one flow and one vibration channel (the API aliases)",
        ),
        FeatureSet(
            "compact",
            ("PS1", "EPS1", "FS1", "TS1", "VS1"),
            profile_channels=("PS1",),
            description="the five channels behind the simple API aliases",
        ),
    ]
}


def get_feature_set(name: str) -> FeatureSet:
    try:
        return FEATURE_SETS[name]
    except KeyError:
        raise KeyError(f"unknown feature set {name!r}; known: {sorted(FEATURE_SETS)}") from None


_BUILT: dict[tuple, FeatureSet] = {}


def feature_set_from(spec: str | Mapping | FeatureSet) -> FeatureSet:
    """A named feature set, or one rebuilt from its ``spec()`` (any channels of the catalogue;
    the same spec gives the same object, so its feature names are computed once)."""
    if isinstance(spec, FeatureSet):
        return spec
    if isinstance(spec, str):
        return get_feature_set(spec)
    channels = tuple(spec["channels"])
    unknown = [c for c in channels if c not in CHANNELS]
    if not channels or unknown:
        raise KeyError(f"feature set {spec.get('name')!r}: unknown channels {unknown}" if unknown else "no channels")
    profile_channels = tuple(c for c in spec.get("profile_channels", ()) if c in channels)
    named = FEATURE_SETS.get(spec.get("name", ""))
    if named is not None and named.channels == channels and named.profile_channels == profile_channels:
        return named
    key = (spec.get("name", "custom"), channels, profile_channels)
    if key not in _BUILT:
        _BUILT[key] = FeatureSet(key[0], channels, profile_channels=profile_channels)
    return _BUILT[key]


def _compute(fs: FeatureSet, block: Block) -> tuple[list[str], np.ndarray]:
    names: list[str] = []
    cols: list[np.ndarray] = []
    for ch in fs.channels:
        n, c = _channel_features(ch, block[ch], ch in fs.profile_channels)
        names += n
        cols += c
    n, c = _cross_channel({ch: block[ch] for ch in fs.channels})
    names += n
    cols += c
    return names, np.column_stack(cols)


def _trim_to_cycle(block: Block) -> dict[str, np.ndarray]:
    """Longer recordings are cut to the first working cycle, which the step features describe."""
    return {ch: v[:, : CHANNELS[ch].rate_hz * CYCLE_SECONDS] for ch, v in block.items()}


def extract(
    block: Block, feature_set: str | Mapping | FeatureSet, cycle_ids: Sequence[int] | None = None
) -> np.ndarray:
    """Features for a block of cycles of equal duration: ``(n_cycles, n_features)``.

    Raises ``SensorDataError`` naming the channel (and cycle) for bad input.
    Channels the feature set does not use are ignored, but still validated.
    """
    fs = feature_set_from(feature_set)
    for ch in fs.channels:
        if ch not in block:
            raise SensorDataError(ch, f"missing: required by feature set {fs.name}")
    seconds = check_block(block, cycle_ids)
    if seconds < fs.min_seconds:
        some = fs.channels[0]
        raise SensorDataError(
            some, f"too short: cycle covers {seconds:g} s, feature set {fs.name} needs at least {fs.min_seconds} s"
        )
    clipped, _ = clip_noise({ch: block[ch] for ch in fs.channels})
    return _compute(fs, _trim_to_cycle(clipped))[1]


def extract_cycles(
    cycles: Sequence[Mapping[str, Sequence[float] | np.ndarray]], feature_set: str | Mapping | FeatureSet
) -> tuple[np.ndarray, dict[int, SensorDataError]]:
    """Features for request-shaped cycles (channel/alias → samples), possibly of different lengths.

    Returns the feature matrix of the valid cycles, in input order, and the
    errors of the invalid ones by position, so one bad cycle never fails a batch.
    """
    fs = feature_set_from(feature_set)
    errors: dict[int, SensorDataError] = {}
    groups: dict[tuple, list[tuple[int, dict[str, np.ndarray]]]] = {}
    for i, raw in enumerate(cycles):
        try:
            arrays = cycle_arrays(raw)
            missing = [ch for ch in fs.channels if ch not in arrays]
            if missing:
                raise SensorDataError(missing[0], f"missing: required by feature set {fs.name}")
        except SensorDataError as exc:
            errors[i] = exc
            continue
        key = tuple(len(arrays[ch]) for ch in fs.channels)  # equal lengths vectorise together
        groups.setdefault(key, []).append((i, arrays))
    out = np.empty((len(cycles), len(fs.feature_names())))
    for members in groups.values():
        block = {ch: np.stack([a[ch] for _, a in members]) for ch in fs.channels}
        try:
            out[[i for i, _ in members]] = extract(block, fs)
        except SensorDataError as exc:  # e.g. too short: applies to the whole group
            for i, _ in members:
                errors[i] = SensorDataError(exc.channel, exc.problem)
    valid = [i for i in range(len(cycles)) if i not in errors]
    return out[valid], errors
