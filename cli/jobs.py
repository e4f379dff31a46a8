"""Data-team and deployment commands: ``hdx batch-predict``, ``hdx serve-config``, ``hdx ray-env`` and
``hdx k8s-manifests``.

Mounted into the ``hdx`` app by ``register(app)``; the commands call the same
functions as ``python -m pipelines.batch_predict`` and ``configs/k8s/generate.py``.
"""

from __future__ import annotations

from pathlib import Path

import typer


def batch_predict(
    source: str = typer.Option(..., help="cycles: .parquet/.csv file, directory or URI, or a UCI folder"),
    output: str = typer.Option(..., help="output directory or URI (predictions/, errors/, summary.json)"),
    model_version: str = typer.Option(
        "latest", help="'latest', a version (training run) of --profile, or PROFILE=VERSION[,...]"
    ),
    profile: str = typer.Option(
        "", help="profile of rows without a 'profile' column value (default: settings' default_profile)"
    ),
    system_id: str = typer.Option(None, help="system id for inputs without a system_id column"),
    batch_size: int = typer.Option(0, help="cycles per model call (default from settings)"),
    workers: int = typer.Option(0, help="max actors in the pool (default from settings)"),
    cycles: str = typer.Option(None, help="only these cycle ids, e.g. '0-99,150'"),
    store_uri: str = typer.Option("", help="model store URI (default from settings)"),
) -> None:
    """Diagnose stored cycles with Ray Data; write predictions and rejected rows as Parquet.
    The same job as ``python -m pipelines.batch_predict`` (its ``main``, imported only when run)."""
    from pipelines.batch_predict import main

    main(source, output, model_version, profile, system_id, batch_size, workers, cycles, store_uri)


def serve_config(
    out: Path = typer.Option(..., help="where to write the Serve config to run (e.g. var/serve_config.yaml)"),
) -> None:
    """Write serve_config.yaml as this environment should run it: unchanged with HDX_REDIS_URL
    set, the Ingress capped to one replica without it (security state is per replica then)."""
    import yaml

    from configs.settings import get_settings
    from deployments.builder import serve_config_for

    settings = get_settings()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(serve_config_for(settings), sort_keys=False))
    typer.echo(f"wrote {out}" + ("" if settings.redis_url else " (no HDX_REDIS_URL: one Ingress replica)"))


def ray_env() -> None:
    """Print the environment every Ray process of HDX starts with (Serve's throughput-optimized
    mode with HAProxy, control intervals for a small cluster) as shell exports:
    ``eval "$(hdx ray-env)"`` before ``ray start`` or ``serve run``. Variables already set win."""
    from configs.ray_env import shell_exports

    typer.echo(shell_exports())


def k8s_manifests(
    out_dir: Path = typer.Option(None, help="where to write (default: configs/k8s)"),
    image: str = typer.Option(None, help="container image with HDX installed"),
    check: bool = typer.Option(False, "--check", help="only verify the committed manifests are up to date"),
) -> None:
    """Generate the KubeRay RayService and RayJob manifests from serve_config.yaml."""
    from configs.k8s import generate

    if check:
        stale = generate.stale(out_dir or generate.K8S_DIR)
        if stale:
            typer.echo(f"stale: {', '.join(stale)}; run `hdx k8s-manifests`", err=True)
            raise typer.Exit(1)
        typer.echo("KubeRay manifests are up to date with serve_config.yaml")
        return
    for path in generate.write(out_dir or generate.K8S_DIR, image or generate.DEFAULT_IMAGE):
        typer.echo(f"wrote {path}")


def register(app: typer.Typer) -> None:
    app.command("batch-predict")(batch_predict)
    app.command("serve-config")(serve_config)
    app.command("ray-env")(ray_env)
    app.command("k8s-manifests")(k8s_manifests)
