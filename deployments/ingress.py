"""The only deployment with an HTTP route: the FastAPI app of ``api/application.py``.

Authentication, per-system permission, validation and routing happen in the
app's dependencies and routers; this class only builds the app inside the
replica (Serve's late-bound ingress) and hands it the ``DeploymentHandle``s
of the deployments behind it.
"""

from __future__ import annotations

from ray import serve
from ray.serve.handle import DeploymentHandle

from api.application import create_app
from configs.settings import Settings


def require_sole_replica(rank: int) -> None:
    """Without Redis, refuse to be a second ingress replica: each would keep security state
    of its own (login failures, rate limits counted in its memory). ``rank`` is Serve's
    rank of this replica; the builder also caps the Ingress to one replica then."""
    if rank:
        raise RuntimeError(
            f"this is ingress replica rank {rank} and HDX_REDIS_URL is empty: without Redis each replica "
            "counts login failures and rate limits on its own, so HDX runs one ingress replica only. "
            "Set HDX_REDIS_URL, or run the config `hdx serve-config` writes (max_replicas: 1 for the Ingress)"
        )


@serve.deployment(name="Ingress")
@serve.ingress()
class Ingress:
    def __init__(self, ensemble: DeploymentHandle, rag: DeploymentHandle | None, settings: Settings):
        if not settings.redis_url:
            rank = serve.get_replica_context().rank  # a ray.serve.schema.ReplicaRank; None before one is given
            require_sole_replica(rank.rank if rank is not None else 0)
        self.ensemble = ensemble
        self.rag = rag
        self.settings = settings

    def __serve_build_asgi_app__(self):
        app = create_app(self.settings, echo_request_id=False)
        app.state.ensemble = self.ensemble
        app.state.rag = self.rag
        return app
