"""The only deployment with an HTTP route: the FastAPI app of ``api/app.py``.

Authentication, per-system permission, validation and routing happen in the
app's dependencies and routers; this class only builds the app inside the
replica (Serve's late-bound ingress) and hands it the ``DeploymentHandle``s
of the deployments behind it.
"""

from __future__ import annotations

from ray import serve
from ray.serve.handle import DeploymentHandle

from api.app import create_app
from deployments.rollout import SURGE_PERCENT


@serve.deployment(name="Ingress", ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=64,
                  max_surge_percent=SURGE_PERCENT)
@serve.ingress()
class Ingress:
    def __init__(self, ensemble: DeploymentHandle, rag: DeploymentHandle | None = None):
        self.ensemble = ensemble
        self.rag = rag

    def __serve_build_asgi_app__(self):
        app = create_app(echo_request_id=False)
        app.state.ensemble = self.ensemble
        app.state.rag = self.rag
        return app
