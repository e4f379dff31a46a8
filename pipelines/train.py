"""Train the four model families of one equipment profile in parallel as Ray tasks
and store versioned bundles.

    python -m pipelines.train --profile uci-1hz --source uci --uci-dir ../shared/data/uci_hydraulic
    python -m pipelines.train --profile basic --source simulator
    python -m pipelines.train --profile my-press --source cycles.parquet --channels PS1,TS1,FS1
    ray job submit --working-dir . -- python -m pipelines.train --profile full-rig \
        --store-uri /shared/hdx/models

The cycles are aligned to the profile's reference cycle first (the median
training cycle, ``diagnosis.profiles.ProfileReference``), exactly as served
cycles will be; every training cycle is then also added once more, shifted by a
random one or two seconds and aligned back, so the models do not depend on
exact sample positions or on the edge padding that alignment adds. Features are
computed once on the driver and shared through Ray's object store; each task
fits one family, scores it on the evaluation cycles and writes its bundle, so a
slow family never holds the others back. The driver then scores the ensemble,
writes a report, and stores the reference cycle and the training data's
novelty model last: that marks the version complete.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

import numpy as np
import pandas as pd
import ray
import typer

from configs.settings import Settings, get_settings
from diagnosis.profiles import Profile, ProfileError, ProfileReference, builtin_profile
from diagnosis.registry import FAMILY_NAMES, ensemble_weights
from diagnosis.store import ModelStore, fingerprint, new_version
from diagnosis.training import fit_family, score
from diagnosis.voting import weighted_probas
from hydraulics.alignment import shift_block
from hydraulics.dataset import RigDataset
from hydraulics.features import extract

AUGMENT_SHIFTS_S = (-2, -1, 1, 2)


def load_training_data(
    source: str, settings: Settings, profile: Profile, eval_split: bool = True
) -> tuple[RigDataset, RigDataset | None]:
    """Training and evaluation cycles of the profile's channels. UCI: the benchmark
    hold-out split. Simulator: training cycles from the configured seed, evaluation
    cycles from the next seed. Anything else: a UCI-format folder or a Parquet/CSV
    table with labels (``hydraulics.loaders.load_cycles``), a fifth held out."""
    channels = list(profile.channels)
    if source == "uci":
        from hydraulics.loaders import load_holdout, load_uci, uci_split

        data = load_uci(settings.uci_data_dir, channels=channels)
        if not eval_split:
            return data, None
        return uci_split(data, load_holdout(settings.uci_data_dir))
    if source == "simulator":
        from hydraulics.simulator import simulate_dataset

        n = settings.simulator_cycles_per_condition
        train = simulate_dataset(n, seed=settings.random_seed, channels=channels)
        test = None
        if eval_split:
            test = simulate_dataset(max(2, n // 3), seed=settings.random_seed + 1, channels=channels)
        return train, test
    from hydraulics.loaders import load_cycles

    try:
        data = load_cycles(source, channels)
    except (ValueError, KeyError, FileNotFoundError) as exc:
        raise ValueError(f"training data {source!r}: {exc}") from None
    if data.labels is None:
        raise ValueError(f"training data {source!r} has no labels (columns {', '.join(profile.targets)})")
    if not eval_split:
        return data, None
    order = np.random.default_rng(settings.random_seed).permutation(len(data))
    cut = max(1, len(data) // 5)
    return data.subset(np.sort(order[cut:])), data.subset(np.sort(order[:cut]))


def resolve_profile(
    store: ModelStore, name: str, channels: Sequence[str] | None = None, components: Sequence[str] | None = None
) -> Profile:
    """The profile to train: the store's definition of ``name``, else the shipped one of that
    name, else (with ``channels``) a new profile derived from the default; narrowed to
    ``channels``/``components`` when given."""
    try:
        base = store.profile(name)
    except ProfileError:
        try:
            base = builtin_profile(name)
        except ProfileError:
            if not channels:
                raise ProfileError(
                    f"profile {name!r} is neither in the store nor shipped: give its --channels to create it"
                ) from None
            base = builtin_profile("full-rig")
    if channels or components:
        return base.with_options(name=name, channels=channels, components=components)
    return base


def augmented(train: RigDataset, reference: ProfileReference, seed: int) -> tuple[dict, pd.DataFrame]:
    """The aligned training cycles followed by each cycle shifted by a random
    ``AUGMENT_SHIFTS_S`` and aligned back (its labels repeated)."""
    rng = np.random.default_rng(seed)
    shifts = rng.choice(AUGMENT_SHIFTS_S, size=len(train))
    aligned, _, _ = reference.align(train.channels)
    moved, _, _ = reference.align(shift_block(train.channels, shifts))
    block = {c: np.concatenate([aligned[c], moved[c]]) for c in aligned}
    return block, pd.concat([train.labels, train.labels], ignore_index=True)


@ray.remote(num_cpus=1)
def _train_task(
    family: str,
    X: np.ndarray,
    labels: pd.DataFrame,
    X_eval,
    labels_eval,
    store_uri: str,
    profile: dict,
    version: str,
    training: dict,
    seed: int,
) -> dict:
    p = Profile.from_dict(profile)
    model, seconds = fit_family(family, X, labels, seed=seed, threads=1, feature_set=p.feature_set, targets=p.targets)
    probas = model.predict_proba(X_eval) if X_eval is not None else None
    metrics = score(probas, labels_eval) if probas is not None else {}
    manifest = (
        ModelStore(store_uri)
        .for_profile(p.name)
        .save(model, version, p.feature_set, training={**training, "fit_seconds": round(seconds, 2)}, metrics=metrics)
    )
    return {"family": family, "manifest": manifest, "probas": probas, "fit_seconds": seconds}


def run_training(
    source: str = "simulator",
    settings: Settings | None = None,
    families: Sequence[str] = FAMILY_NAMES,
    eval_split: bool = True,
    profile: str | Profile | None = None,
) -> dict:
    settings = settings or get_settings()
    started = time.perf_counter()
    root = ModelStore(settings.model_store_uri)
    prof = profile if isinstance(profile, Profile) else resolve_profile(root, profile or settings.default_profile)
    train, test = load_training_data(source, settings, prof, eval_split)
    reference = ProfileReference.fit(prof, train.channels)
    block, labels = augmented(train, reference, settings.random_seed)
    X_all = extract(block, prof.feature_set)
    X = X_all[: len(train)]  # the aligned originals: what the novelty model learns
    reference = ProfileReference.fit(prof, train.channels, X)
    X_eval = reference.prepare(test.channels, test.cycle_ids).features if test is not None else None
    version = new_version()
    training = {
        "source": source,
        "profile": prof.name,
        "n_cycles": len(train),
        "n_augmented": len(X_all) - len(train),
        "augment_shifts_s": list(AUGMENT_SHIFTS_S),
        "fingerprint": fingerprint(*(train.channels[c] for c in sorted(train.channels)), train.labels.to_numpy()),
        "eval_cycles": 0 if test is None else len(test),
    }
    root.save_profile(prof)
    if not ray.is_initialized():
        ray.init(ignore_reinit_error=True, log_to_driver=False)
    shared = [ray.put(x) for x in (X_all, labels, X_eval, None if test is None else test.labels)]
    refs = {
        f: _train_task.remote(
            f, *shared, settings.model_store_uri, prof.to_dict(), version, training, settings.random_seed
        )
        for f in families
    }
    results = {f: ray.get(r) for f, r in refs.items()}
    report = {
        "version": version,
        "profile": prof.name,
        "source": source,
        "feature_set": prof.feature_set.name,
        "components": list(prof.components),
        "n_features": X.shape[1],
        "train_cycles": len(train),
        "eval_cycles": 0 if test is None else len(test),
        "models": {f: r["manifest"]["metrics"] for f, r in results.items()},
        "fit_seconds": {f: round(r["fit_seconds"], 2) for f, r in results.items()},
        "store_uri": settings.model_store_uri,
    }
    if test is not None:
        all_weights = ensemble_weights(settings.ensemble_weights)
        weights = {f: all_weights[f] for f in families}
        combined, _ = weighted_probas({f: r["probas"] for f, r in results.items()}, weights)
        report["ensemble"] = score(combined, test.labels)
        report["ensemble_weights"] = weights
    store = root.for_profile(prof.name)
    if reference.novelty is not None:
        report["novelty"] = {"training_excluded": reference.novelty.n_excluded}
    report["wall_seconds"] = round(time.perf_counter() - started, 1)
    store.write_report(version, report)
    if set(families) == set(FAMILY_NAMES):  # a complete version: servable
        store.save_reference(version, reference)
    return report


def profile_from_options(settings: Settings, profile: str, channels: str, components: str) -> Profile:
    """The profile a training command names: ``--profile`` (default: the settings' default),
    narrowed or defined by the comma-separated ``--channels`` and ``--components``."""
    return resolve_profile(
        ModelStore(settings.model_store_uri),
        profile or settings.default_profile,
        split_list(channels, channels=True),
        split_list(components),
    )


def split_list(text: str, channels: bool = False) -> list[str]:
    """``"PS1, temperature"`` → ``["PS1", "TS1"]`` (``channels``: catalogue spelling, aliases
    resolved; an unknown name is a ``KeyError`` naming the valid ones)."""
    from hydraulics.channels import canonical_name

    items = [t.strip() for t in text.split(",") if t.strip()]
    return [canonical_name(i) for i in items] if channels else [i.lower() for i in items]


def format_report(report: dict) -> str:
    """A Markdown table: accuracy / macro-F1 per target for every model and the ensemble."""
    from hydraulics.components import TARGETS

    rows = dict(report["models"])
    if "ensemble" in report:
        rows["**ensemble**"] = report["ensemble"]
    head = "| model | " + " | ".join(TARGETS) + " |\n|---|" + "---|" * len(TARGETS) + "\n"
    body = ""
    for name, metrics in rows.items():
        cells = [
            f"{metrics[t]['accuracy'] * 100:.1f} % / {metrics[t]['macro_f1']:.3f}" if t in metrics else "–"
            for t in TARGETS
        ]
        body += f"| {name} | " + " | ".join(cells) + " |\n"
    return head + body


def main(
    profile: str = typer.Option("", help="equipment profile (default from settings)"),
    source: str = typer.Option("simulator", help="simulator, uci, or a UCI folder / Parquet / CSV path"),
    channels: str = typer.Option("", help="comma-separated channels: narrow or define the profile"),
    components: str = typer.Option("", help="comma-separated components the profile diagnoses"),
    store_uri: str = typer.Option("", help="model store URI (default from settings)"),
    uci_dir: str = typer.Option("", help="UCI folder (default from settings)"),
    no_eval: bool = typer.Option(False, help="train on all cycles, skip the evaluation split"),
) -> None:
    overrides = {k: v for k, v in {"model_store_uri": store_uri, "uci_data_dir": uci_dir}.items() if v}
    settings = Settings(**overrides) if overrides else get_settings()
    prof = profile_from_options(settings, profile, channels, components)
    report = run_training(source, settings, eval_split=not no_eval, profile=prof)
    print(json.dumps({k: v for k, v in report.items() if k not in ("models", "ensemble")}, indent=2))
    if "ensemble" in report:
        print(format_report(report))


if __name__ == "__main__":
    typer.run(main)
