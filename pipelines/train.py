"""Train the four model families in parallel as Ray tasks and store versioned bundles.

    python -m pipelines.train --source simulator
    python -m pipelines.train --source uci --uci-dir ../shared/data/uci_hydraulic
    ray job submit --working-dir . -- python -m pipelines.train --source simulator \
        --store-uri /shared/hdx/models

Features are computed once on the driver and shared through Ray's object
store; each task fits one family, scores it on the evaluation cycles and
writes its bundle, so a slow family never holds the others back. The driver
then scores the ensemble and writes a report next to the bundles.
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
from diagnosis.registry import FAMILY_NAMES, ensemble_weights
from diagnosis.store import ModelStore, fingerprint, new_version
from diagnosis.training import fit_family, score
from diagnosis.voting import weighted_probas
from hydraulics.dataset import RigDataset
from hydraulics.features import extract, get_feature_set


def load_training_data(
    source: str, settings: Settings, eval_split: bool = True
) -> tuple[RigDataset, RigDataset | None]:
    """Training and evaluation cycles. UCI: the benchmark hold-out split. Simulator:
    training cycles from the configured seed, evaluation cycles from the next seed."""
    channels = list(get_feature_set(settings.feature_set).channels)
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
    raise ValueError(f"unknown data source {source!r}; use 'uci' or 'simulator'")


@ray.remote(num_cpus=1)
def _train_task(
    family: str,
    X: np.ndarray,
    labels: pd.DataFrame,
    X_eval,
    labels_eval,
    store_uri: str,
    version: str,
    feature_set: str,
    training: dict,
    seed: int,
) -> dict:
    model, seconds = fit_family(family, X, labels, seed=seed, threads=1, feature_set=feature_set)
    probas = model.predict_proba(X_eval) if X_eval is not None else None
    metrics = score(probas, labels_eval) if probas is not None else {}
    manifest = ModelStore(store_uri).save(
        model, version, feature_set, training={**training, "fit_seconds": round(seconds, 2)}, metrics=metrics
    )
    return {"family": family, "manifest": manifest, "probas": probas, "fit_seconds": seconds}


def run_training(
    source: str = "simulator",
    settings: Settings | None = None,
    families: Sequence[str] = FAMILY_NAMES,
    eval_split: bool = True,
) -> dict:
    settings = settings or get_settings()
    started = time.perf_counter()
    train, test = load_training_data(source, settings, eval_split)
    X = extract(train.channels, settings.feature_set, train.cycle_ids)
    X_eval = extract(test.channels, settings.feature_set, test.cycle_ids) if test is not None else None
    version = new_version()
    training = {
        "source": source,
        "n_cycles": len(train),
        "fingerprint": fingerprint(*(train.channels[c] for c in sorted(train.channels)), train.labels.to_numpy()),
        "eval_cycles": 0 if test is None else len(test),
    }
    if not ray.is_initialized():
        ray.init(ignore_reinit_error=True, log_to_driver=False)
    shared = [ray.put(x) for x in (X, train.labels, X_eval, None if test is None else test.labels)]
    refs = {
        f: _train_task.remote(
            f, *shared, settings.model_store_uri, version, settings.feature_set, training, settings.random_seed
        )
        for f in families
    }
    results = {f: ray.get(r) for f, r in refs.items()}
    report = {
        "version": version,
        "source": source,
        "feature_set": settings.feature_set,
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
    report["wall_seconds"] = round(time.perf_counter() - started, 1)
    ModelStore(settings.model_store_uri).write_report(version, report)
    return report


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
    source: str = typer.Option("simulator", help="simulator or uci"),
    store_uri: str = typer.Option("", help="model store URI (default from settings)"),
    uci_dir: str = typer.Option("", help="UCI folder (default from settings)"),
    no_eval: bool = typer.Option(False, help="train on all cycles, skip the evaluation split"),
) -> None:
    overrides = {k: v for k, v in {"model_store_uri": store_uri, "uci_data_dir": uci_dir}.items() if v}
    settings = Settings(**overrides) if overrides else get_settings()
    report = run_training(source, settings, eval_split=not no_eval)
    print(json.dumps({k: v for k, v in report.items() if k not in ("models", "ensemble")}, indent=2))
    if "ensemble" in report:
        print(format_report(report))


if __name__ == "__main__":
    typer.run(main)
