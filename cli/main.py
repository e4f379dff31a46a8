"""The ``hdx`` command line: training, evaluation, model bundles and learned state, simulation.

Sub-command groups for users, API keys and systems come from ``cli.users``;
serving and data-team commands from ``cli.serve`` and the pipelines.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from cli.bootstrap import register as register_bootstrap
from cli.jobs import register as register_jobs
from cli.users import keys_app, systems_app, users_app
from configs.settings import PROJECT_ROOT, get_settings

app = typer.Typer(help="HDX hydraulic diagnostics platform", no_args_is_help=True)
models_app = typer.Typer(help="Model bundles in the model store", no_args_is_help=True)
app.add_typer(models_app, name="models")


@app.command()
def train(
    source: str = typer.Option("simulator", help="simulator or uci"),
    no_eval: bool = typer.Option(False, help="train on every cycle (no evaluation split)"),
) -> None:
    """Train the four model families (in parallel on Ray) and store new bundles."""
    from pipelines.train import format_report, run_training

    report = run_training(source, get_settings(), eval_split=not no_eval)
    typer.echo(f"stored version {report['version']} in {report['store_uri']} ({report['wall_seconds']} s)")
    if "ensemble" in report:
        typer.echo(format_report(report))


@app.command()
def evaluate(
    out_dir: Path = typer.Option(PROJECT_ROOT / "docs", help="where evaluation.json and evaluation.md go"),
) -> None:
    """Train on the UCI cycles outside the benchmark hold-out and report hold-out accuracy."""
    from pipelines.train import format_report, run_training

    settings = get_settings()
    report = run_training("uci", settings)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "evaluation.json").write_text(json.dumps(report, indent=2))
    table = format_report(report)
    (out_dir / "evaluation.md").write_text(
        "# Diagnosis accuracy on the UCI benchmark hold-out\n\n"
        "Made by `hdx evaluate`: trained on the 1731 UCI cycles outside `holdout_cycles.txt`, "
        f"scored on the {report['eval_cycles']} held-out cycles. Feature set `{report['feature_set']}` "
        f"({report['n_features']} features), model version `{report['version']}`. "
        "Cells: accuracy / macro-F1.\n\n"
        + table
        + "\nTargets for the ensemble: cooler ≥ 99.5 %, valve ≥ 90 %, pump ≥ 99.5 %, accumulator ≥ 90 %. "
        "Reference (300-tree random forest on plain per-cycle statistics): 99.6 / 70.0 / 100 / 77.6.\n"
    )
    typer.echo(table)
    typer.echo(f"wrote {out_dir / 'evaluation.md'} and evaluation.json")


@models_app.command("list")
def models_list() -> None:
    """Every stored bundle with its version, feature set and per-target accuracy."""
    from diagnosis.store import ModelStore

    store = ModelStore(get_settings().model_store_uri)
    manifests = store.list()
    if not manifests:
        typer.echo(f"no model bundles in {store.uri}; run `hdx train`")
        raise typer.Exit(1)
    for m in manifests:
        acc = ", ".join(f"{t} {v['accuracy'] * 100:.1f}%" for t, v in m["metrics"].items())
        typer.echo(
            f"{m['family']:<14} {m['version']:<24} {m['feature_set']['name']:<9} "
            f"{m['training']['source']:<9} {acc or 'no evaluation'}"
        )


@models_app.command("revisions")
def models_revisions(
    family: str = typer.Option("adaptive", help="a model family that learns from feedback"),
    version: str = typer.Option("latest", help="bundle version"),
) -> None:
    """The learned-state revisions of a bundle, oldest first; the last one is served."""
    from diagnosis.store import BundleError, ModelStore

    store = ModelStore(get_settings().model_store_uri)
    try:
        version = store.resolve(family, version)
    except BundleError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    revisions = store.state_revisions(family, version)
    if not revisions:
        typer.echo(f"{family} {version}: no learned state; the trained bundle is served")
        return
    for revision in revisions:
        r = store.state_record(family, version, revision)
        note = f"  rolled back to {r['rolled_back_from']}" if r.get("rolled_back_from") else ""
        typer.echo(f"{revision}  parent {r['parent'] or '-':<9}  {r['created_at']}  updates {r['n_updates']}{note}")


@models_app.command("rollback-state")
def models_rollback_state(
    revision: str = typer.Argument(..., help="the revision to go back to, or `base` for the trained model"),
    family: str = typer.Option("adaptive", help="a model family that learns from feedback"),
    version: str = typer.Option("latest", help="bundle version"),
) -> None:
    """Serve an earlier learned state again: saved as a new revision, which every replica
    picks up within its sync interval."""
    from diagnosis.learning import rollback_state
    from diagnosis.store import BundleError, ModelStore

    settings = get_settings()
    store = ModelStore(settings.model_store_uri)
    try:
        version = store.resolve(family, version)
        new = rollback_state(store, family, version, revision, settings.adaptive_keep_revisions)
    except BundleError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    typer.echo(f"{family} {version}: state of {revision} saved as {new}")


@app.command()
def simulate(
    cooler: int = typer.Option(100),
    valve: int = typer.Option(100),
    pump: int = typer.Option(0),
    accumulator: int = typer.Option(130),
    seed: int = typer.Option(0),
    system_id: str = typer.Option("rig-01"),
) -> None:
    """Print a /diagnostics/predict request body for one simulated cycle."""
    from hydraulics.features import get_feature_set
    from hydraulics.simulator import simulate_cycle

    channels = get_feature_set(get_settings().feature_set).channels
    cycle = simulate_cycle(cooler, valve, pump, accumulator, rng=seed)
    body = {"system_id": system_id, "sensor_data": {c: [round(float(x), 4) for x in cycle[c]] for c in channels}}
    typer.echo(json.dumps(body))


app.add_typer(users_app, name="users")
app.add_typer(keys_app, name="keys")
app.add_typer(systems_app, name="systems")
register_jobs(app)
register_bootstrap(app)

if __name__ == "__main__":
    app()
