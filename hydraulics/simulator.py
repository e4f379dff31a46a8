"""A hydraulic test-rig simulator: the data HDX trains on when no real data is given.

It produces 60 s load cycles for all 17 catalogue channels at their true rates
(PS1-PS6, EPS1 at 100 Hz; FS1, FS2 at 10 Hz; TS1-TS4, VS1, CE, CP, SE at 1 Hz),
driven by the four component conditions of :mod:`hydraulics.components`.
It is a lumped, qualitative model tuned to the magnitudes of the ZeMA/UCI rig,
not a CFD model; what matters is that every fault moves the channels in the
direction the real rig does, with overlap between neighbouring levels.

Working cycle
    The working circuit repeats the same profile of load steps every cycle
    (:data:`LOAD_PROFILE`): the proportional relief valve sets a new system
    pressure at each step, and the working valve switches at the same moment.
    PS1 follows each step as a first-order rise after a short switching delay.

Cooler (efficiency 100 / 20 / 3 %)
    A fouled cooler removes heat less effectively: cooling efficiency CE drops,
    so the oil settles at a higher temperature (TS1-TS4 higher) where the small
    remaining cooler duty plus the tank's passive losses carry off the heat of
    the pump. Cooling power CP (heat the cooler removes) is lower. Because the
    thermal time constant grows as cooling weakens, the oil of a fouled cooler
    is still warming through the cycle: higher start level *and* a rise within
    the cycle. Warmer oil is thinner, which raises pump leakage a little and
    lowers the cooling-circuit pressures PS5/PS6 and flow FS2.

Valve (switching condition 100 / 90 / 80 / 73 %)
    A lagging working valve opens later and slower at every switching: PS1 and
    PS2 reach the new plateau later (switching delay and time constant grow
    with lag). While the valve is still closed the pump's flow goes over the
    relief valve and does no useful work, so the efficiency factor SE drops in
    the seconds after each switching. The pressure shock of a slow switching
    adds a little vibration (VS1).

Pump (internal leakage 0 / 1 / 2)
    Internal leakage returns part of the displaced oil to the suction side:
    delivered flow FS1 falls (proportional to pressure and inversely to oil
    viscosity), SE falls, and the motor power EPS1 per litre delivered rises;
    the throttled leakage heats the pump (TS1 a little higher) and worn
    parts vibrate more (VS1).

Accumulator (gas precharge 130 / 115 / 100 / 90 bar)
    At each load change the flow demand surges and the accumulator covers it.
    With a low precharge it holds less usable oil in the working-pressure
    range, so the pressure dip at the load change is deeper (PS1, PS4) and the
    recovery slower; while the pump refills it, less flow reaches the actuator,
    which lowers SE in the seconds after load changes, most after large steps
    (after the valve's switching second, so the two faults leave different
    traces). The small gas volume also damps pump pulsation less (VS1 a touch
    higher).

Warm-up (stable flag)
    ``stable=1`` cycles start colder and the temperatures are still drifting
    towards their steady level within the cycle.

Noise and variation
    Each cycle draws its own ambient temperature, heat load, supply pressure
    offset and a jitter of each fault's strength (valve lag, leakage
    coefficient, effective precharge), so levels overlap like real data;
    every sample carries sensor noise at the channel's resolution.

Randomness is split in independent streams (cycle parameters, and one noise
stream per channel), so restricting ``channels`` leaves the values of the
channels that are produced unchanged, and the same seed always gives the
same arrays.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from hydraulics.channels import CHANNELS, CYCLE_SECONDS, canonical_name
from hydraulics.components import COMPONENT_NAMES, COMPONENTS, TARGETS
from hydraulics.dataset import RigDataset

# (start time s, PS1 set-point bar) of each load step; the first entry holds from t=0.
LOAD_PROFILE: tuple[tuple[float, float], ...] = (
    (0.0, 132.0),
    (9.0, 182.0),
    (19.0, 160.0),
    (29.0, 176.0),
    (39.0, 150.0),
    (50.0, 186.0),
)
SWITCH_TIMES = np.array([t for t, _ in LOAD_PROFILE[1:]])
PUMP_DISPLACEMENT_LPM = 6.8  # theoretical pump flow
MOTOR_IDLE_W = 600.0  # no-load losses of motor and pump
PUMP_EFFICIENCY = 0.88  # hydro-mechanical
VALVE_DROP_BAR = 12.0  # pressure drop across the open working valve
AMBIENT_C = 20.0
HEAT_LOAD_KW = 2.4  # heat the working circuit dumps into the oil
COOLING_FLOW_KW_PER_K = 0.244  # heat capacity flow through the cooler
PASSIVE_LOSS_KW_PER_K = 0.023  # tank and pipes
STABLE_FRACTION = 0.3  # share of simulated cycles still warming up
_CHUNK = 192  # cycles per vectorised batch: bounds peak memory

_T100 = np.arange(6000) / 100.0
_T1 = np.arange(CYCLE_SECONDS, dtype=np.float64)


def _params(conds: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per-cycle physical parameters: condition effects plus per-cycle variation."""
    n = len(conds["cooler"])
    p: dict[str, np.ndarray] = {}
    lag = (100.0 - conds["valve"]) / 27.0  # 0 healthy .. 1 close to failure
    jitter = rng.lognormal(0.0, 0.10, n)
    # Lag grows faster than linearly towards failure (sticking spool).
    p["valve_delay"] = (0.04 + 0.26 * lag + 0.22 * lag**2) * jitter
    p["valve_tau"] = (0.08 + 0.20 * lag + 0.20 * lag**2) * jitter
    p["valve_lag"] = lag * jitter
    p["leak_coeff"] = (0.0015 + 0.0032 * conds["pump"]) * rng.lognormal(0.0, 0.08, n)  # l/min per bar
    precharge = conds["accumulator"] + rng.normal(0.0, 2.5, n)
    p["acc_deficit"] = np.clip((130.0 - precharge) / 40.0, -0.2, None)
    # CE of the cooler: fouling hits the heat transfer less than linearly.
    p["ce_ss"] = (16.0 + 31.0 * (conds["cooler"] / 100.0) ** 0.55) * rng.normal(1.0, 0.015, n)
    p["ambient"] = AMBIENT_C + rng.normal(0.0, 0.8, n)
    p["heat_load"] = HEAT_LOAD_KW * rng.normal(1.0, 0.03, n)
    p["supply_offset"] = rng.normal(0.0, 1.5, n)
    p["warmup_gap"] = np.where(conds["stable"] == 1, rng.uniform(0.4, 6.0, n), rng.uniform(0.0, 0.5, n))
    p["vibration_base"] = 0.52 * rng.normal(1.0, 0.02, n)
    return p


def _temperatures(p, conds, leak_kw):
    """Oil temperature (n, 60) from the heat balance; returns it and the cooler duty terms."""
    cool_k = p["ce_ss"] / 100.0 * COOLING_FLOW_KW_PER_K
    total_k = cool_k + PASSIVE_LOSS_KW_PER_K
    t_ss = p["ambient"] + (p["heat_load"] + leak_kw) / total_k
    # Weak cooling -> long thermal time constant -> still warming within the cycle.
    tau = 12.0 / total_k  # s; ~90 s healthy, ~240 s fouled
    drift = 0.35 + 0.6 * (1.0 - conds["cooler"] / 100.0)  # residual rise in a "stable" cycle
    gap = drift + p["warmup_gap"]
    t_oil = t_ss[:, None] - gap[:, None] * np.exp(-_T1[None, :] / tau[:, None])
    return t_oil, cool_k


def _pressures(p, conds):
    """Load response at 100 Hz, each (n, 6000): PS1 set-point, valve opening, accumulator dip and refill flow."""
    n = len(conds["cooler"])
    levels = np.array([lvl for _, lvl in LOAD_PROFILE])
    steps = np.diff(levels)
    setpoint = np.full((n, _T100.size), levels[0]) + p["supply_offset"][:, None]
    opening = np.ones((n, _T100.size))
    dip = np.zeros((n, _T100.size))
    refill = np.zeros((n, _T100.size))
    delay, tau = p["valve_delay"][:, None], p["valve_tau"][:, None]
    deficit = p["acc_deficit"][:, None]
    dip_per_bar = 2.0 * (1.0 + 3.5 * deficit) / 40.0
    dip_tau = 0.2 * (1.0 + 0.5 * deficit)
    # The pump refills the accumulator once the surge is over (~1 s); a low
    # precharge means more oil to put back and a slower recovery.
    refill_tau = 0.8 * (1.0 + 2.5 * deficit)
    for t_k, step in zip(SWITCH_TIMES, steps):
        since = _T100[None, :] - t_k
        response = np.where(since > delay, -np.expm1(-np.maximum(since - delay, 0.0) / tau), 0.0)
        setpoint += step * response
        opening = np.where(since >= 0.0, response, opening)
        depth = dip_per_bar * (12.0 + abs(step))
        dip += depth * _pulse(since / dip_tau)
        refill += 0.25 * depth * _pulse((since - 1.0) / refill_tau)
    return setpoint, opening, dip, refill


def _pulse(x: np.ndarray) -> np.ndarray:
    """Alpha function: 0 before x=0, rises to 1 at x=1, decays after."""
    x = np.maximum(x, 0.0)
    return x * np.exp(1.0 - x)


def _block_mean(x: np.ndarray, rate_hz: int) -> np.ndarray:
    """Average a 100 Hz signal down to ``rate_hz`` (what a slower sensor integrates)."""
    n = x.shape[0]
    return x.reshape(n, rate_hz * CYCLE_SECONDS, 100 // rate_hz).mean(axis=2)


def _simulate_batch(
    conds: dict[str, np.ndarray],
    rng_params: np.random.Generator,
    noise: dict[str, np.random.Generator],
    wanted: set[str],
) -> dict[str, np.ndarray]:
    p = _params(conds, rng_params)
    setpoint, opening, dip, refill = _pressures(p, conds)
    ps1 = setpoint - dip - 2.0 * refill

    # Leakage is laminar: proportional to pressure, inversely to viscosity (thinner when hot).
    t_oil_guess = p["ambient"] + p["heat_load"] / (p["ce_ss"] / 100.0 * COOLING_FLOW_KW_PER_K + PASSIVE_LOSS_KW_PER_K)
    viscosity_factor = np.exp(0.02 * (t_oil_guess - 40.0))[:, None]
    leak = p["leak_coeff"][:, None] * ps1 * viscosity_factor
    flow = PUMP_DISPLACEMENT_LPM - leak
    # Most of the leakage's throttling heat leaves with the case drain; a third stays in the oil.
    leak_kw = 0.35 * (leak * ps1).mean(axis=1) / 600.0
    t_oil, cool_k = _temperatures(p, conds, leak_kw)

    motor_w = MOTOR_IDLE_W + ps1 * PUMP_DISPLACEMENT_LPM / 600.0 / PUMP_EFFICIENCY * 1000.0
    motor_w *= 1.0 + 0.012 * conds["pump"][:, None]  # worn pump: more friction
    ps2 = (ps1 - VALVE_DROP_BAR) * (0.86 + 0.14 * opening)
    # The accumulator's refill flow is taken from the actuator's share.
    useful_kw = ps2 * np.maximum(flow * opening - refill, 0.0) / 600.0

    out: dict[str, np.ndarray] = {}

    def emit(name: str, values: np.ndarray, sigma: float, decimals: int) -> None:
        if name in wanted:
            lo, hi = CHANNELS[name].plausible_range
            noisy = values + noise[name].normal(0.0, sigma, values.shape)
            out[name] = np.round(np.clip(noisy, lo, hi), decimals)

    emit("PS1", ps1, 0.25, 2)
    emit("PS2", ps2, 0.25, 2)
    switching = np.abs(np.gradient(setpoint, axis=1)) * 100.0 / 60.0  # bar/s, scaled
    emit("PS3", 1.2 + 0.02 * flow + 0.02 * switching, 0.03, 3)
    emit("PS4", 0.3 * setpoint - 1.8 * dip - 2.0 * refill - 0.08 * (conds["accumulator"][:, None] - 90.0), 0.15, 2)
    t100 = np.repeat(t_oil, 100, axis=1)
    ps5 = 9.9 - 0.04 * (t100 - 35.0)
    emit("PS5", ps5, 0.02, 3)
    emit("PS6", ps5 - 0.18, 0.02, 3)
    emit("EPS1", motor_w, 6.0, 0)
    emit("FS1", _block_mean(flow, 10), 0.04, 3)
    emit("FS2", np.repeat(10.35 - 0.03 * (t_oil - 35.0), 10, axis=1), 0.03, 3)

    pump_heat = 0.4 * conds["pump"][:, None] + 1.2 * leak_kw[:, None]
    emit("TS1", t_oil + pump_heat, 0.03, 3)
    emit("TS2", t_oil + 4.8, 0.03, 3)
    emit("TS3", t_oil + 2.6, 0.03, 3)
    ce = np.broadcast_to(p["ce_ss"][:, None], t_oil.shape)
    t_after_cooler = t_oil + 2.6 - ce / 100.0 * (t_oil + 2.6 - p["ambient"][:, None])
    emit("TS4", t_after_cooler, 0.03, 3)
    emit("CE", ce, 0.15, 3)
    emit("CP", cool_k[:, None] * (t_oil + 2.6 - p["ambient"][:, None]), 0.012, 3)

    # SE: useful hydraulic power over motor input, per second.
    se = 100.0 * _block_mean(useful_kw, 1) / _block_mean(motor_w / 1000.0, 1)
    emit("SE", se, 0.25, 3)

    shock = _block_mean(np.abs(np.diff(opening, axis=1, prepend=1.0)), 1) * 100.0
    vibration = (
        p["vibration_base"][:, None]
        + 0.0065 * (t_oil - 35.0)
        + 0.012 * conds["pump"][:, None]
        + 0.03 * shock * (0.3 + p["valve_lag"][:, None])
        # a low precharge leaves little gas volume, so pump pulsation is damped less
        + 0.012 * np.clip(p["acc_deficit"], 0.0, None)[:, None]
        + 0.03 * np.exp(-_T1[None, :] / 20.0)
    )  # run-in after the cycle start
    emit("VS1", vibration, 0.006, 3)
    return out


def _check_level(component: str, value) -> int:
    return COMPONENTS[component].level(value).value


def _seed_entropy(rng: int | np.random.Generator | None) -> list[int]:
    if rng is None:
        return [int(np.random.SeedSequence().entropy % 2**63)]
    if isinstance(rng, np.random.Generator):
        return [int(v) for v in rng.integers(0, 2**63, size=2)]
    return [int(rng)]


def _run(conds: dict[str, np.ndarray], entropy: list[int], channels: Sequence[str] | None) -> dict[str, np.ndarray]:
    names = list(CHANNELS) if channels is None else [canonical_name(c) for c in channels]
    wanted = set(names)
    n = len(conds["cooler"])
    out = {name: np.empty((n, CHANNELS[name].samples_per_cycle)) for name in names}
    channel_index = {name: i for i, name in enumerate(CHANNELS)}
    for chunk, start in enumerate(range(0, n, _CHUNK)):
        sl = slice(start, start + _CHUNK)
        rng_params = np.random.default_rng([*entropy, chunk, 0])
        noise = {name: np.random.default_rng([*entropy, chunk, 1, channel_index[name]]) for name in wanted}
        part = _simulate_batch({k: v[sl] for k, v in conds.items()}, rng_params, noise, wanted)
        for name in names:
            out[name][sl] = part[name]
    return out


def simulate_cycle(
    cooler: int, valve: int, pump: int, accumulator: int, stable: int = 0, rng: int | np.random.Generator | None = None
) -> dict[str, np.ndarray]:
    """One 60 s cycle of all 17 channels as ``{channel: 1-D array}``.

    ``rng`` is a seed, a ``numpy.random.Generator`` or ``None`` (fresh entropy).
    """
    values = {"cooler": cooler, "valve": valve, "pump": pump, "accumulator": accumulator}
    conds = {k: np.array([_check_level(k, v)], dtype=np.float64) for k, v in values.items()}
    if stable not in (0, 1):
        raise ValueError(f"stable: expected 0 or 1, got {stable!r}")
    conds["stable"] = np.array([stable])
    return {name: values[0] for name, values in _run(conds, _seed_entropy(rng), None).items()}


def all_conditions() -> list[dict[str, int]]:
    """Every combination of the four components' levels (3*4*3*4 = 144)."""
    return [
        dict(zip(COMPONENT_NAMES, combo))
        for combo in itertools.product(*(COMPONENTS[c].values for c in COMPONENT_NAMES))
    ]


def simulate_dataset(
    n_per_condition: int = 12,
    seed: int = 0,
    channels: Sequence[str] | None = None,
    conditions: Iterable[dict] | None = None,
) -> RigDataset:
    """``n_per_condition`` labelled cycles for each condition (default: all 144 combinations).

    A condition dict names the four components' levels and may fix ``stable``;
    otherwise about :data:`STABLE_FRACTION` of the cycles are warm-up cycles.
    """
    if n_per_condition < 1:
        raise ValueError(f"n_per_condition must be at least 1, got {n_per_condition}")
    conditions = all_conditions() if conditions is None else list(conditions)
    if not conditions:
        raise ValueError("conditions is empty")
    rows = []
    for i, cond in enumerate(conditions):
        missing = [c for c in COMPONENT_NAMES if c not in cond]
        if missing:
            raise ValueError(f"condition {i} {cond!r} lacks {missing}")
        rows.append({c: _check_level(c, cond[c]) for c in COMPONENT_NAMES} | {"stable": cond.get("stable", -1)})
    frame = pd.DataFrame(rows).loc[np.repeat(np.arange(len(rows)), n_per_condition)].reset_index(drop=True)
    draw = np.random.default_rng([seed, 2**32]).random(len(frame)) < STABLE_FRACTION
    frame["stable"] = np.where(frame["stable"] < 0, draw.astype(int), frame["stable"])
    bad = sorted(set(frame["stable"]) - {0, 1})
    if bad:
        raise ValueError(f"stable: expected 0 or 1, got {bad}")
    conds = {c: frame[c].to_numpy(dtype=np.float64) for c in TARGETS}
    data = _run(conds, [seed], channels)
    labels = frame[list(TARGETS)].astype(np.int64)
    return RigDataset(
        data,
        np.arange(len(frame)),
        labels,
        source=f"simulator(seed={seed})",
        meta={"seed": seed, "n_per_condition": n_per_condition},
    )
