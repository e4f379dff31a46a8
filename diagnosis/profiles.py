"""Equipment profiles: what one set of models is trained for.

A profile names its channels (any subset of ``hydraulics.channels.CHANNELS`` at
their native rates) through its feature set, the cycle duration, the components
it diagnoses (a subset of ``hydraulics.components.COMPONENTS``), the channels a
cycle is aligned on and how far it may be shifted. Profiles are data: each lives
in the model store beside its bundles (``<store>/<profile>/profile.json``, written
by ``ModelStore.save_profile``), so a profile trained on a user's own channels
(``hdx train --profile NAME --channels ...``) is served like the shipped ones.

Every training run also stores a ``ProfileReference`` per profile version: the
reference cycle that incoming cycles are aligned to and the novelty model of the
training data's features (``diagnosis.novelty``). ``ProfileReference.prepare``
is the one place that turns a block of raw cycles into aligned features with
their novelty: training, the online ensemble and the batch job all call it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from diagnosis.novelty import NoveltyModel
from hydraulics.alignment import align, reference_cycle, shape_curves
from hydraulics.channels import CHANNELS, CYCLE_SECONDS, UCI_1HZ_CHANNELS
from hydraulics.components import COMPONENTS, STABLE_TARGET
from hydraulics.features import FeatureSet, extract, feature_set_from, get_feature_set
from hydraulics.validation import SensorDataError, cycle_arrays

DEFAULT_MAX_SHIFT_S = 5
REFERENCE_FILE = "reference.npz"
# Features that read the cycle's first samples: alignment pads them when it moves a
# cycle, so they are left out of the novelty check (the classifiers still read them).
_PADDING_SENSITIVE = ("__cycle_start",)


class ProfileError(ValueError):
    """A profile that cannot be built or used, with what is wrong."""


@dataclass(frozen=True)
class Profile:
    name: str
    feature_set: FeatureSet
    components: tuple[str, ...]
    alignment_channels: tuple[str, ...]
    max_shift_s: int = DEFAULT_MAX_SHIFT_S
    cycle_seconds: int = CYCLE_SECONDS
    description: str = ""

    def __post_init__(self) -> None:
        unknown = [c for c in self.components if c not in COMPONENTS]
        if not self.components or unknown:
            raise ProfileError(
                f"profile {self.name}: unknown components {unknown}; expected a subset of {list(COMPONENTS)}"
                if unknown
                else f"profile {self.name}: no components"
            )
        stray = [c for c in self.alignment_channels if c not in self.channels]
        if not self.alignment_channels or stray:
            raise ProfileError(f"profile {self.name}: alignment channels {stray or '[]'} are not among its channels")
        if self.cycle_seconds != CYCLE_SECONDS:
            raise ProfileError(f"profile {self.name}: the feature pipeline describes {CYCLE_SECONDS} s cycles")

    @property
    def channels(self) -> tuple[str, ...]:
        return self.feature_set.channels

    @property
    def targets(self) -> tuple[str, ...]:
        """What its classifiers predict: its components and the steady-state flag."""
        return (*self.components, STABLE_TARGET)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "description": self.description,
            "feature_set": self.feature_set.spec(),
            "components": list(self.components),
            "alignment_channels": list(self.alignment_channels),
            "max_shift_s": self.max_shift_s,
            "cycle_seconds": self.cycle_seconds,
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> Profile:
        try:
            return cls(
                name=data["name"],
                feature_set=feature_set_from(data["feature_set"]),
                components=tuple(data["components"]),
                alignment_channels=tuple(data["alignment_channels"]),
                max_shift_s=int(data.get("max_shift_s", DEFAULT_MAX_SHIFT_S)),
                cycle_seconds=int(data.get("cycle_seconds", CYCLE_SECONDS)),
                description=data.get("description", ""),
            )
        except KeyError as exc:
            raise ProfileError(f"profile {data.get('name')!r}: {exc.args[0]}") from None

    def with_options(
        self,
        name: str | None = None,
        channels: Sequence[str] | None = None,
        components: Sequence[str] | None = None,
    ) -> Profile:
        """This profile narrowed to other channels or components (``hdx train --channels/--components``)."""
        fs = self.feature_set
        if channels:
            fs = feature_set_from(
                {"name": name or self.name, "channels": list(channels), "profile_channels": list(fs.profile_channels)}
            )
        kept = [c for c in self.alignment_channels if c in fs.channels]
        return Profile(
            name=name or self.name,
            feature_set=fs,
            components=tuple(components or self.components),
            alignment_channels=tuple(kept or _step_shaped(fs.channels)),
            max_shift_s=self.max_shift_s,
            description=self.description if not (channels or components) else f"derived from {self.name}",
        )


def _step_shaped(channels: Sequence[str]) -> list[str]:
    """Channels that follow the load steps (pressures, power, flows, efficiency, vibration):
    what alignment can lock on. Temperatures drift slowly and carry no timing."""
    shaped = [c for c in channels if CHANNELS[c].quantity != "temperature"]
    return shaped or list(channels)


# The profiles every installation ships. Alignment channels as measured by
# bench/bench_novelty.py and tests/test_alignment.py: SE with VS1 recovers every
# shift of ±1–3 s on the UCI hold-out and the simulator; SE alone locks on a low
# accumulator's late dip.
BUILTIN_PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile(
            "uci-1hz",
            get_feature_set("rig_1hz"),
            tuple(COMPONENTS),
            ("SE", "VS1"),
            description="the eight 1 Hz channels of the UCI test rig (the public benchmark)",
        ),
        Profile(
            "full-rig",
            get_feature_set("rig_full"),
            tuple(COMPONENTS),
            ("PS1", "PS2", "PS4", "EPS1", "SE"),
            description="all 17 channels of the test rig at their native rates",
        ),
        Profile(
            "basic",
            get_feature_set("basic"),
            tuple(COMPONENTS),
            ("PS1", "FS1", "VS1"),
            description="one pressure, one temperature, one flow and one vibration channel "
            "(what the alias form pressure/temperature/flow/vibration sends)",
        ),
    )
}
DEFAULT_PROFILE = "uci-1hz"
assert BUILTIN_PROFILES[DEFAULT_PROFILE].channels == UCI_1HZ_CHANNELS


def builtin_profile(name: str) -> Profile:
    try:
        return BUILTIN_PROFILES[name]
    except KeyError:
        raise ProfileError(f"unknown profile {name!r}; shipped profiles: {sorted(BUILTIN_PROFILES)}") from None


# --- the per-version reference: alignment and novelty --------------------------------


@dataclass
class Prepared:
    """A block of cycles as the models see it: aligned, featurised, novelty-scored."""

    features: np.ndarray  # (n, n_features)
    shift_s: np.ndarray  # (n,) seconds each cycle was moved back
    quality: np.ndarray  # (n,) correlation with the reference after the shift
    novelty: np.ndarray | None = None  # (n,) 1.0 = the threshold
    flagged: np.ndarray | None = None  # (n,) bool
    top_features: list[list[str]] = field(default_factory=list)


@dataclass
class ProfileReference:
    """What one training run of a profile looked like: the reference cycle and the novelty model."""

    profile: Profile
    curves: dict[str, np.ndarray]  # alignment channel → per-second median curve of the training cycles
    novelty: NoveltyModel | None = None
    novelty_columns: np.ndarray | None = None  # feature indices the novelty model reads
    shapes: dict[str, np.ndarray] = field(default_factory=dict)  # channel → median curve: alignment's padding

    @classmethod
    def fit(cls, profile: Profile, block: Mapping[str, np.ndarray], X: np.ndarray | None = None) -> ProfileReference:
        """From the training cycles (raw block) and, for novelty, their aligned features."""
        shapes = shape_curves({c: block[c] for c in profile.channels})
        ref = cls(profile, reference_cycle(block, profile.alignment_channels), shapes=shapes)
        if X is not None:
            names = profile.feature_set.feature_names()
            cols = np.array([i for i, n in enumerate(names) if not n.endswith(_PADDING_SENSITIVE)], dtype=np.int64)
            ref.novelty = NoveltyModel.fit(X[:, cols], [names[i] for i in cols])
            ref.novelty_columns = cols
        return ref

    def align(self, block: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
        """The cycles moved onto the reference (``hydraulics.alignment.align``), the shifts and
        their quality. The moved-in seconds follow the training cycles' median curve from the
        cycle's own nearest sample (``pad_from_shape``; a reference saved without curves:
        edge-padded). Filling them with the median curve's values themselves was tried: it
        made shifted cycles look novel to the temperatures' end-of-cycle features."""
        used = {c: block[c] for c in self.profile.channels if c in block}
        return align(used, self.curves, self.profile.alignment_channels, self.profile.max_shift_s, self.shapes)

    def prepare(self, block: Mapping[str, np.ndarray], cycle_ids: Sequence[int] | None = None) -> Prepared:
        """Align, extract (raises ``SensorDataError``) and score novelty for equal-length cycles."""
        for ch in self.profile.channels:
            if ch not in block:
                raise SensorDataError(ch, f"missing: required by profile {self.profile.name}")
        aligned, shift, quality = self.align(block)
        X = extract(aligned, self.profile.feature_set, cycle_ids)
        out = Prepared(X, shift, quality)
        if self.novelty is not None:
            result = self.novelty.score(X[:, self.novelty_columns])
            out.novelty, out.flagged = result.score, result.flagged
            out.top_features = [result.top_features(i) for i in range(len(X))]
        return out

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        arrays = {f"curve__{c}": v for c, v in self.curves.items()}
        arrays |= {f"shape__{c}": v for c, v in self.shapes.items()}
        if self.novelty_columns is not None:
            arrays["novelty_columns"] = self.novelty_columns
        np.savez(directory / REFERENCE_FILE, **arrays)
        (directory / "profile.json").write_text(json.dumps(self.profile.to_dict(), indent=2))
        if self.novelty is not None:
            self.novelty.save(directory)

    @classmethod
    def load(cls, directory: Path) -> ProfileReference:
        profile = Profile.from_dict(json.loads((directory / "profile.json").read_text()))
        with np.load(directory / REFERENCE_FILE, allow_pickle=False) as data:
            curves = {k.removeprefix("curve__"): data[k] for k in data.files if k.startswith("curve__")}
            shapes = {k.removeprefix("shape__"): data[k] for k in data.files if k.startswith("shape__")}
            cols = data["novelty_columns"] if "novelty_columns" in data.files else None
        novelty = NoveltyModel.load(directory) if cols is not None else None
        return cls(profile, curves, novelty, cols, shapes)


# --- choosing a system's profile -------------------------------------------------------


@dataclass(frozen=True)
class DiagnosisTarget:
    """What a system is diagnosed with: its profile (None: the default) and the components
    its topology has (None: no topology, every component of the profile)."""

    profile: str | None = None
    components: list[str] | None = None


@dataclass(frozen=True)
class ProfileChoice:
    profile: str | None
    reason: str


def choose_profile(system_channels: Sequence[str], trained: Sequence[Profile]) -> ProfileChoice:
    """The best trained profile for a system that reports ``system_channels``: among those
    whose every channel it reports, the one that reads the most of them (then the most
    components, then by name). A system that declares no channels gets the default."""
    if not system_channels:
        return ProfileChoice(DEFAULT_PROFILE, f"the system declares no channels: the default profile {DEFAULT_PROFILE}")
    have = set(system_channels)
    fitting = [p for p in trained if set(p.channels) <= have]
    if not fitting:
        gaps = "; ".join(f"{p.name} needs {sorted(set(p.channels) - have)}" for p in trained) or "no profile is trained"
        return ProfileChoice(None, f"no trained profile fits the channels {sorted(have)}: {gaps}")
    best = sorted(fitting, key=lambda p: (-len(p.channels), -len(p.components), p.name))[0]
    others = [p.name for p in fitting if p is not best]
    reason = f"chosen automatically: {best.name} reads {len(best.channels)} of the system's {len(have)} channels"
    if others:
        reason += f" (also fitting, with fewer channels: {', '.join(others)})"
    return ProfileChoice(best.name, reason)


def fitting_profiles(sent_channels: Sequence[str], trained: Sequence[Profile]) -> list[str]:
    """The trained profiles whose every channel was sent."""
    have = set(sent_channels)
    return sorted(p.name for p in trained if set(p.channels) <= have)


# --- model ids: what the model deployments are multiplexed by ------------------------


def model_id(profile: str, version: str) -> str:
    """The multiplexed model id of a profile's version (a training run): ``<profile>@<version>``."""
    return f"{profile}@{version}"


def parse_model_id(value: str) -> tuple[str, str]:
    profile, sep, version = value.partition("@")
    if not sep or not profile or not version:
        raise ProfileError(f"{value!r} is not a model id (<profile>@<version>)")
    return profile, version


# --- request-shaped cycles -------------------------------------------------------------


class MissingChannels(SensorDataError):
    """A cycle without channels its profile needs; names them and the profiles it would fit."""

    def __init__(self, profile: str, missing: Sequence[str], fitting: Sequence[str]):
        self.missing, self.fitting = list(missing), list(fitting)
        hint = (
            f"the channels sent fit the trained profiles {self.fitting}" if fitting else "they fit no trained profile"
        )
        super().__init__(missing[0], f"missing {self.missing}: required by profile {profile}; {hint}")


@dataclass
class CycleNotes:
    """What a diagnosis says about its own input."""

    channels_ignored: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass
class PreparedCycles:
    """Request-shaped cycles prepared for one profile: the valid ones' rows, in input order."""

    valid: list[int]  # input positions of the rows below
    rows: Prepared | None
    errors: dict[int, SensorDataError]
    notes: dict[int, CycleNotes]


def prepare_cycles(
    reference: ProfileReference,
    cycles: Sequence[Mapping],
    trained: Sequence[Profile] = (),
) -> PreparedCycles:
    """Validate (clipping noise), align, featurise and score request-shaped cycles
    (channel or alias → samples). A cycle missing a channel of the profile gets a
    ``MissingChannels`` naming the ``trained`` profiles its channels would fit; one bad
    cycle never fails the others."""
    profile = reference.profile
    errors: dict[int, SensorDataError] = {}
    notes: dict[int, CycleNotes] = {}
    groups: dict[tuple, list[tuple[int, dict[str, np.ndarray]]]] = {}
    for i, raw in enumerate(cycles):
        note = notes[i] = CycleNotes()
        try:
            arrays = cycle_arrays(raw, note.warnings)
        except SensorDataError as exc:
            errors[i] = exc
            continue
        missing = [c for c in profile.channels if c not in arrays]
        if missing:
            errors[i] = MissingChannels(profile.name, missing, fitting_profiles(list(arrays), trained))
            continue
        note.channels_ignored = sorted(c for c in arrays if c not in profile.channels)
        key = tuple(len(arrays[c]) for c in profile.channels)  # equal lengths vectorise together
        groups.setdefault(key, []).append((i, arrays))
    parts: list[tuple[list[int], Prepared]] = []
    for members in groups.values():
        block = {c: np.stack([a[c] for _, a in members]) for c in profile.channels}
        try:
            parts.append(([i for i, _ in members], reference.prepare(block)))
        except SensorDataError as exc:  # e.g. too short: applies to the whole group
            for i, _ in members:
                errors[i] = SensorDataError(exc.channel, exc.problem)
    if not parts:
        return PreparedCycles([], None, errors, notes)
    order = np.argsort(np.concatenate([np.asarray(idx) for idx, _ in parts]), kind="stable")
    valid = sorted(i for idx, _ in parts for i in idx)

    def cat(name: str):
        values = [getattr(p, name) for _, p in parts]
        return None if values[0] is None else np.concatenate(values)[order]

    tops = [t for _, p in parts for t in (p.top_features or [[] for _ in range(len(p.features))])]
    rows = Prepared(
        features=cat("features"),
        shift_s=cat("shift_s"),
        quality=cat("quality"),
        novelty=cat("novelty"),
        flagged=cat("flagged"),
        top_features=[tops[j] for j in order],
    )
    return PreparedCycles(valid, rows, errors, notes)


def annotate(diagnosis, profile: str, rows: Prepared, row: int, note: CycleNotes | None) -> None:
    """Add to a ``diagnosis.report.Diagnosis`` what the profile step knows about its cycle:
    the profile, alignment, novelty (a flagged cycle's verdict was withheld by
    ``diagnose_answers(..., withheld=rows.flagged)``; this says why), channels ignored
    and warnings."""
    from diagnosis.report import Alignment, OutOfDistribution

    verdict = diagnosis.prediction
    diagnosis.profile = profile
    diagnosis.components_diagnosed = list(verdict.components)
    diagnosis.alignment = Alignment(shift_s=int(rows.shift_s[row]), quality=round(float(rows.quality[row]), 4))
    if note is not None:
        diagnosis.channels_ignored = list(note.channels_ignored)
        diagnosis.warnings = list(note.warnings)
    if rows.novelty is not None:
        flagged = bool(rows.flagged[row])
        verdict.out_of_distribution = OutOfDistribution(
            score=round(float(rows.novelty[row]), 4), flagged=flagged, top_features=rows.top_features[row]
        )
        if flagged:  # the verdict itself was withheld by the vote (diagnosis.voting)
            diagnosis.warnings.append(
                f"this cycle is unlike the {profile} profile's training data (novelty score "
                f"{float(rows.novelty[row]):.2f}, threshold 1; furthest features: "
                f"{', '.join(rows.top_features[row])}): the models cannot vouch for this diagnosis"
            )


def diagnose_prepared(
    prepared: PreparedCycles,
    profile: str,
    answers: Mapping,
    weights: Mapping[str, float],
    threshold: float,
    failed: Mapping[str, str] | None = None,
    components: Sequence[str] | None = None,
) -> dict[int, object]:
    """The ``Diagnosis`` of every valid cycle of ``prepared`` (by input position), from the
    families' ``answers`` to its feature rows: the vote (``diagnosis.voting.diagnose_answers``)
    over ``components``, the novel cycles withheld, then ``annotate``. The online ensemble and
    the one-process benchmark call it; the batch job keeps the same vote as columns."""
    from diagnosis.voting import diagnose_answers

    rows = prepared.rows
    diagnoses = diagnose_answers(
        answers, weights, threshold, rows.features.shape[1], failed, components=components, withheld=rows.flagged
    )
    out = {}
    for row, (i, diagnosis) in enumerate(zip(prepared.valid, diagnoses)):
        annotate(diagnosis, profile, rows, row, prepared.notes.get(i))
        out[i] = diagnosis
    return out
